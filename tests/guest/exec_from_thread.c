/* execve(2) from a non-leader thread: the thread takes the leader's pid. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *run(void *arg) {
    char *const argv[] = {"/bin/sh", "-c", "echo exec from thread ok", NULL};
    (void)arg;
    execv(argv[0], argv);
    perror("execv");
    exit(99);
}

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, (void *(*)(void *))pause, NULL);
    pthread_create(&t[3], NULL, run, NULL);
    pause();
    return 1;
}
