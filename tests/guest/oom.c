/* LTP's OOM protection (lib/tst_memutils.c, set_oom_score_adj): write
 * -1000 to /proc/self/oom_score_adj; when that fails, a process without
 * CAP_SYS_RESOURCE in its effective set moves on quietly and one with it
 * warns ("Can't adjust score, even with capabilities!?"), which fails
 * every LTP test with TWARN.  Prints which of the three happened, and
 * the score read back.  The same natively and under umld
 * (tests/kernel/test_oom.py). */
#include <linux/capability.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct caps[2];
    if (syscall(SYS_capget, &hdr, caps) < 0)
        return 1;
    int capable = caps[0].effective >> CAP_SYS_RESOURCE & 1;
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    int ok = f && fprintf(f, "-1000") > 0;
    ok = f && fclose(f) == 0 && ok;
    if (ok)
        printf("adjusted\n");
    else if (!capable)
        printf("not adjusted, no CAP_SYS_RESOURCE\n");
    else
        printf("WARN: not adjusted, even with CAP_SYS_RESOURCE\n");
    f = fopen("/proc/self/oom_score_adj", "r");
    int score = 0;
    if (f && fscanf(f, "%d", &score) == 1)
        printf("oom_score_adj %d\n", score);
    return 0;
}
