/* Every way a guest can name a network destination, for the network
 * policy tests (tests/kernel/test_net_policy.py).  Built as a 64-bit and as
 * a 32-bit (-m32) program.  Prints one line "MODE=RESULT [details]", RESULT
 * being the call's return value or -errno.
 *
 *   netprobe MODE IP PORT [IP2 PORT2 [N]]
 *
 *   connect      TCP connect(2) to IP:PORT
 *   fastopen     TCP sendto(2) with MSG_FASTOPEN to IP:PORT (connects)
 *   sendto       UDP sendto(2) "sendto" to IP:PORT
 *   sendmsg      UDP sendmsg(2) "sendmsg" to IP:PORT, with an IP_TTL cmsg
 *   sendmmsg     UDP sendmmsg(2) of "mmsg-0", "mmsg-1" to IP:PORT; prints
 *                the msg_len of each
 *   sc-*         (32-bit) the same through socketcall(2): sc-connect,
 *                sc-sendto, sc-sendmsg, sc-sendmmsg
 *   int80-connect, int80-sc-connect
 *                (64-bit) connect through int 0x80: the i386 connect and
 *                socketcall(SYS_CONNECT), arguments below 4 GiB
 *   uring-connect, uring-sendmsg
 *                the same through io_uring (raw syscalls): IORING_OP_CONNECT,
 *                IORING_OP_SENDMSG; "-ENOSYS" when io_uring_setup fails so
 *   race-connect, race-sendto, race-sendmsg
 *                up to N calls (UDP) while a second thread flips the
 *                sockaddr (or msg_name) between IP:PORT and IP2:PORT2; IP2
 *                "unspec" flips to an AF_UNSPEC sockaddr, "unix" to an
 *                AF_UNIX one.  Sends "raced"; stops once 300 calls succeeded
 *                and 300 failed; prints "MODE=SUCCEEDED failed=FAILED"
 *   epipe        listen on IP (port 0), connect to it, close the accepted
 *                end, then sendto(2) the connected socket with the address
 *                until it fails: prints "epipe=-ERRNO code=C self=S uid=U",
 *                the SIGPIPE handler's si_code and whether si_pid/si_uid
 *                are its own (1) or not (0)
 *   accept, sc-accept, sc-accept4, accept4
 *                listen on IP:PORT (0: any), print "listening PORT", accept one
 *                connection (accept(2) or accept4(2); sc-: through
 *                socketcall), print "accepted=RESULT"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/net.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

static long res(long r)
{
	return r < 0 ? -errno : r;
}

static void addr_of(struct sockaddr_in *sa, const char *ip, const char *port)
{
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(port));
	if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1) {
		fprintf(stderr, "netprobe: bad address %s\n", ip);
		exit(2);
	}
}

static int udp(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		exit(2);
	}
	return fd;
}

static int tcp(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		exit(2);
	}
	return fd;
}

/* -- socketcall(2), for the 32-bit build ------------------------------- */

#ifdef __i386__
static long sc(int call, unsigned long *args)
{
	return syscall(SYS_socketcall, call, args);
}
#endif

/* -- int 0x80 from the 64-bit build ------------------------------------ */

#ifdef __x86_64__
static long int80(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("int $0x80"
			 : "=a"(ret)
			 : "a"(nr), "b"(a), "c"(b), "d"(c)
			 : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

static void *low(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
		       -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}
#endif

/* -- io_uring with raw syscalls ---------------------------------------- */

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static long ring_setup(struct ring *r)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	r->fd = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0)
		return -errno;
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
			IORING_OFF_SQ_RING);
	char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
			IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		return -errno;
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	return 0;
}

/* Submit one SQE (filled by the caller) and wait for its completion. */
static long ring_run(struct ring *r, struct io_uring_sqe *sqe)
{
	unsigned tail = *r->sq_tail;
	unsigned idx = tail & *r->sq_mask;
	r->sqes[idx] = *sqe;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -errno;
	unsigned head = *r->cq_head;
	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
		return -EAGAIN;
	long got = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return got;
}

/* -- the racing thread --------------------------------------------------- */

static struct sockaddr_storage flip_a, flip_b, *flip_target;
static socklen_t flip_len;
static atomic_int flipping = 1;
static atomic_long flips;

/* Each address stays a while: a flipper that shares a CPU with the caller
 * (which runs when the caller stops at its call) is then found holding
 * either one about as often, wherever it was preempted.  The barrier also
 * keeps the compiler from dropping the first store (overwritten without a
 * read in between, as it sees it). */
static void hold(void)
{
	for (int k = 0; k < 200; k++)
		__asm__ volatile("pause" ::: "memory");
}

static void *flipper(void *arg)
{
	(void)arg;
	while (atomic_load_explicit(&flipping, memory_order_relaxed)) {
		memcpy(flip_target, &flip_a, flip_len);
		hold();
		memcpy(flip_target, &flip_b, flip_len);
		hold();
		atomic_fetch_add_explicit(&flips, 1, memory_order_relaxed);
	}
	return NULL;
}

static void second(struct sockaddr_storage *ss, const char *ip, const char *port)
{
	memset(ss, 0, sizeof *ss);
	if (!strcmp(ip, "unspec")) {
		struct sockaddr_in *sa = (struct sockaddr_in *)ss;
		addr_of(sa, "127.0.0.1", port);
		sa->sin_family = AF_UNSPEC;
	} else if (!strcmp(ip, "unix")) {
		struct sockaddr_un *su = (struct sockaddr_un *)ss;
		su->sun_family = AF_UNIX;
		strcpy(su->sun_path, "/nonexistent-umld-probe");
	} else {
		addr_of((struct sockaddr_in *)ss, ip, port);
	}
}

static int race(const char *mode, struct sockaddr_in *target, char **argv, int argc)
{
	if (argc < 7) {
		fprintf(stderr, "netprobe: %s needs IP2 PORT2 N\n", mode);
		return 2;
	}
	long n = atol(argv[6]);
	static struct sockaddr_storage live;
	memcpy(&flip_a, target, sizeof *target);
	second(&flip_b, argv[4], argv[5]);
	flip_target = &live;
	flip_len = sizeof(struct sockaddr_in);
	memcpy(&live, target, sizeof *target);
	pthread_t t;
	pthread_create(&t, NULL, flipper, NULL);
	while (atomic_load(&flips) < 1000) /* it runs before the calls start */
		sched_yield();
	long ok = 0, failed = 0;
	int fd = udp();
	for (long i = 0; i < n; i++) {
		long r;
		if (!strcmp(mode, "race-connect")) {
			r = connect(fd, (struct sockaddr *)&live, sizeof(struct sockaddr_in));
			if (r == 0) {
				send(fd, "raced", 5, 0);
				struct sockaddr_in none = {.sin_family = AF_UNSPEC};
				connect(fd, (struct sockaddr *)&none, sizeof none);
			}
		} else if (!strcmp(mode, "race-sendto")) {
			r = sendto(fd, "raced", 5, 0, (struct sockaddr *)&live, sizeof(struct sockaddr_in));
		} else {
			struct iovec iov = {.iov_base = "raced", .iov_len = 5};
			struct msghdr m = {.msg_name = &live,
					   .msg_namelen = sizeof(struct sockaddr_in),
					   .msg_iov = &iov,
					   .msg_iovlen = 1};
			r = sendmsg(fd, &m, 0);
		}
		if (r >= 0)
			ok++;
		else
			failed++;
		/* Enough of each outcome: both addresses were seen. */
		if (ok >= 300 && failed >= 300)
			break;
	}
	atomic_store(&flipping, 0);
	pthread_join(t, NULL);
	printf("%s=%ld failed=%ld\n", mode, ok, failed);
	return 0;
}

/* -- accept ------------------------------------------------------------- */

static int do_accept(const char *mode, struct sockaddr_in *sa)
{
	int fd = tcp();
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 8) < 0) {
		perror("listen");
		return 2;
	}
	struct sockaddr_in bound;
	socklen_t blen = sizeof bound;
	getsockname(fd, (struct sockaddr *)&bound, &blen);
	printf("listening %d\n", ntohs(bound.sin_port));
	long r;
	if (!strcmp(mode, "accept"))
		r = accept(fd, NULL, NULL);
	else if (!strcmp(mode, "accept4"))
		r = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
#ifdef __i386__
	else if (!strcmp(mode, "sc-accept")) {
		unsigned long a[3] = {(unsigned long)fd, 0, 0};
		r = sc(SYS_ACCEPT, a);
	} else if (!strcmp(mode, "sc-accept4")) {
		unsigned long a[4] = {(unsigned long)fd, 0, 0, SOCK_CLOEXEC};
		r = sc(SYS_ACCEPT4, a);
	}
#endif
	else {
		fprintf(stderr, "netprobe: no %s here\n", mode);
		return 2;
	}
	printf("accepted=%ld\n", r < 0 ? -errno : 0L);
	return 0;
}

static volatile sig_atomic_t pipe_code = 99, pipe_self = -1, pipe_uid = -1;

static void on_pipe(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	pipe_code = si->si_code;
	pipe_self = si->si_pid == getpid();
	pipe_uid = si->si_uid == getuid();
}

static int epipe(struct sockaddr_in *sa)
{
	struct sigaction act;
	memset(&act, 0, sizeof act);
	act.sa_sigaction = on_pipe;
	act.sa_flags = SA_SIGINFO;
	sigaction(SIGPIPE, &act, NULL);
	int l = tcp();
	sa->sin_port = 0;
	socklen_t len = sizeof *sa;
	if (bind(l, (struct sockaddr *)sa, len) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)sa, &len)) {
		perror("epipe listen");
		return 1;
	}
	int c = tcp();
	if (connect(c, (struct sockaddr *)sa, sizeof *sa)) {
		perror("epipe connect");
		return 1;
	}
	close(accept(l, NULL, NULL));
	close(l);
	long r = 0;
	for (int i = 0; i < 1000 && r >= 0; i++) {
		r = res(sendto(c, "x", 1, 0, (struct sockaddr *)sa, sizeof *sa));
		if (r >= 0)
			usleep(1000);
	}
	printf("epipe=%ld code=%d self=%d uid=%d\n", r, (int)pipe_code, (int)pipe_self,
	       (int)pipe_uid);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 4) {
		fprintf(stderr, "usage: netprobe MODE IP PORT [IP2 PORT2 [N]]\n");
		return 2;
	}
	const char *mode = argv[1];
	struct sockaddr_in sa;
	addr_of(&sa, argv[2], argv[3]);
	struct sockaddr *to = (struct sockaddr *)&sa;
	socklen_t len = sizeof sa;
	long r;

	if (!strcmp(mode, "epipe"))
		return epipe(&sa);
	if (!strncmp(mode, "race-", 5))
		return race(mode, &sa, argv, argc);
	if (!strcmp(mode, "accept") || !strcmp(mode, "accept4") || !strncmp(mode, "sc-accept", 9))
		return do_accept(mode, &sa);

	if (!strcmp(mode, "connect")) {
		r = res(connect(tcp(), to, len));
	} else if (!strcmp(mode, "fastopen")) {
		r = res(sendto(tcp(), "fastopen", 8, MSG_FASTOPEN, to, len));
	} else if (!strcmp(mode, "sendto")) {
		r = res(sendto(udp(), "sendto", 6, 0, to, len));
	} else if (!strcmp(mode, "sendmsg") || !strcmp(mode, "sc-sendmsg")) {
		struct iovec iov[2] = {{.iov_base = "send", .iov_len = 4},
				       {.iov_base = "msg", .iov_len = 3}};
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} ctl;
		memset(&ctl, 0, sizeof ctl);
		struct msghdr m = {.msg_name = to,
				   .msg_namelen = len,
				   .msg_iov = iov,
				   .msg_iovlen = 2,
				   .msg_control = ctl.buf,
				   .msg_controllen = sizeof ctl.buf};
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_TTL;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		int ttl = 7;
		memcpy(CMSG_DATA(c), &ttl, sizeof ttl);
		int fd = udp();
		if (!strcmp(mode, "sendmsg")) {
			r = res(sendmsg(fd, &m, 0));
		} else {
#ifdef __i386__
			unsigned long a[3] = {(unsigned long)fd, (unsigned long)&m, 0};
			r = res(sc(SYS_SENDMSG, a));
#else
			r = -ENOSYS;
#endif
		}
	} else if (!strcmp(mode, "sendmmsg") || !strcmp(mode, "sc-sendmmsg")) {
		struct iovec iov[2] = {{.iov_base = "mmsg-0", .iov_len = 6},
				       {.iov_base = "mmsg-1", .iov_len = 6}};
		struct mmsghdr mm[2];
		memset(mm, 0, sizeof mm);
		for (int i = 0; i < 2; i++) {
			mm[i].msg_hdr.msg_name = to;
			mm[i].msg_hdr.msg_namelen = len;
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
		}
		int fd = udp();
		if (!strcmp(mode, "sendmmsg")) {
			r = res(sendmmsg(fd, mm, 2, 0));
		} else {
#ifdef __i386__
			unsigned long a[4] = {(unsigned long)fd, (unsigned long)mm, 2, 0};
			r = res(sc(SYS_SENDMMSG, a));
#else
			r = -ENOSYS;
#endif
		}
		printf("%s=%ld len=%u,%u\n", mode, r, mm[0].msg_len, mm[1].msg_len);
		return 0;
#ifdef __i386__
	} else if (!strcmp(mode, "sc-connect")) {
		unsigned long a[3] = {(unsigned long)tcp(), (unsigned long)to, len};
		r = res(sc(SYS_CONNECT, a));
	} else if (!strcmp(mode, "sc-sendto")) {
		unsigned long a[6] = {(unsigned long)udp(), (unsigned long)"sendto", 6, 0,
				      (unsigned long)to, len};
		r = res(sc(SYS_SENDTO, a));
#endif
#ifdef __x86_64__
	} else if (!strcmp(mode, "int80-connect")) {
		struct sockaddr_in *low_sa = low(4096);
		*low_sa = sa;
		r = int80(362, tcp(), (long)(uintptr_t)low_sa, len); /* i386 connect */
	} else if (!strcmp(mode, "int80-sc-connect")) {
		char *page = low(4096);
		struct sockaddr_in *low_sa = (struct sockaddr_in *)page;
		unsigned *args = (unsigned *)(page + 64);
		*low_sa = sa;
		args[0] = (unsigned)tcp();
		args[1] = (unsigned)(uintptr_t)low_sa;
		args[2] = len;
		r = int80(102, SYS_CONNECT, (long)(uintptr_t)args, 0); /* socketcall */
#endif
	} else if (!strcmp(mode, "uring-connect") || !strcmp(mode, "uring-sendmsg")) {
		struct ring ring;
		memset(&ring, 0, sizeof ring);
		r = ring_setup(&ring);
		if (r == 0) {
			struct io_uring_sqe sqe;
			memset(&sqe, 0, sizeof sqe);
			struct iovec iov = {.iov_base = "uring", .iov_len = 5};
			struct msghdr m = {.msg_name = to, .msg_namelen = len, .msg_iov = &iov,
					   .msg_iovlen = 1};
			if (!strcmp(mode, "uring-connect")) {
				sqe.opcode = IORING_OP_CONNECT;
				sqe.fd = tcp();
				sqe.addr = (uint64_t)(uintptr_t)to;
				sqe.off = len;
			} else {
				sqe.opcode = IORING_OP_SENDMSG;
				sqe.fd = udp();
				sqe.addr = (uint64_t)(uintptr_t)&m;
			}
			r = ring_run(&ring, &sqe);
		}
	} else {
		fprintf(stderr, "netprobe: unknown mode %s\n", mode);
		return 2;
	}
	printf("%s=%ld\n", mode, r);
	return 0;
}
