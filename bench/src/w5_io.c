/* W5: write a file of SIZE MiB in BLOCK-byte writes, read it back in
 * BLOCK-byte reads, verify, remove it (defaults 64 MiB, 4096 B).
 *
 * No fsync: this measures the syscall path (16384 writes + 16384 reads),
 * not the disk.  Every block carries its own index, and the read side
 * checks it, so a tool that loses or reorders data fails the run instead
 * of being timed.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fill(unsigned char *buf, size_t len, uint64_t block)
{
    uint64_t x = block * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [MiB] [BLOCK]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long mib = argc > 2 ? strtol(argv[2], NULL, 10) : 64;
    long block = argc > 3 ? strtol(argv[3], NULL, 10) : 4096;
    if (mib <= 0 || block <= 0 || block % 8 != 0 || (mib << 20) % block != 0) {
        fprintf(stderr, "bad size/block\n");
        return 2;
    }
    long nblocks = (mib << 20) / block;
    unsigned char *buf = malloc((size_t)block);
    unsigned char *want = malloc((size_t)block);
    if (buf == NULL || want == NULL) {
        perror("malloc");
        return 1;
    }

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror("open for write");
        return 1;
    }
    for (long b = 0; b < nblocks; b++) {
        fill(buf, (size_t)block, (uint64_t)b);
        ssize_t w = write(fd, buf, (size_t)block);
        if (w != block) {
            perror("write");
            return 1;
        }
    }
    if (close(fd) != 0) {
        perror("close");
        return 1;
    }

    fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("open for read");
        return 1;
    }
    for (long b = 0; b < nblocks; b++) {
        ssize_t r = read(fd, buf, (size_t)block);
        if (r != block) {
            fprintf(stderr, "short read at block %ld: %zd\n", b, r);
            return 1;
        }
        fill(want, (size_t)block, (uint64_t)b);
        if (memcmp(buf, want, (size_t)block) != 0) {
            fprintf(stderr, "data mismatch at block %ld\n", b);
            return 1;
        }
    }
    if (read(fd, buf, 1) != 0) {
        fprintf(stderr, "file longer than written\n");
        return 1;
    }
    close(fd);
    if (unlink(path) != 0) {
        perror("unlink");
        return 1;
    }
    printf("wrote and read back %ld MiB in %ld-byte blocks\n", mib, block);
    return 0;
}
