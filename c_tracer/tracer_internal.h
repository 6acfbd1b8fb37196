/* Private state of the C tracer, shared by tracer.c and mem.c. */
#ifndef UMLD_TRACER_INTERNAL_H
#define UMLD_TRACER_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "umld_tracer.h"

/* Where a traced thread is, as far as the tracer knows. */
enum thr_state {
    ST_RUNNING = 0, /* resumed (or never stopped) */
    ST_SECCOMP,     /* PTRACE_EVENT_SECCOMP stop, reported as SyscallStop */
    ST_SYSEXIT,     /* syscall-exit-stop, reported as SyscallExit */
    ST_SIGNAL,      /* signal-delivery-stop, reported as SignalStop */
    ST_LISTEN,      /* in group-stop, restarted with PTRACE_LISTEN */
    ST_INTERRUPT,   /* PTRACE_EVENT_STOP asked by umld_interrupt */
    ST_SYSENTRY,    /* syscall-enter-stop (resume mode SYSCALL or SYSEMU) */
    ST_EVENT,       /* PTRACE_EVENT_* stop kept by umld_set_event_stops */
};

/* One traced thread.  Lives in an open-addressing table keyed by tid, so
 * pointers to it are invalidated by any insertion or deletion. */
struct thr {
    pid_t tid;              /* 0: empty slot */
    pid_t tgid;             /* 0: not known yet */
    pid_t creator_tgid;     /* unannounced only: the process that probably
                               created it (from /proc), 0 if unknown */
    uint8_t state;          /* enum thr_state */
    uint8_t arch;           /* UMLD_ARCH_* of the last SyscallStop */
    uint8_t announced;      /* its Cloned (or spawn) has been queued */
    uint8_t seen_alive;     /* we have seen at least one stop of it */
    uint8_t exit_stop;      /* resumed with PTRACE_SYSCALL: a syscall-exit-stop
                               is due, so internal restarts keep PTRACE_SYSCALL */
    uint8_t restore;        /* rewritten: at its exit, put `saved` back */
    uint8_t report_exit;    /* with restore: the caller asked for SyscallExit */
    uint8_t interrupt;      /* umld_interrupt asked; its stop has not come */
    uint8_t initial_parked; /* unannounced, left in its initial stop */
    uint8_t mode;           /* UMLD_MODE_* of its restarts */
    uint8_t held_events;    /* bit e: PTRACE_EVENT e leaves it stopped */
    int errfd;              /* spawn error pipe (read end), -1 if none */
    uint64_t saved[6];      /* the argument registers before a rewrite */
    int64_t since_ms;       /* unannounced only: when first seen (CLOCK_MONOTONIC
                               ms), for the orphan deadline; 0 if not yet */
};

struct umld_tracer {
    pthread_t owner;
    pid_t owner_tid;
    atomic_int wake;
    int closed;
    int mask_checked;
    int registered; /* in the process's list of tracer threads (tracer.c) */
    long pagesize;

    sigset_t waitset; /* SIGCHLD + host signals */
    sigset_t hostset; /* host signals only */
    int n_host;
    uint32_t since_sleep;
    int64_t orphan_due_ms; /* earliest orphan deadline, 0 if none */
    int64_t orphan_ms;     /* the orphan delay (umld_set_orphan_delay) */

    /* traced threads */
    struct thr *tab;
    size_t tab_cap; /* power of two */
    size_t tab_len;

    /* events ready for delivery (ring buffer) */
    struct umld_event *q;
    size_t q_cap, q_head, q_len;

    /* events of threads not yet announced, in arrival order */
    struct umld_event *pk;
    size_t pk_cap, pk_len;

    /* scratch buffer for memory reads */
    char *buf;
    size_t buf_cap;

    uint64_t stats[5];
};

/* Entry check of every API function but umld_wake: ptrace requests only
 * work from the attaching thread, and nothing works after umld_close. */
#define UMLD_ENTER(t)                                                                              \
    do {                                                                                           \
        if (!pthread_equal(pthread_self(), (t)->owner))                                            \
            return -UMLD_ERR_NOT_OWNER;                                                            \
        if ((t)->closed)                                                                           \
            return -EBADF;                                                                         \
    } while (0)

struct thr *umld__thr_find(struct umld_tracer *t, pid_t tid);
int umld__ensure_buf(struct umld_tracer *t, size_t size);

#endif
