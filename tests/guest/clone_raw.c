/* clone(2) used directly: a thread sharing memory and a process. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/futex.h>

static volatile int shared;
static int child_fn(void *arg) { shared = (int)(long)arg; return 0; }

int main(void) {
    static char stack1[65536], stack2[65536];
    int st;
    pid_t p = clone(child_fn, stack1 + sizeof stack1, SIGCHLD, (void *)11);
    waitpid(p, &st, 0);
    printf("clone process: shared=%d exit=%d\n", shared, WEXITSTATUS(st));
    pid_t tidword = 0;
    p = clone(child_fn, stack2 + sizeof stack2,
              CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
              CLONE_SYSVSEM | CLONE_CHILD_CLEARTID | CLONE_PARENT_SETTID,
              (void *)22, &tidword, NULL, &tidword);
    while (*(volatile pid_t *)&tidword != 0)
        syscall(SYS_futex, &tidword, FUTEX_WAIT, p, NULL, NULL, 0);
    printf("clone thread: shared=%d\n", shared);
    return 0;
}
