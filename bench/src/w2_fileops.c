/* W2: N x (open, fstat, close, stat) of one existing file (default 20000).
 *
 * A path-resolving workload: every open and stat walks a path, which is
 * exactly what a guest kernel with its own VFS has to intercept.  The file
 * size is printed so that a tool returning wrong metadata is caught by the
 * bench's stdout comparison, not only by a crash.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [N]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    struct stat st_fd, st_path;
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            perror("open");
            return 1;
        }
        if (fstat(fd, &st_fd) != 0) {
            perror("fstat");
            return 1;
        }
        if (close(fd) != 0) {
            perror("close");
            return 1;
        }
        if (stat(path, &st_path) != 0) {
            perror("stat");
            return 1;
        }
        if (st_fd.st_size != st_path.st_size || st_fd.st_ino != st_path.st_ino) {
            fprintf(stderr, "fstat and stat disagree\n");
            return 1;
        }
    }
    printf("open/fstat/close/stat x %ld, size %lld\n", n, (long long)st_path.st_size);
    return 0;
}
