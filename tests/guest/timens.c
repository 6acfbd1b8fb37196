/* A time namespace of the program's own (time_namespaces(7), LTP
 * clock_gettime03): unshare(CLONE_NEWTIME), a monotonic offset of 10 s,
 * a child that reads its clock there and setns(2)s back into the
 * namespace it came from.  Prints what it saw, rounded to seconds; the
 * same natively and under umld (tests/kernel/test_timens.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
    int parent_ns = open("/proc/self/ns/time", O_RDONLY | O_CLOEXEC);
    if (unshare(CLONE_NEWTIME) < 0) {
        printf("unshare: %s\n", strerrorname_np(errno));
        return 0;
    }
    FILE *f = fopen("/proc/self/timens_offsets", "w");
    if (!f || fprintf(f, "monotonic 10 0\n") < 0 || fclose(f) != 0) {
        printf("offsets: %s\n", strerrorname_np(errno));
        return 0;
    }
    double then = mono();
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        printf("child offset: %.0f s\n", mono() - then);
        if (setns(parent_ns, CLONE_NEWTIME) < 0)
            printf("setns back: %s\n", strerrorname_np(errno));
        else
            printf("setns back: ok, offset %.0f s\n", mono() - then);
        return 0;
    }
    int status;
    waitpid(child, &status, 0);
    printf("parent offset: %.0f s\n", mono() - then);
    return 0;
}
