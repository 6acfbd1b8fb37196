/* A tracer whose tracee is not its child waits for it, and a signal comes
 * meanwhile (umld holds such a wait: guest_ptrace.py, poll_held).  With
 * SA_RESTART the wait goes on after the handler; without, it fails with
 * EINTR (signal(7), "Interruption of system calls").  The handler asks
 * for a stop of the tracee (PTRACE_INTERRUPT), which the restarted wait
 * then reports.  Usage: held_wait restart|norestart.  The same output
 * natively and under umld (tests/kernel/test_guest_ptrace.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t target;
static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
    (void)sig;
    handled = 1;
    ptrace(PTRACE_INTERRUPT, target, 0, 0);
}

int main(int argc, char **argv)
{
    int restart = argc > 1 && strcmp(argv[1], "restart") == 0;
    target = fork();
    if (target == 0) {
        for (;;)
            pause();
    }
    pid_t tracer = fork();
    if (tracer == 0) {
        if (ptrace(PTRACE_SEIZE, target, 0, 0) < 0) {
            printf("seize: %s\n", strerrorname_np(errno));
            return 1;
        }
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sa.sa_flags = restart ? SA_RESTART : 0;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {.it_value = {.tv_usec = 50000}};
        setitimer(ITIMER_REAL, &it, NULL);
        int status = 0;
        pid_t got = waitpid(target, &status, __WALL);
        int err = errno;
        if (got < 0)
            printf("wait: %s, handler ran: %d\n", strerrorname_np(err), handled);
        else
            printf("wait: the tracee, stopped %d, event %d, handler ran: %d\n", WIFSTOPPED(status),
                   status >> 16, handled);
        return 0;
    }
    waitpid(tracer, NULL, 0);
    kill(target, SIGKILL);
    waitpid(target, NULL, 0);
    return 0;
}
