/* A minimal seccomp supervisor (tests/kernel/test_guest_ptrace.py): the
 * child installs a filter of its own that returns SECCOMP_RET_TRACE for
 * getpid (data 0x42), uname (data 7) and getuid (data 9); the parent
 * traces it with PTRACE_O_TRACESECCOMP and, at each such stop, prints the
 * event's data and:
 *   getpid   skips the call, making it return 4242;
 *   uname    lets it run;
 *   getuid   turns it into swapoff("/nonexistent-umld") (umld must refuse
 *            that call as it refuses it anywhere: EPERM).
 * The child prints what each call returned.
 *
 *   seccomp_super          as above
 *   seccomp_super notrace  the child alone, no tracer: the filter's
 *                          RET_TRACE makes each call fail with ENOSYS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static const char swap_path[] = "/nonexistent-umld";

static int install(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 0x42),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_uname, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 7),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getuid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 9),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static void child_calls(void)
{
	long r;
	errno = 0;
	r = syscall(SYS_getpid);
	printf("getpid=%ld errno=%d\n", r, errno);
	struct utsname u;
	errno = 0;
	r = syscall(SYS_uname, &u);
	printf("uname=%ld errno=%d node=%s\n", r, errno, r == 0 ? u.nodename : "-");
	errno = 0;
	r = syscall(SYS_getuid);
	printf("getuid=%ld errno=%d\n", r, errno);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "notrace")) {
		if (install())
			return 3;
		child_calls();
		return 0;
	}
	pid_t c = fork();
	if (c == 0) {
		ptrace(PTRACE_TRACEME, 0, 0, 0);
		raise(SIGSTOP);
		if (install())
			_exit(3);
		child_calls();
		_exit(0);
	}
	int st;
	waitpid(c, &st, 0);
	if (ptrace(PTRACE_SETOPTIONS, c, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL))
		return 4;
	ptrace(PTRACE_CONT, c, 0, 0);
	for (;;) {
		if (waitpid(c, &st, 0) < 0 || WIFEXITED(st) || WIFSIGNALED(st))
			break;
		int sig = 0;
		if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
			unsigned long data = 0;
			ptrace(PTRACE_GETEVENTMSG, c, 0, &data);
			struct user_regs_struct r;
			ptrace(PTRACE_GETREGS, c, 0, &r);
			printf("stop data=%#lx nr=%llu\n", data, r.orig_rax);
			if (r.orig_rax == SYS_getpid) {
				r.orig_rax = -1;
				r.rax = 4242;
				ptrace(PTRACE_SETREGS, c, 0, &r);
			} else if (r.orig_rax == SYS_getuid) {
				r.orig_rax = SYS_swapoff;
				r.rdi = (unsigned long)swap_path;
				ptrace(PTRACE_SETREGS, c, 0, &r);
			}
		} else if (WIFSTOPPED(st) && WSTOPSIG(st) != SIGTRAP) {
			sig = WSTOPSIG(st);
		}
		ptrace(PTRACE_CONT, c, 0, sig);
	}
	printf("child exit=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	return 0;
}
