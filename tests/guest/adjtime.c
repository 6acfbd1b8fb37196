/* adjtimex(2) and clock_adjtime(2) with what the kernel validates before
 * it changes anything (LTP adjtimex02, clock_adjtime02): nothing here
 * changes the clock, natively or not.  Prints each call's result and
 * errno; the same natively and under umld (tests/kernel/test_adjtime.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

static void show(const char *what, long r)
{
    printf("%s: %s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
}

int main(void)
{
    struct timex tx;
    memset(&tx, 0, sizeof tx);
    show("read", syscall(SYS_adjtimex, &tx));
    tx.modes = ADJ_OFFSET_SS_READ;
    show("ss-read", syscall(SYS_adjtimex, &tx));
    tx.modes = 0x8000; /* ADJ_ADJTIME without SINGLESHOT */
    show("adjtime-alone", syscall(SYS_adjtimex, &tx));
    memset(&tx, 0, sizeof tx);
    tx.modes = ADJ_TICK;
    tx.tick = 900000 / 100 - 1;
    show("tick-low", syscall(SYS_adjtimex, &tx));
    tx.tick = 1100000 / 100 + 1;
    show("tick-high", syscall(SYS_adjtimex, &tx));
    memset(&tx, 0, sizeof tx);
    tx.modes = ADJ_SETOFFSET;
    tx.time.tv_usec = -1;
    show("setoffset-negative", syscall(SYS_adjtimex, &tx));
    tx.modes = ADJ_SETOFFSET | ADJ_NANO;
    tx.time.tv_usec = 1000000000;
    show("setoffset-nano", syscall(SYS_adjtimex, &tx));
    memset(&tx, 0, sizeof tx);
    tx.modes = ADJ_FREQUENCY;
    tx.freq = 0x7fffffffffffffffL;
    show("freq-overflow", syscall(SYS_adjtimex, &tx));
    show("bad-address", syscall(SYS_adjtimex, (void *)8));
    tx.modes = 0;
    show("clock-invalid", syscall(SYS_clock_adjtime, -1, &tx));
    show("clock-monotonic", syscall(SYS_clock_adjtime, CLOCK_MONOTONIC, &tx));
    tx.modes = 0x8000;
    show("clock-adjtime-alone", syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx));
    return 0;
}
