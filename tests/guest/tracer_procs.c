/* Guest for tests/tracer/test_platform.py: creates processes and threads.
 *
 *   fork N          N children by fork(2), as fast as possible; each makes
 *                   one raw uname call (trapped in the tests) and exits
 *   vfork N         N children by vfork(2); each _exit(0)s at once
 *   threads N       N threads by pthread_create; each makes one uname call
 *   clone           one child by clone(2) with CLONE_VM and no exit signal
 *                   (not a thread, not a fork: PTRACE_EVENT_CLONE)
 *   thread-exec P   a third thread execs P while the leader and a second
 *                   thread sleep in pause(2)
 *   pause N         N threads and the leader sleep in pause(2) for ever
 *   leader-exit     the leader leaves with exit(2) (only itself); its thread
 *                   exits the group with status 7 a little later
 *   fork-pause      one child by fork(2) that makes one raw uname call and
 *                   exits 3; the parent sleeps in pause(2) for ever (the
 *                   orphan tests kill it in its fork event stop)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *exec_path;

static void one_uname(void)
{
	struct utsname u;
	syscall(SYS_uname, &u);
}

static void *thread_uname(void *arg)
{
	(void)arg;
	one_uname();
	return NULL;
}

static void *thread_pause(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static void *thread_exec(void *arg)
{
	(void)arg;
	char *argv[] = { exec_path, NULL };
	execv(exec_path, argv);
	_exit(99);
}

static void *thread_late_exit(void *arg)
{
	(void)arg;
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	exit(7);
}

static int clone_child(void *arg)
{
	(void)arg;
	syscall(SYS_exit, 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	/* volatile: vfork(2) children share (and may clobber) the frame. */
	volatile long n = argc > 2 ? atol(argv[2]) : 1;
	if (!strcmp(argv[1], "fork")) {
		for (long i = 0; i < n; i++) {
			pid_t pid = fork();
			if (pid == 0) {
				one_uname();
				_exit(0);
			}
			if (pid < 0)
				return 3;
		}
		while (wait(NULL) > 0)
			;
	} else if (!strcmp(argv[1], "vfork")) {
		for (long i = 0; i < n; i++) {
			pid_t pid = vfork();
			if (pid == 0)
				_exit(0);
			if (pid < 0)
				return 3;
		}
		while (wait(NULL) > 0)
			;
	} else if (!strcmp(argv[1], "threads")) {
		pthread_t t[64];
		if (n > 64)
			n = 64;
		for (long i = 0; i < n; i++)
			if (pthread_create(&t[i], NULL, thread_uname, NULL))
				return 3;
		for (long i = 0; i < n; i++)
			pthread_join(t[i], NULL);
	} else if (!strcmp(argv[1], "clone")) {
		static char stack[64 * 1024] __attribute__((aligned(16)));
		pid_t pid = clone(clone_child, stack + sizeof stack, CLONE_VM, NULL);
		if (pid < 0)
			return 3;
		int status;
		if (waitpid(pid, &status, __WALL) != pid)
			return 4;
	} else if (!strcmp(argv[1], "thread-exec")) {
		pthread_t t, idle;
		exec_path = argv[2];
		if (pthread_create(&idle, NULL, thread_pause, NULL))
			return 3;
		if (pthread_create(&t, NULL, thread_exec, NULL))
			return 3;
		for (;;)
			pause();
	} else if (!strcmp(argv[1], "pause")) {
		pthread_t t;
		for (long i = 0; i < n; i++)
			if (pthread_create(&t, NULL, thread_pause, NULL))
				return 3;
		for (;;)
			pause();
	} else if (!strcmp(argv[1], "fork-pause")) {
		pid_t pid = fork();
		if (pid == 0) {
			one_uname();
			_exit(3);
		}
		if (pid < 0)
			return 3;
		for (;;)
			pause();
	} else if (!strcmp(argv[1], "leader-exit")) {
		pthread_t t;
		if (pthread_create(&t, NULL, thread_late_exit, NULL))
			return 3;
		syscall(SYS_exit, 0);
	} else {
		return 2;
	}
	return 0;
}
