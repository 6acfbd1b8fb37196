/* The thread-group leader exits (pthread_exit) before its other threads;
 * the process's exit status comes from the last thread's exit(). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *worker(void *arg) {
    usleep((useconds_t)(long)arg * 150 * 1000); /* worker 1 prints first */
    printf("worker %ld done\n", (long)arg);
    fflush(stdout);
    if ((long)arg == 2) { usleep(100 * 1000); exit(7); }
    return NULL;
}

int main(void) {
    pthread_t t;
    for (long i = 1; i <= 2; i++) pthread_create(&t, NULL, worker, (void *)i);
    pthread_exit(NULL);
}
