/*
 * What CPUID tells a program (tests/kernel/test_cpuid.py): leaf 1 EBX
 * bits 23:16 (logical processors) and ECX bit 31 (hypervisor present),
 * the signature of leaf 0x40000000, leaf 0xB subleaf 1's logical
 * processors (EBX bits 15:0), and the raw registers of leaf 0.
 *
 *   cpuid            print, in this process
 *   cpuid fork       print in a child made by fork(2)
 *   cpuid exec       execve(2) itself (argv[0]) and print there
 *   cpuid loop N     N CPUIDs, then the nanoseconds one took
 *   cpuid fault      arch_prctl(ARCH_SET_CPUID, 0) first: CPUID then
 *                    raises SIGSEGV (natively and under umld)
 *   cpuid unfault    arch_prctl(ARCH_SET_CPUID, 1) first (turn faulting
 *                    off: a guest trying to see the host's CPUID), prints
 *                    "set=R", then prints as without a mode
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static void report(void)
{
    uint32_t r[4];
    char sig[13];

    cpuid(1, 0, r);
    printf("logical=%u hypervisor=%u\n", (r[1] >> 16) & 0xff, r[2] >> 31);
    cpuid(0x40000000, 0, r);
    memcpy(sig, &r[1], 4);
    memcpy(sig + 4, &r[2], 4);
    memcpy(sig + 8, &r[3], 4);
    sig[12] = 0;
    for (int i = 0; i < 12; i++)
        if (sig[i] < 0x20 || sig[i] > 0x7e)
            sig[i] = '.';
    printf("signature=%s\n", sig);
    cpuid(0xb, 1, r);
    printf("leafb1=%u\n", r[1] & 0xffff);
    cpuid(0, 0, r);
    printf("leaf0=%08x %08x %08x %08x\n", r[0], r[1], r[2], r[3]);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";

    if (!strcmp(mode, "fork")) {
        int status;
        pid_t pid = fork();
        if (pid == 0) {
            report();
            _exit(0);
        }
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    if (!strcmp(mode, "exec")) {
        char *args[] = {argv[0], NULL};
        execv("/proc/self/exe", args);
        perror("execv");
        return 1;
    }
    if (!strcmp(mode, "loop")) {
        long n = argc > 2 ? atol(argv[2]) : 1000;
        uint32_t r[4];
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            cpuid(1, 0, r);
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("ns_per_cpuid=%.0f\n",
               ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n);
        return 0;
    }
    if (!strcmp(mode, "unfault")) {
        printf("set=%ld\n", syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1));
        report();
        return 0;
    }
    if (!strcmp(mode, "fault")) {
        long before = syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0);
        long set = syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        long after = syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0);
        printf("get=%ld set=%ld get=%ld\n", before, set, after);
        fflush(stdout);
        uint32_t r[4];
        cpuid(0, 0, r);
        printf("not reached\n");
        return 0;
    }
    report();
    return 0;
}
