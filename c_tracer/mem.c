/*
 * Guest memory access: process_vm_readv(2) / process_vm_writev(2), with
 * /proc/PID/mem as the fallback for writes to read-only mappings (the
 * kernel writes there with FOLL_FORCE for a ptrace-attached caller, as a
 * debugger planting a breakpoint in .text would).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <cpuid.h>
#include <unistd.h>

#include "tracer_internal.h"

#define MAX_IOV 64 /* remote pieces per call, well under IOV_MAX */

int umld__ensure_buf(struct umld_tracer *t, size_t size)
{
    if (size <= t->buf_cap)
        return 0;
    size_t ncap = t->buf_cap ? t->buf_cap : 4096;
    while (ncap < size)
        ncap *= 2;
    char *nb = realloc(t->buf, ncap);
    if (!nb)
        return -ENOMEM;
    t->buf = nb;
    t->buf_cap = ncap;
    return 0;
}

/* Copy between local `buf` and remote [addr, addr+size), splitting the
 * remote side at page boundaries: process_vm_readv(2) stops at the first
 * piece it cannot access and reports what it moved, so a transfer that
 * runs into an unmapped page still yields every byte before it.  Returns
 * the bytes moved, or -errno if none. */
static long vm_xfer(struct umld_tracer *t, pid_t tid, uint64_t addr, char *buf, size_t size,
                    int write)
{
    size_t done = 0;
    uint64_t pmask = (uint64_t)t->pagesize - 1;
    while (done < size) {
        struct iovec local = {buf + done, 0}, remote[MAX_IOV];
        int n = 0;
        uint64_t a = addr + done;
        size_t left = size - done;
        while (n < MAX_IOV && left > 0) {
            size_t piece = (size_t)((pmask + 1) - (a & pmask));
            if (piece > left)
                piece = left;
            remote[n].iov_base = (void *)(uintptr_t)a;
            remote[n].iov_len = piece;
            local.iov_len += piece;
            a += piece;
            left -= piece;
            n++;
        }
        ssize_t got = write ? process_vm_writev(tid, &local, 1, remote, (unsigned long)n, 0)
                            : process_vm_readv(tid, &local, 1, remote, (unsigned long)n, 0);
        if (got < 0) {
            if (done)
                break;
            return -errno;
        }
        done += (size_t)got;
        if ((size_t)got < local.iov_len)
            break;
    }
    return (long)done;
}

long umld_read_mem(struct umld_tracer *t, int tid, uint64_t addr, size_t size, const char **out)
{
    UMLD_ENTER(t);
    int rc = umld__ensure_buf(t, size ? size : 1);
    if (rc < 0)
        return rc;
    *out = t->buf;
    if (size == 0)
        return 0;
    long n = vm_xfer(t, tid, addr, t->buf, size, 0);
    if (n == 0)
        return -EFAULT;
    return n;
}

/* pwrite through /proc/<tid>/mem: reaches read-only mappings. */
static int proc_mem_write(pid_t tid, uint64_t addr, const char *data, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)tid);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    size_t done = 0;
    int rc = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)(addr + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -EFAULT; /* EIO from /proc/PID/mem means unmapped */
            break;
        }
        done += (size_t)n;
    }
    close(fd);
    return rc;
}

/* FORCE: as a debugger writes (ptrace(2) POKETEXT: FOLL_FORCE), through
 * read-only mappings.  Otherwise as the kernel's copy_to_user does for a
 * syscall's result: unmapped, read-only and PROT_NONE pages fail with
 * EFAULT, after the bytes before them are written. */
int umld_write_mem(struct umld_tracer *t, int tid, uint64_t addr, const char *data, size_t size,
                   int force)
{
    UMLD_ENTER(t);
    if (size == 0)
        return 0;
    long n = vm_xfer(t, tid, addr, (char *)(uintptr_t)data, size, 1);
    if (n < 0 && n != -EFAULT)
        return (int)n;
    if (n < 0)
        n = 0;
    if ((size_t)n == size)
        return 0;
    if (!force)
        return -EFAULT;
    /* EFAULT or a short write: maybe a read-only page. */
    return proc_mem_write(tid, addr + (uint64_t)n, data + n, size - (size_t)n);
}

long umld_read_string(struct umld_tracer *t, int tid, uint64_t addr, size_t limit, const char **out)
{
    /* Read page by page (never across a boundary in one piece, so an
     * unmapped page after the NUL does not matter), stopping at the NUL.
     * A string of `limit` bytes needs limit + 1 for its NUL. */
    UMLD_ENTER(t);
    size_t got = 0, want = limit + 1;
    uint64_t pmask = (uint64_t)t->pagesize - 1;
    if (want == 0) /* limit == SIZE_MAX */
        want = limit;
    while (got < want) {
        uint64_t a = addr + got;
        size_t chunk = (size_t)((pmask + 1) - (a & pmask));
        if (chunk > want - got)
            chunk = want - got;
        /* Grown as the string turns out longer, not to `limit` up front. */
        int rc = umld__ensure_buf(t, got + chunk);
        if (rc < 0)
            return rc;
        *out = t->buf;
        struct iovec local = {t->buf + got, chunk};
        struct iovec remote = {(void *)(uintptr_t)a, chunk};
        ssize_t n = process_vm_readv(tid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            return n < 0 && errno == ESRCH ? -ESRCH : -EFAULT;
        char *z = memchr(t->buf + got, 0, (size_t)n);
        if (z)
            return (long)(z - t->buf);
        got += (size_t)n;
        if ((size_t)n < chunk)
            return -EFAULT;
    }
    return -ENAMETOOLONG;
}

void umld_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out4)
{
    unsigned int a, b, c, d;

    /* __cpuid_count (GCC's and clang's cpuid.h) runs CPUID with eax and
     * ecx set, without checking the maximum leaf: a leaf above it gives
     * what the CPU gives (the highest basic leaf's data on Intel). */
    __cpuid_count(leaf, subleaf, a, b, c, d);
    out4[0] = a;
    out4[1] = b;
    out4[2] = c;
    out4[3] = d;
}
