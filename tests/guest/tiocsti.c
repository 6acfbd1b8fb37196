/* Types TEXT into the terminal on stdin with TIOCSTI (ioctl_tty(2), "Faking
 * input"), one byte at a time, as an attacker in a sandbox would to have the
 * caller's shell run it once the sandbox exits.  Writes "ok" or "errno=N"
 * (of the first refusal) to RESULT.
 *
 *   tiocsti TEXT RESULT
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int err = 0;
	for (const char *p = argv[1]; *p && !err; p++)
		if (ioctl(0, TIOCSTI, p) < 0)
			err = errno;
	FILE *f = fopen(argv[2], "w");
	if (!f)
		return 2;
	if (err)
		fprintf(f, "errno=%d\n", err);
	else
		fprintf(f, "ok\n");
	return fclose(f) ? 2 : 0;
}
