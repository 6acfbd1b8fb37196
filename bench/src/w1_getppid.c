/* W1: N getppid() system calls (default 200000).
 *
 * syscall(SYS_getppid) rather than getppid(): the raw call cannot be cached
 * or short-cut by libc, so every iteration really enters the kernel (and,
 * under a tracer, whatever the tracer does for getppid).  The value is not
 * printed because it legitimately differs between tools (strace, PRoot and
 * umld all interpose a parent or a PID namespace); only success is checked.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 200000;
    for (long i = 0; i < n; i++) {
        if (syscall(SYS_getppid) < 0) {
            perror("getppid");
            return 1;
        }
    }
    printf("getppid x %ld\n", n);
    return 0;
}
