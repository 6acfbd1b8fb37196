/* Steady-state cost of an untrapped syscall: best of 5 loops of 1M
 * syscall(SYS_getppid), in ns per call.  Compare natively and under
 * `umld run` (gcc -O2 -o /tmp/w1_steady bench/src/w1_steady.c). */
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    struct timespec a, b;
    long best = 1L << 60;
    for (int r = 0; r < 5; r++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < 1000000; i++) syscall(SYS_getppid);
        clock_gettime(CLOCK_MONOTONIC, &b);
        long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        if (ns < best) best = ns;
    }
    printf("%.1f ns/call\n", best / 1e6);
    return 0;
}
