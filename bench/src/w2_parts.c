/* W2's parts, one at a time: the cost of each call W2 makes, in
 * microseconds per call (N calls each, default 200000).
 *
 *     bench/out/w2_parts FILE [N]
 *
 * Not a workload of the bench's table: run it natively and under a tool to
 * see where a W2 ratio comes from (for umld's copy-on-write root, the
 * overlay's open of a lower file, which opens a second "backing" file on
 * the lower file system for every open(2), and its stat). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void report(const char *what, double t0, long n)
{
    printf("%-18s %6.2f us\n", what, (now() - t0) / (double)n * 1e6);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [N]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 200000;
    struct stat st;
    double t0 = now();
    for (long i = 0; i < n; i++)
        if (stat(path, &st) != 0)
            return perror("stat"), 1;
    report("stat", t0, n);
    t0 = now();
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            return perror("open"), 1;
        close(fd);
    }
    report("open+close", t0, n);
    t0 = now();
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_PATH);
        if (fd < 0)
            return perror("open O_PATH"), 1;
        close(fd);
    }
    report("open O_PATH+close", t0, n);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return perror("open"), 1;
    t0 = now();
    for (long i = 0; i < n; i++)
        fstat(fd, &st);
    report("fstat", t0, n);
    close(fd);
    return 0;
}
