/* Results written where a program cannot write: each call below gets a
 * buffer on a read-only page, a PROT_NONE page, an unmapped page, and one
 * running from a writable page into a read-only one.  Linux's
 * copy_to_user fails with EFAULT there and never writes through a
 * protection (LTP uname02).  Prints, per call and buffer: the return
 * value, errno, and whether the protected page changed.  The same output
 * natively and under umld (tests/kernel/test_copy_out.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static long page;

static long call(const char *name, char *buf)
{
    if (strcmp(name, "uname") == 0)
        return syscall(SYS_uname, buf);
    if (strcmp(name, "sysinfo") == 0)
        return syscall(SYS_sysinfo, buf);
    if (strcmp(name, "getresuid") == 0)
        return syscall(SYS_getresuid, buf, buf + 4, buf + 8);
    if (strcmp(name, "sched_getaffinity") == 0)
        return syscall(SYS_sched_getaffinity, 0, 128, buf);
    return -2;
}

int main(int argc, char **argv)
{
    page = sysconf(_SC_PAGESIZE);
    /* writable | read-only | PROT_NONE | unmapped */
    char *base = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return 1;
    memset(base, 'w', 2 * page);
    mprotect(base + page, page, PROT_READ);
    mprotect(base + 2 * page, page, PROT_NONE);
    munmap(base + 3 * page, page);
    struct {
        const char *what;
        char *at;
    } bufs[] = {
        {"read-only", base + page},
        {"prot-none", base + 2 * page},
        {"unmapped", base + 3 * page},
        {"straddling", base + page - 4},
    };
    for (int i = 1; i < argc; i++) {
        for (unsigned b = 0; b < sizeof bufs / sizeof bufs[0]; b++) {
            errno = 0;
            long r = call(argv[i], bufs[b].at);
            int err = r < 0 ? errno : 0;
            int intact = 1;
            for (long k = 0; k < page; k++)
                intact &= base[page + k] == 'w';
            printf("%s %s: %ld %s ro-page %s\n", argv[i], bufs[b].what, r, strerrorname_np(err) ?: "0",
                   intact ? "intact" : "WRITTEN");
            /* Put back what a (wrong) write changed, for the next case. */
            if (!intact) {
                mprotect(base + page, page, PROT_READ | PROT_WRITE);
                memset(base + page, 'w', page);
                mprotect(base + page, page, PROT_READ);
            }
        }
    }
    return 0;
}
