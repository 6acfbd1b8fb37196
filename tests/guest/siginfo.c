/* A handler installed with SA_SIGINFO (sigaction(2)): prints, for each of
 * two SIGUSR1, what its siginfo_t says (si_code, si_value.sival_int for
 * SI_QUEUE, si_pid, si_uid).  Prints "ready PID" once the handler is in
 * place; the signals are taken in sigsuspend(2) only, so none is lost.
 * Then it waits to be ended (a machine whose program ends goes, export
 * and all, perhaps before the writer of the last signal had its answer). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static siginfo_t infos[2];

static void handler(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (got < 2)
        infos[got] = *si;
    got++;
}

static const char *code_name(int code)
{
    if (code == SI_QUEUE)
        return "SI_QUEUE";
    if (code == SI_USER)
        return "SI_USER";
    return "other";
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    for (int seen = 0; seen < 2;) {
        sigsuspend(&old);
        for (; seen < got && seen < 2; seen++) {
            const siginfo_t *si = &infos[seen];
            printf("signo=%d code=%s(%d) value=%d pid=%d uid=%d\n", si->si_signo,
                   code_name(si->si_code), si->si_code,
                   si->si_code == SI_QUEUE ? si->si_value.sival_int : 0, (int)si->si_pid,
                   (int)si->si_uid);
            fflush(stdout);
        }
    }
    for (;;)
        pause();
}
