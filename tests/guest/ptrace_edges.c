/* The edges of ptrace(2) for tests/kernel/test_guest_ptrace.py: each mode
 * prints one line per check, "name=RESULT" with RESULT a return value or
 * -errno, the same natively and under umld.
 *
 *   ptrace_edges refused    attach to itself, to a pid that does not exist,
 *                           twice to the same child, requests on a child
 *                           that is not stopped or not traced by us, a
 *                           debug register pointing into the kernel
 *   ptrace_edges exitkill   a tracer seizes a child with PTRACE_O_EXITKILL
 *                           and exits: the child dies of SIGKILL
 *   ptrace_edges detach     the same without the option: the child runs on
 *                           and exits 7
 *   ptrace_edges stopped    attach to a child already in a group-stop: requests
 *                           work as soon as PTRACE_ATTACH returns (LTP
 *                           ptrace08/10); seized, the stop is reported as a
 *                           PTRACE_EVENT_STOP with SIGSTOP and PTRACE_CONT
 *                           makes it run
 *   ptrace_edges traceme    PTRACE_TRACEME, then exit 3: its parent (a shell
 *                           that never traces) is made a tracer behind its
 *                           back and must go on as natively
 *   ptrace_edges regs       a tracer stops its child at a SIGSTOP, reads and
 *                           writes its registers and memory, single-steps
 *                           it, makes getpid return 4242 (PTRACE_SYSEMU),
 *                           and sees its exit
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static long res(long r)
{
	return r < 0 ? -errno : r;
}

static void say(const char *name, long r)
{
	printf("%s=%ld\n", name, r);
	fflush(stdout);
}

static pid_t sleeper(void)
{
	pid_t p = fork();
	if (p == 0) {
		for (int i = 0; i < 100; i++)
			usleep(20000);
		_exit(7);
	}
	return p;
}

static void refused(void)
{
	say("attach_self", res(ptrace(PTRACE_ATTACH, getpid(), 0, 0)));
	say("attach_none", res(ptrace(PTRACE_ATTACH, 999999, 0, 0)));
	pid_t c = sleeper();
	say("seize", res(ptrace(PTRACE_SEIZE, c, 0, 0)));
	say("seize_again", res(ptrace(PTRACE_SEIZE, c, 0, 0)));
	struct user_regs_struct regs;
	say("getregs_running", res(ptrace(PTRACE_GETREGS, c, 0, &regs)));
	say("interrupt", res(ptrace(PTRACE_INTERRUPT, c, 0, 0)));
	int st;
	waitpid(c, &st, __WALL);
	say("stopped_event", (st >> 16) == PTRACE_EVENT_STOP && WSTOPSIG(st) == SIGTRAP);
	say("getregs_stopped", res(ptrace(PTRACE_GETREGS, c, 0, &regs)));
	say("dr0_kernel",
	    res(ptrace(PTRACE_POKEUSER, c, offsetof(struct user, u_debugreg[0]), 0xffffffff81000000UL)));
	say("bad_options", res(ptrace(PTRACE_SETOPTIONS, c, 0, 0x80000000UL)));
	pid_t other = sleeper();
	say("getregs_untraced", res(ptrace(PTRACE_GETREGS, other, 0, &regs)));
	kill(other, SIGKILL);
	waitpid(other, &st, 0);
	say("kill", res(ptrace(PTRACE_KILL, c, 0, 0)));
	waitpid(c, &st, __WALL);
	say("killed", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}

static void tracer_exits(int exitkill)
{
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	int pipefd[2];
	if (pipe(pipefd))
		exit(1);
	pid_t tracer = fork();
	if (tracer == 0) {
		pid_t c = sleeper();
		write(pipefd[1], &c, sizeof c);
		long opts = exitkill ? PTRACE_O_EXITKILL : 0;
		if (ptrace(PTRACE_SEIZE, c, 0, opts) || ptrace(PTRACE_INTERRUPT, c, 0, 0))
			_exit(2);
		int st;
		waitpid(c, &st, __WALL);
		_exit(0); /* leaves its tracee in its stop */
	}
	pid_t c;
	if (read(pipefd[0], &c, sizeof c) != sizeof c)
		exit(1);
	int st;
	waitpid(tracer, &st, 0);
	say("tracer", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	waitpid(c, &st, 0);
	if (WIFSIGNALED(st))
		say("child_signal", WTERMSIG(st));
	else
		say("child_exit", WEXITSTATUS(st));
}

static int tracee_main(void)
{
	raise(SIGSTOP);
	long pid = syscall(SYS_getpid);
	return pid == 4242 ? 5 : 6;
}

static void regs(void)
{
	pid_t c = fork();
	if (c == 0) {
		ptrace(PTRACE_TRACEME, 0, 0, 0);
		_exit(tracee_main());
	}
	int st;
	waitpid(c, &st, 0);
	say("sigstop", WIFSTOPPED(st) ? WSTOPSIG(st) : -1);
	siginfo_t si;
	say("getsiginfo", res(ptrace(PTRACE_GETSIGINFO, c, 0, &si)));
	say("si_signo", si.si_signo);
	struct user_regs_struct r;
	say("getregs", res(ptrace(PTRACE_GETREGS, c, 0, &r)));
	errno = 0;
	long word = ptrace(PTRACE_PEEKDATA, c, (void *)r.rsp, 0);
	say("peek", errno ? -errno : 0);
	say("poke", res(ptrace(PTRACE_POKEDATA, c, (void *)r.rsp, (void *)word)));
	errno = 0;
	long rip = ptrace(PTRACE_PEEKUSER, c, offsetof(struct user_regs_struct, rip), 0);
	say("peekuser_rip", !errno && (unsigned long)rip == r.rip);
	say("setregs", res(ptrace(PTRACE_SETREGS, c, 0, &r)));
	say("step", res(ptrace(PTRACE_SINGLESTEP, c, 0, 0)));
	waitpid(c, &st, 0);
	say("stepped", WIFSTOPPED(st) ? WSTOPSIG(st) : -1);
	ptrace(PTRACE_GETSIGINFO, c, 0, &si);
	say("step_code", si.si_code);
	/* Each syscall entry until getpid: skipped by SYSEMU, result 4242. */
	for (int i = 0; i < 100; i++) {
		if (ptrace(PTRACE_SYSEMU, c, 0, 0))
			break;
		waitpid(c, &st, 0);
		if (!WIFSTOPPED(st))
			break;
		ptrace(PTRACE_GETREGS, c, 0, &r);
		if (r.orig_rax == SYS_getpid) {
			r.rax = 4242;
			ptrace(PTRACE_SETREGS, c, 0, &r);
			say("sysemu_getpid", 1);
			break;
		}
		r.rax = -ENOSYS;
	}
	ptrace(PTRACE_CONT, c, 0, 0);
	waitpid(c, &st, 0);
	say("exit", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static pid_t stopped_child(void)
{
	pid_t c = fork();
	if (c == 0) {
		raise(SIGSTOP);
		_exit(9);
	}
	int st;
	waitpid(c, &st, WUNTRACED);
	return c;
}

static void stopped(void)
{
	pid_t c = stopped_child();
	int st;
	long dr0 = offsetof(struct user, u_debugreg[0]);
	say("attach", res(ptrace(PTRACE_ATTACH, c, 0, 0)));
	say("poke_at_once", res(ptrace(PTRACE_POKEUSER, c, (void *)dr0, (void *)2)));
	errno = 0;
	long got = ptrace(PTRACE_PEEKUSER, c, (void *)dr0, 0);
	say("peek_at_once", errno ? -errno : got);
	say("detach", res(ptrace(PTRACE_DETACH, c, 0, 0)));
	kill(c, SIGCONT);
	waitpid(c, &st, 0);
	say("exit", WIFEXITED(st) ? WEXITSTATUS(st) : -1);

	c = stopped_child();
	say("seize", res(ptrace(PTRACE_SEIZE, c, 0, 0)));
	say("getregs_at_once", res(ptrace(PTRACE_GETREGS, c, 0, &(struct user_regs_struct){0})));
	waitpid(c, &st, __WALL);
	say("group_stop_event", (st >> 16) == PTRACE_EVENT_STOP && WSTOPSIG(st) == SIGSTOP);
	say("listen", res(ptrace(PTRACE_LISTEN, c, 0, 0)));
	say("cont_listening", res(ptrace(PTRACE_CONT, c, 0, 0)));
	kill(c, SIGKILL);
	waitpid(c, &st, __WALL);
	say("killed", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "refused"))
		refused();
	else if (!strcmp(mode, "exitkill"))
		tracer_exits(1);
	else if (!strcmp(mode, "detach"))
		tracer_exits(0);
	else if (!strcmp(mode, "regs"))
		regs();
	else if (!strcmp(mode, "stopped"))
		stopped();
	else if (!strcmp(mode, "traceme"))
		return ptrace(PTRACE_TRACEME, 0, 0, 0) == 0 ? 3 : 4;
	else
		return 2;
	return 0;
}
