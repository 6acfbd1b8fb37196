/* fork, vfork, wait family, zombies, SIGSTOP/SIGCONT seen by the parent,
 * signals between processes. Prints one line per check. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static char proc_state(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p ? p[2] : '?';
}

int main(void) {
    int st;
    setvbuf(stdout, NULL, _IONBF, 0);
    /* fork + exit code */
    pid_t c = fork();
    if (c == 0) _exit(3);
    waitpid(c, &st, 0);
    printf("fork exit=%d\n", WEXITSTATUS(st));
    /* vfork + exec */
    c = vfork();
    if (c == 0) { execl("/bin/sh", "sh", "-c", "exit 5", (char *)NULL); _exit(127); }
    waitpid(c, &st, 0);
    printf("vfork exit=%d\n", WEXITSTATUS(st));
    /* zombie: a dead child not yet waited for */
    c = fork();
    if (c == 0) _exit(0);
    for (int i = 0; i < 200 && proc_state(c) != 'Z'; i++) usleep(5000);
    printf("zombie state=%c\n", proc_state(c));
    waitid(P_PID, c, NULL, WEXITED);
    printf("reaped, wait again: %s\n", waitpid(c, &st, WNOHANG) < 0 ? strerror(errno) : "??");
    /* SIGSTOP / SIGCONT as the parent sees them */
    c = fork();
    if (c == 0) { for (;;) pause(); }
    kill(c, SIGSTOP);
    waitpid(c, &st, WUNTRACED);
    printf("stopped=%d sig=%d\n", WIFSTOPPED(st), WSTOPSIG(st));
    /* Natively 'T'; under any ptrace tracer the stopped child is kept in
     * PTRACE_LISTEN and shows 't' (proc(5)): both mean stopped. */
    for (int i = 0; i < 200 && proc_state(c) != 'T' && proc_state(c) != 't'; i++) usleep(5000);
    printf("stopped in /proc=%d\n", proc_state(c) == 'T' || proc_state(c) == 't');
    kill(c, SIGCONT);
    waitpid(c, &st, WCONTINUED);
    printf("continued=%d\n", WIFCONTINUED(st));
    kill(c, SIGKILL);
    waitpid(c, &st, 0);
    printf("killed sig=%d\n", WTERMSIG(st));
    /* a signal from child to parent */
    signal(SIGUSR1, on_usr1);
    c = fork();
    if (c == 0) { kill(getppid(), SIGUSR1); _exit(0); }
    waitpid(c, &st, 0);
    while (!got_usr1) usleep(1000);
    printf("got SIGUSR1 from child\n");
    /* wait4 with rusage, waitid with WNOWAIT */
    c = fork();
    if (c == 0) _exit(9);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    waitid(P_PID, c, &si, WEXITED | WNOWAIT);
    printf("waitid nowait code=%d status=%d\n", si.si_code, si.si_status);
    struct rusage ru;
    wait4(c, &st, 0, &ru);
    printf("wait4 exit=%d\n", WEXITSTATUS(st));
    printf("no children: %s\n", wait(&st) < 0 && errno == ECHILD ? "ECHILD" : "??");
    return 0;
}
