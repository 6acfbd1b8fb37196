/* A 32-bit guest (built with -m32) for the i386 ABI tests of
 * tests/tracer/test_platform.py: its calls go through the i386 entry, the
 * way a 32-bit program's do, and it prints what they returned.
 *
 *   getpid   getpid with six recognisable arguments (ebx..ebp =
 *            0x1111..0x6666); prints "getpid=<ret>"
 *   close    close(-1); prints "close=<ret> errno=<e>"
 *   uname    prints "uname=<nodename> <machine>" (uname(2): i386 newuname)
 *   olduname, oldolduname
 *            the same through the old i386 calls 109 and 59 (5 fields of
 *            65, and of 9 bytes)
 *   nproc    prints "nproc=<CPUs in sched_getaffinity(2)>"
 *   clock    stime(2), settimeofday(2) and clock_settime64 with the time it
 *            is (changes nothing when allowed); prints "clock=<e1>,<e2>,<e3>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static int err_of(long r)
{
	return r < 0 ? errno : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "getpid")) {
			long r = syscall(SYS_getpid, 0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666);
			printf("getpid=%ld\n", r);
		} else if (!strcmp(argv[i], "close")) {
			errno = 0;
			long r = syscall(SYS_close, -1);
			printf("close=%ld errno=%d\n", r, errno);
		} else if (!strcmp(argv[i], "uname")) {
			struct utsname u;
			uname(&u);
			printf("uname=%s %s\n", u.nodename, u.machine);
		} else if (!strcmp(argv[i], "olduname")) {
			char u[5][65];
			memset(u, 0, sizeof u);
			long r = syscall(109, u);
			printf("olduname=%ld %s %s\n", r, u[1], u[4]);
		} else if (!strcmp(argv[i], "oldolduname")) {
			char u[5][9];
			memset(u, 0, sizeof u);
			long r = syscall(59, u);
			printf("oldolduname=%ld %s %s\n", r, u[1], u[4]);
		} else if (!strcmp(argv[i], "nproc")) {
			cpu_set_t set;
			CPU_ZERO(&set);
			sched_getaffinity(0, sizeof set, &set);
			printf("nproc=%d\n", CPU_COUNT(&set));
		} else if (!strcmp(argv[i], "clock")) {
			int32_t now = (int32_t)time(NULL);
			struct timeval tv;
			gettimeofday(&tv, NULL);
			struct timespec ts64[1];
			clock_gettime(CLOCK_REALTIME, ts64);
			struct {
				int64_t sec, nsec;
			} t64 = {ts64[0].tv_sec, ts64[0].tv_nsec};
			int e1 = err_of(syscall(25, &now)); /* stime */
			int e2 = err_of(settimeofday(&tv, NULL));
			int e3 = err_of(syscall(404, CLOCK_REALTIME, &t64)); /* clock_settime64 */
			printf("clock=%d,%d,%d\n", e1, e2, e3);
		} else {
			fprintf(stderr, "abi32: unknown %s\n", argv[i]);
			return 2;
		}
	}
	return 0;
}
