/* An orphan re-parents to the guest's first process: prints 1 when the
 * grandchild's new parent is the pid given as argv[1] (or our own pid). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int fds[2];
    pid_t me = getpid();
    if (pipe(fds)) return 2;
    pid_t c = fork();
    if (c == 0) {
        if (fork() == 0) {
            close(fds[0]);
            while (getppid() != me && getppid() != 1) usleep(1000);
            int ok = getppid() == me;
            if (write(fds[1], &ok, sizeof ok) != sizeof ok) _exit(3);
            _exit(0);
        }
        _exit(0);
    }
    close(fds[1]);
    waitpid(c, NULL, 0);
    int ok = -1;
    if (read(fds[0], &ok, sizeof ok) != sizeof ok) return 4;
    printf("orphan re-parented to first process: %d\n", ok);
    while (wait(NULL) > 0) {}
    return 0;
}
