/* Guest for tests/kernel/test_ioport.py: port I/O, cli/sti and hlt in
 * every form, under ioperm(2)/iopl(2) or without them.
 *
 *   ioport [GRANT] MODE
 *
 * GRANT (done first, exit 3 with "grant errno=E" when refused):
 *   ioperm        ioperm(0xe0, 16, 1)
 *   iopl          iopl(3)
 *   partial       ioperm(0xe0, 1, 1): port 0xe0 only
 *   none          nothing
 *
 * MODE:
 *   forms         every form and width of in/out/ins/outs (imm8 port 0xe0,
 *                 dx port 0xe4), one line each: rax after an in (rax was
 *                 0x1122334455667788), the buffer, rdi/rsi moves and rcx
 *                 after a string form
 *   inb | inw     one inb/inw at 0xe0, prints "in=<rax>"
 *   cli           a thread sends SIGUSR1 to this one after cli; prints
 *                 whether the handler ran before sti and after it
 *   hlt           a thread sends SIGUSR1 once this one is stopped at hlt
 *                 (its /proc state); prints "hlt woke handled=1"
 *   errors        ioperm/iopl argument checks, as "name=ret/errno" lines
 *   cliinfo       cli, then SIGUSR2 twice (tgkill) and SIGRTMIN twice
 *                 (sigqueue, values 7 and 8): prints what sigpending(2)
 *                 shows and what the SA_SIGINFO handler saw before sti,
 *                 then each delivery after it ("SIG code=C value=V"),
 *                 and whether the mask after sti is the one before cli
 *   maskinfo      the same with sigprocmask(2) blocking the two signals
 *                 instead of cli and restoring the mask instead of sti:
 *                 what a blocked signal does natively
 *   cliexec       cli, raise(SIGUSR1) (held), then exec sleep 30: the new
 *                 program starts with IF set and gets the signal
 *   insro | insnone | insgone | outsnone
 *                 ins into a read-only, PROT_NONE or unmapped page, outs
 *                 from a PROT_NONE page (port 0xe0): the SIGSEGV handler
 *                 prints "segv code=C at_page=1" (SEGV_ACCERR 2 where the
 *                 page is mapped, SEGV_MAPERR 1 where not) and exits 0
 *   gp            a load from a non-canonical address: a #GP, so SIGSEGV
 *                 with si_code SI_KERNEL too, that is not port I/O
 *   null          a load from address 0 (SEGV_MAPERR)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RAX0 0x1122334455667788UL

static void dump(const char *name, const unsigned char *buf, size_t n, long moved, unsigned long rcx)
{
	printf("%s=", name);
	for (size_t i = 0; i < n; i++)
		printf("%02x", buf[i]);
	printf(" moved=%ld rcx=%lu\n", moved, rcx);
}

static void forms(void)
{
	unsigned long a;
	unsigned short dx = 0xe4;
	a = RAX0;
	__asm__ volatile("inb $0xe0, %%al" : "+a"(a));
	printf("inb_imm=%#lx\n", a);
	a = RAX0;
	__asm__ volatile("inw $0xe0, %%ax" : "+a"(a));
	printf("inw_imm=%#lx\n", a);
	a = RAX0;
	__asm__ volatile("inl $0xe0, %%eax" : "+a"(a));
	printf("inl_imm=%#lx\n", a);
	a = RAX0;
	__asm__ volatile("inb %%dx, %%al" : "+a"(a) : "d"(dx));
	printf("inb_dx=%#lx\n", a);
	a = RAX0;
	__asm__ volatile("inw %%dx, %%ax" : "+a"(a) : "d"(dx));
	printf("inw_dx=%#lx\n", a);
	a = RAX0;
	__asm__ volatile("inl %%dx, %%eax" : "+a"(a) : "d"(dx));
	printf("inl_dx=%#lx\n", a);
	__asm__ volatile("outb %%al, $0xe0" : : "a"(0x5aUL));
	__asm__ volatile("outw %%ax, $0xe0" : : "a"(0x5a5bUL));
	__asm__ volatile("outl %%eax, $0xe0" : : "a"(0x5a5b5c5dUL));
	__asm__ volatile("outb %%al, %%dx" : : "a"(0x61UL), "d"(dx));
	__asm__ volatile("outw %%ax, %%dx" : : "a"(0x6162UL), "d"(dx));
	__asm__ volatile("outl %%eax, %%dx" : : "a"(0x61626364UL), "d"(dx));
	printf("out done\n");

	unsigned char buf[16];
	unsigned char *di;
	unsigned long c;
	const char *names[3] = {"insb", "insw", "insl"};
	for (int w = 0; w < 3; w++) {
		memset(buf, 0xaa, sizeof buf);
		di = buf;
		c = 3;
		if (w == 0)
			__asm__ volatile("rep insb" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
		else if (w == 1)
			__asm__ volatile("rep insw" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
		else
			__asm__ volatile("rep insl" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
		dump(names[w], buf, sizeof buf, di - buf, c);
	}
	/* Backwards (the direction flag): 0xaa.. then elements at 2, 1, 0. */
	memset(buf, 0xaa, sizeof buf);
	di = buf + 2;
	c = 3;
	__asm__ volatile("std; rep insb; cld" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
	dump("insb_df", buf, sizeof buf, di - (buf + 2), c);
	/* 32-bit addresses (0x67): edi and ecx, so a buffer below 4 GiB;
	 * rcx's upper half is not a count then. */
	unsigned char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	if (low == MAP_FAILED)
		abort();
	memset(low, 0xaa, sizeof buf);
	di = low;
	c = 0x100000002UL;
	__asm__ volatile(".byte 0x67; rep insb" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
	dump("insb_a32", low, sizeof buf, di - low, c);
	/* Without rep: one element, rcx untouched. */
	memset(buf, 0xaa, sizeof buf);
	di = buf;
	c = 7;
	__asm__ volatile("insw" : "+D"(di), "+c"(c) : "d"(dx) : "memory");
	dump("insw_one", buf, sizeof buf, di - buf, c);

	static const unsigned char src[16] = "ABCDEFGHIJKLMNOP";
	const unsigned char *si;
	si = src;
	c = 3;
	__asm__ volatile("rep outsb" : "+S"(si), "+c"(c) : "d"(dx) : "memory");
	printf("outsb moved=%ld rcx=%lu\n", si - src, c);
	si = src;
	c = 3;
	__asm__ volatile("rep outsw" : "+S"(si), "+c"(c) : "d"(dx) : "memory");
	printf("outsw moved=%ld rcx=%lu\n", si - src, c);
	si = src;
	c = 3;
	__asm__ volatile("rep outsl" : "+S"(si), "+c"(c) : "d"(dx) : "memory");
	printf("outsl moved=%ld rcx=%lu\n", si - src, c);
	si = src + 2;
	c = 3;
	__asm__ volatile("std; rep outsb; cld" : "+S"(si), "+c"(c) : "d"(dx) : "memory");
	printf("outsb_df moved=%ld rcx=%lu\n", si - (src + 2), c);
	si = src;
	c = 0;
	__asm__ volatile("rep outsb" : "+S"(si), "+c"(c) : "d"(dx) : "memory");
	printf("outsb_zero moved=%ld rcx=%lu\n", si - src, c);
}

static atomic_int handled, step;
static pid_t main_tid;

static void on_usr1(int sig)
{
	(void)sig;
	atomic_fetch_add(&handled, 1);
}

static int seen_sig[8], seen_code[8], seen_value[8];
static atomic_int seen;

static void on_info(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int i = atomic_fetch_add(&seen, 1);
	if (i < 8) {
		seen_sig[i] = sig;
		seen_code[i] = si->si_code;
		seen_value[i] = si->si_code == SI_QUEUE ? si->si_value.sival_int : 0;
	}
}

static void cliinfo(int with_mask)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_info;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGRTMIN, &sa, NULL);
	sigset_t before, after, pending;
	sigset_t two;
	sigemptyset(&two);
	sigaddset(&two, SIGUSR2);
	sigaddset(&two, SIGRTMIN);
	sigprocmask(SIG_SETMASK, NULL, &before);
	if (with_mask)
		sigprocmask(SIG_BLOCK, &two, NULL);
	else
		__asm__ volatile("cli" ::: "memory");
	syscall(SYS_tgkill, getpid(), main_tid, SIGUSR2);
	sigqueue(getpid(), SIGRTMIN, (union sigval){.sival_int = 7});
	sigqueue(getpid(), SIGRTMIN, (union sigval){.sival_int = 8});
	syscall(SYS_tgkill, getpid(), main_tid, SIGUSR2);
	sigpending(&pending);
	int during = atomic_load(&seen);
	if (with_mask)
		sigprocmask(SIG_SETMASK, &before, NULL);
	else
		__asm__ volatile("sti" ::: "memory");
	sigprocmask(SIG_SETMASK, NULL, &after);
	printf("pending usr2=%d rt=%d handled=%d\n", sigismember(&pending, SIGUSR2),
	       sigismember(&pending, SIGRTMIN), during);
	int n = atomic_load(&seen);
	for (int i = 0; i < n && i < 8; i++)
		printf("%s code=%d value=%d\n", seen_sig[i] == SIGUSR2 ? "usr2" : "rtmin", seen_code[i],
		       seen_value[i]);
	int kept = 1;
	for (int s = 1; s < 65; s++)
		if (s != 32 && s != 33 && sigismember(&before, s) != sigismember(&after, s))
			kept = 0;
	printf("mask kept=%d\n", kept);
}

static char *bad_page;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	printf("segv code=%d at_page=%d\n", si->si_code, (char *)si->si_addr == bad_page);
	fflush(stdout);
	_exit(0);
}

static void bad_access(const char *mode)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	int prot = !strcmp(mode, "insro") ? PROT_READ : PROT_NONE;
	bad_page = mmap(NULL, 4096, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bad_page == MAP_FAILED)
		exit(5);
	if (!strcmp(mode, "insgone"))
		munmap(bad_page, 4096);
	unsigned long n = 4;
	void *p = bad_page;
	if (mode[0] == 'i')
		__asm__ volatile("movw $0xe0, %%dx; rep insb" : "+D"(p), "+c"(n) : : "rdx", "memory");
	else
		__asm__ volatile("movw $0xe0, %%dx; rep outsb" : "+S"(p), "+c"(n) : : "rdx", "memory");
	printf("no fault n=%lu\n", n);
}

static void *cli_sender(void *arg)
{
	(void)arg;
	while (atomic_load(&step) != 1)
		;
	syscall(SYS_tgkill, getpid(), main_tid, SIGUSR1);
	atomic_store(&step, 2);
	return NULL;
}

/* The state letter of thread `tid` in /proc (t: stopped by the tracer). */
static char thread_state(pid_t tid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return '?';
	char *r = fgets(line, sizeof line, f);
	fclose(f);
	char *p = r ? strrchr(line, ')') : NULL;
	return p && p[1] && p[2] ? p[2] : '?';
}

static void *hlt_sender(void *arg)
{
	(void)arg;
	while (atomic_load(&step) != 1)
		;
	/* Until the main thread sits in its hlt (a tracing stop). */
	while (thread_state(main_tid) != 't')
		usleep(1000);
	syscall(SYS_tgkill, getpid(), main_tid, SIGUSR1);
	return NULL;
}

static void report(const char *name, int rc)
{
	printf("%s=%d/%d\n", name, rc, rc ? errno : 0);
}

static void errors(void)
{
	report("ioperm_past_end", ioperm(0xfff0, 0x11, 1));
	report("ioperm_empty", ioperm(0x80, 0, 1));
	report("ioperm_last", ioperm(0xffff, 1, 1));
	report("ioperm_off", ioperm(0x80, 8, 0));
	report("iopl_4", iopl(4));
	report("iopl_3", iopl(3));
	report("iopl_0", iopl(0));
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 3) {
		fprintf(stderr, "usage: ioport GRANT MODE\n");
		return 2;
	}
	const char *grant = argv[1], *mode = argv[2];
	int rc = 0;
	if (!strcmp(grant, "ioperm"))
		rc = ioperm(0xe0, 16, 1);
	else if (!strcmp(grant, "iopl"))
		rc = iopl(3);
	else if (!strcmp(grant, "partial"))
		rc = ioperm(0xe0, 1, 1);
	if (rc) {
		printf("grant errno=%d\n", errno);
		return 3;
	}
	main_tid = (pid_t)syscall(SYS_gettid);
	if (!strcmp(mode, "forms")) {
		forms();
	} else if (!strcmp(mode, "inb") || !strcmp(mode, "inw")) {
		unsigned long a = RAX0;
		if (mode[2] == 'b')
			__asm__ volatile("inb $0xe0, %%al" : "+a"(a));
		else
			__asm__ volatile("inw $0xe0, %%ax" : "+a"(a));
		printf("in=%#lx\n", a);
	} else if (!strcmp(mode, "cli") || !strcmp(mode, "hlt")) {
		signal(SIGUSR1, on_usr1);
		pthread_t th;
		pthread_create(&th, NULL, mode[0] == 'c' ? cli_sender : hlt_sender, NULL);
		if (mode[0] == 'c') {
			__asm__ volatile("cli" ::: "memory");
			atomic_store(&step, 1);
			while (atomic_load(&step) != 2)
				;
			/* Sent and (natively) delivered by now, were it not held:
			 * give it every chance. */
			for (int i = 0; i < 100; i++)
				sched_yield();
			int before = atomic_load(&handled);
			__asm__ volatile("sti" ::: "memory");
			printf("cli before_sti=%d after_sti=%d\n", before, atomic_load(&handled));
		} else {
			atomic_store(&step, 1);
			__asm__ volatile("hlt" ::: "memory");
			printf("hlt woke handled=%d\n", atomic_load(&handled));
		}
		pthread_join(th, NULL);
	} else if (!strcmp(mode, "cliinfo") || !strcmp(mode, "maskinfo")) {
		cliinfo(mode[0] == 'm');
	} else if (!strcmp(mode, "insro") || !strcmp(mode, "insnone") || !strcmp(mode, "insgone") ||
		   !strcmp(mode, "outsnone")) {
		bad_access(mode);
	} else if (!strcmp(mode, "cliexec")) {
		__asm__ volatile("cli" ::: "memory");
		raise(SIGUSR1);
		printf("held\n");
		execl("/bin/sleep", "sleep", "30", (char *)NULL);
		return 4;
	} else if (!strcmp(mode, "gp") || !strcmp(mode, "null")) {
		volatile unsigned long *p = (volatile unsigned long *)(mode[0] == 'g' ? 0x8000000000000000UL : 0UL);
		printf("loaded %lu\n", *p);
	} else if (!strcmp(mode, "errors")) {
		errors();
	} else {
		fprintf(stderr, "ioport: unknown mode %s\n", mode);
		return 2;
	}
	return 0;
}
