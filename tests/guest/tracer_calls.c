/* Guest for tests/tracer/test_platform.py: makes the system calls named on its command
 * line and prints what it saw, one line per call that reports.
 *
 *   -o FILE       (first) write the output to FILE
 *   getppid:N     N raw getppid calls (untrapped in the tests)
 *   uname:N       N raw uname calls; prints "uname=<ret> errno=<e> node=<n>"
 *                 for the last one
 *   rawargs       uname with six recognisable register arguments
 *   memlayout     uname whose args point at strings placed at page edges,
 *                 then checks what the tracer wrote (see test_platform.py)
 *   procinfo      prints the working directory, whether it leads its
 *                 process group and its session, the blocked and the ignored signals (hex
 *                 masks) and $UMLD_TEST_VAR
 *   i386          getpid through int 0x80 (i386 ABI, nr 20) with ebx..ebp
 *                 set to 0x1111..0x6666; prints "i386=<eax>"
 *   i386regs      getpid through int 0x80, then prints ebx..ebp and eax
 *   regs64        getppid through syscall, then prints rdi..r9 and rax
 *   i386hi        as i386, with garbage in the upper halves of rbx..rbp
 *                 (the i386 ABI ignores them); prints "i386hi=<eax>"
 *   x32           getpid with the x32 bit (0x40000000 | 39); prints
 *                 "x32=<rax>"
 *   badnr         syscall(-1); prints "badnr=<ret> errno=<e>"
 *   cli           eax=0x1234, rdx=0x5678, then cli (a SIGSEGV with si_code
 *                 SI_KERNEL at CPL 3); a tracer that skips it prints the
 *                 registers it left: "cli rax=<rax> rdx=<rdx>"
 *   usr1info      a SA_SIGINFO handler for SIGUSR1, then kill(getpid(),
 *                 SIGUSR1); the handler prints "usr1 code=<si_code>
 *                 pid=<same: si_pid is getpid()> value=<si_value.sival_int>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static void do_uname(long n)
{
	struct utsname u;
	long r = 0;
	int e = 0;
	for (long i = 0; i < n; i++) {
		memset(&u, 0, sizeof u);
		errno = 0;
		r = syscall(SYS_uname, &u);
		e = errno;
	}
	printf("uname=%ld errno=%d node=%s\n", r, e, u.nodename);
}

static int memlayout(void)
{
	long page = sysconf(_SC_PAGESIZE);
	/* Four pages, the second and fourth unmapped: strings at the very
	 * edge of the first and third. */
	char *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* Two mapped pages: a string crossing between them. */
	char *q = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* A read-only page the tracer writes through /proc/PID/mem. */
	char *r = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* A long string. */
	char *l = malloc(6000);
	if (p == MAP_FAILED || q == MAP_FAILED || r == MAP_FAILED || !l)
		return 2;
	munmap(p + page, page);
	munmap(p + 3 * page, page);
	char *edge = p + page - 6;
	memcpy(edge, "hello", 6);  /* NUL is the last byte of the page */
	char *open_end = p + 3 * page - 4;
	memcpy(open_end, "abcd", 4); /* no NUL before the hole */
	char *cross = q + page - 3;
	memcpy(cross, "crossing", 9);
	memset(l, 'x', 5000);
	l[5000] = 0;
	memcpy(r, "ro-page", 8);
	mprotect(r, page, PROT_READ);
	long ret = syscall(SYS_uname, edge, open_end, cross, l, r, p + page);
	/* The tracer completed the call with 0 after writing "WXYZ" into the
	 * read-only page and "!" over the 'h' of "hello". */
	printf("ret=%ld ro=%s edge=%s\n", ret, r, edge);
	return 0;
}

static long int80_getpid(void)
{
	long ret;
	/* ebx, ecx, edx, esi, edi, ebp carry i386 arguments; rbp is saved by
	 * hand because the compiler may use it as the frame pointer. */
	__asm__ volatile("push %%rbp\n\t"
			 "mov $0x6666, %%rbp\n\t"
			 "int $0x80\n\t"
			 "pop %%rbp"
			 : "=a"(ret)
			 : "a"(20L), "b"(0x1111L), "c"(0x2222L), "d"(0x3333L), "S"(0x4444L),
			   "D"(0x5555L)
			 : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

static long int80_getpid_hi(void)
{
	long ret;
	__asm__ volatile("push %%rbp\n\t"
			 "mov $0xdead000000006666, %%rbp\n\t"
			 "int $0x80\n\t"
			 "pop %%rbp"
			 : "=a"(ret)
			 : "a"(20L), "b"(0xdead000000001111L), "c"(0xdead000000002222L),
			   "d"(0xdead000000003333L), "S"(0xdead000000004444L),
			   "D"(0xdead000000005555L)
			 : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

/* i386regs: getpid through int 0x80 with ebx..ebp = 0x1111..0x6666;
 * prints the six registers after the call (the kernel preserves them) and
 * eax: "i386regs=1111,2222,3333,4444,5555,6666 ret=N". */
static void int80_regs(void)
{
	unsigned long b = 0x1111, c = 0x2222, d = 0x3333, si = 0x4444, di = 0x5555;
	register unsigned long bp __asm__("r8");
	long ret;
	__asm__ volatile("push %%rbp\n\t"
			 "mov $0x6666, %%rbp\n\t"
			 "int $0x80\n\t"
			 "mov %%rbp, %%r8\n\t"
			 "pop %%rbp"
			 : "=a"(ret), "+b"(b), "+c"(c), "+d"(d), "+S"(si), "+D"(di), "=r"(bp)
			 : "0"(20L)
			 : "memory", "r9", "r10", "r11");
	printf("i386regs=%lx,%lx,%lx,%lx,%lx,%lx ret=%ld\n", b, c, d, si, di, bp, ret);
}

/* regs64: getppid through syscall with rdi..r9 = 0x1111..0x6666; prints
 * them after the call and rax: "regs64=1111,...,6666 ret=N". */
static void syscall_regs(void)
{
	unsigned long di = 0x1111, si = 0x2222, d = 0x3333;
	register unsigned long r10 __asm__("r10") = 0x4444;
	register unsigned long r8 __asm__("r8") = 0x5555;
	register unsigned long r9 __asm__("r9") = 0x6666;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret), "+D"(di), "+S"(si), "+d"(d), "+r"(r10), "+r"(r8), "+r"(r9)
			 : "0"(110L)
			 : "rcx", "r11", "memory");
	printf("regs64=%lx,%lx,%lx,%lx,%lx,%lx ret=%ld\n", di, si, d, r10, r8, r9, ret);
}

static long x32_getpid(void)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(0x40000000L | 39)
			 : "rcx", "r11", "memory");
	return ret;
}

static void usr1_info(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	printf("usr1 code=%d pid=%s value=%d\n", si->si_code,
	       si->si_pid == getpid() ? "same" : "other", si->si_value.sival_int);
}

int main(int argc, char **argv)
{
	int first = 1;
	if (argc > 2 && !strcmp(argv[1], "-o")) {
		if (!freopen(argv[2], "w", stdout))
			return 2;
		first = 3;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = first; i < argc; i++) {
		char *arg = argv[i];
		char *colon = strchr(arg, ':');
		long n = colon ? atol(colon + 1) : 1;
		if (!strncmp(arg, "getppid", 7)) {
			for (long k = 0; k < n; k++)
				syscall(SYS_getppid);
		} else if (!strncmp(arg, "uname", 5)) {
			do_uname(n);
		} else if (!strcmp(arg, "rawargs")) {
			struct utsname u;
			long r = syscall(SYS_uname, &u, 0x1111L, 0x2222L, 0x3333L, 0x4444L, 0x5555L);
			printf("rawargs=%ld\n", r);
		} else if (!strcmp(arg, "memlayout")) {
			int rc = memlayout();
			if (rc)
				return rc;
		} else if (!strcmp(arg, "procinfo")) {
			char cwd[4096];
			sigset_t set;
			unsigned long mask = 0, ign = 0;
			sigprocmask(SIG_BLOCK, NULL, &set);
			for (int sig = 1; sig <= 64; sig++) {
				struct sigaction sa;
				if (sigismember(&set, sig) == 1)
					mask |= 1UL << (sig - 1);
				if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
					ign |= 1UL << (sig - 1);
			}
			const char *var = getenv("UMLD_TEST_VAR");
			printf("cwd=%s leader=%d session=%d sigblk=%lx sigign=%lx var=%s\n",
			       getcwd(cwd, sizeof cwd) ? cwd : "?", getpgrp() == getpid(),
			       getsid(0) == getpid(), mask, ign, var ? var : "-");
		} else if (!strcmp(arg, "i386regs")) {
			int80_regs();
		} else if (!strcmp(arg, "regs64")) {
			syscall_regs();
		} else if (!strcmp(arg, "i386")) {
			printf("i386=%ld\n", int80_getpid());
		} else if (!strcmp(arg, "i386hi")) {
			printf("i386hi=%ld\n", int80_getpid_hi());
		} else if (!strcmp(arg, "badnr")) {
			errno = 0;
			long r = syscall(-1L);
			printf("badnr=%ld errno=%d\n", r, errno);
		} else if (!strcmp(arg, "cli")) {
			unsigned long rax = 0x1234, rdx = 0x5678;
			__asm__ volatile("cli" : "+a"(rax), "+d"(rdx) : : "memory");
			printf("cli rax=%#lx rdx=%#lx\n", rax, rdx);
		} else if (!strcmp(arg, "usr1info")) {
			struct sigaction sa;
			memset(&sa, 0, sizeof sa);
			sa.sa_sigaction = usr1_info;
			sa.sa_flags = SA_SIGINFO;
			sigaction(SIGUSR1, &sa, NULL);
			kill(getpid(), SIGUSR1);
		} else if (!strcmp(arg, "x32")) {
			printf("x32=%ld\n", x32_getpid());
		} else {
			fprintf(stderr, "calls: unknown %s\n", arg);
			return 2;
		}
	}
	return 0;
}
