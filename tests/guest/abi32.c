/* A 32-bit guest (built with -m32) for the i386 ABI tests of
 * tests/tracer/test_platform.py: its calls go through the i386 entry, the
 * way a 32-bit program's do, and it prints what they returned.
 *
 *   getpid   getpid with six recognisable arguments (ebx..ebp =
 *            0x1111..0x6666); prints "getpid=<ret>"
 *   close    close(-1); prints "close=<ret> errno=<e>"
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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
		} else {
			fprintf(stderr, "abi32: unknown %s\n", argv[i]);
			return 2;
		}
	}
	return 0;
}
