/*
 * umld C tracer core: spawning, the wait loop and the answers to stops.
 *
 * References (all man-pages 6.x): ptrace(2) -- in particular "Group-stop",
 * "PTRACE_EVENT stops", "execve(2) under ptrace", "PTRACE_EVENT_SECCOMP
 * stops (since Linux 4.8)" --, seccomp(2) (SECCOMP_RET_TRACE), wait(2),
 * sigtimedwait(2), process_vm_readv(2) (mem.c).
 *
 * Every ptrace request must come from the thread that attached (ptrace(2):
 * "the tracee is attached to a thread"), hence the owner thread recorded in
 * umld_tracer_new.  Only umld_wake may run elsewhere.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tracer_internal.h"

/* The options every tracee is seized with (ptrace(2), PTRACE_SETOPTIONS). */
#define SEIZE_OPTIONS                                                                              \
    (PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE |      \
     PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL)

#ifndef __WALL
#define __WALL 0x40000000
#endif
#ifndef __WNOTHREAD
#define __WNOTHREAD 0x20000000
#endif
#define X32_SYSCALL_BIT 0x40000000UL

extern char **environ;

/* How long a thread may stay unannounced before we stop waiting for its
 * creator's PTRACE_EVENT_FORK/CLONE (see adopt_orphans), unless
 * umld_set_orphan_delay says otherwise; the same default as the Python
 * side's ORPHAN_DELAY (umld/tracer/platform.py, "Orphans"). */
#define UMLD_ORPHAN_MS 2000

#define OFF_ORIG_RAX offsetof(struct user, regs.orig_rax)
#define OFF_RAX offsetof(struct user, regs.rax)

/* ------------------------------------------------------------------------
 * Thread table: open addressing, linear probing, backward-shift deletion.
 * ------------------------------------------------------------------------ */

static inline size_t slot_of(pid_t tid, size_t mask)
{
    return ((uint32_t)tid * 2654435761u) & mask;
}

struct thr *umld__thr_find(struct umld_tracer *t, pid_t tid)
{
    size_t mask = t->tab_cap - 1;
    for (size_t i = slot_of(tid, mask);; i = (i + 1) & mask) {
        if (t->tab[i].tid == tid)
            return &t->tab[i];
        if (t->tab[i].tid == 0)
            return NULL;
    }
}

static int tab_grow(struct umld_tracer *t)
{
    size_t ncap = t->tab_cap * 2;
    struct thr *nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return -ENOMEM;
    for (size_t i = 0; i < t->tab_cap; i++) {
        if (t->tab[i].tid == 0)
            continue;
        size_t j = slot_of(t->tab[i].tid, ncap - 1);
        while (nt[j].tid != 0)
            j = (j + 1) & (ncap - 1);
        nt[j] = t->tab[i];
    }
    free(t->tab);
    t->tab = nt;
    t->tab_cap = ncap;
    return 0;
}

/* The record of `tid`, created (not announced) if absent; NULL on ENOMEM. */
static struct thr *thr_get(struct umld_tracer *t, pid_t tid)
{
    struct thr *r = umld__thr_find(t, tid);
    if (r)
        return r;
    if ((t->tab_len + 1) * 2 > t->tab_cap && tab_grow(t) < 0)
        return NULL;
    size_t mask = t->tab_cap - 1;
    size_t i = slot_of(tid, mask);
    while (t->tab[i].tid != 0)
        i = (i + 1) & mask;
    r = &t->tab[i];
    memset(r, 0, sizeof *r);
    r->tid = tid;
    r->errfd = -1;
    t->tab_len++;
    return r;
}

static void thr_del(struct umld_tracer *t, pid_t tid)
{
    struct thr *r = umld__thr_find(t, tid);
    if (!r)
        return;
    if (r->errfd >= 0)
        close(r->errfd);
    size_t mask = t->tab_cap - 1;
    size_t i = (size_t)(r - t->tab);
    t->tab[i].tid = 0;
    t->tab_len--;
    /* Backward shift: move later members of the probe run into the hole
     * unless their home slot lies cyclically in (hole, j]. */
    for (size_t j = (i + 1) & mask; t->tab[j].tid != 0; j = (j + 1) & mask) {
        size_t k = slot_of(t->tab[j].tid, mask);
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        t->tab[i] = t->tab[j];
        t->tab[j].tid = 0;
        i = j;
    }
}

/* ------------------------------------------------------------------------
 * Event queues.
 * ------------------------------------------------------------------------ */

static inline void ev_init(struct umld_event *ev, int kind, pid_t tid)
{
    memset(ev, 0, sizeof *ev);
    ev->kind = kind;
    ev->tid = tid;
}

static int q_push(struct umld_tracer *t, const struct umld_event *ev)
{
    if (t->q_len == t->q_cap) {
        size_t ncap = t->q_cap ? t->q_cap * 2 : 64;
        struct umld_event *nq = malloc(ncap * sizeof *nq);
        if (!nq)
            return -ENOMEM;
        for (size_t i = 0; i < t->q_len; i++)
            nq[i] = t->q[(t->q_head + i) % t->q_cap];
        free(t->q);
        t->q = nq;
        t->q_cap = ncap;
        t->q_head = 0;
    }
    t->q[(t->q_head + t->q_len) % t->q_cap] = *ev;
    t->q_len++;
    return 0;
}

static int pk_push(struct umld_tracer *t, const struct umld_event *ev)
{
    if (t->pk_len == t->pk_cap) {
        size_t ncap = t->pk_cap ? t->pk_cap * 2 : 16;
        struct umld_event *np = realloc(t->pk, ncap * sizeof *np);
        if (!np)
            return -ENOMEM;
        t->pk = np;
        t->pk_cap = ncap;
    }
    t->pk[t->pk_len++] = *ev;
    t->stats[2]++;
    return 0;
}

static void pk_remove(struct umld_tracer *t, size_t i)
{
    memmove(&t->pk[i], &t->pk[i + 1], (t->pk_len - i - 1) * sizeof *t->pk);
    t->pk_len--;
}

/* ------------------------------------------------------------------------
 * Small /proc helpers (only on rare paths).
 * ------------------------------------------------------------------------ */

/* Tgid and PPid of `tid` from /proc/<tid>/status; -errno if unreadable. */
static int proc_ids(pid_t tid, pid_t *tgid, pid_t *ppid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    const char *p = strstr(buf, "\nTgid:");
    const char *q = strstr(buf, "\nPPid:");
    if (!p || !q)
        return -EIO;
    *tgid = (pid_t)strtol(p + 6, NULL, 10);
    *ppid = (pid_t)strtol(q + 6, NULL, 10);
    return 0;
}

/* True when `tid` names a live (not zombie, not dead) task right now. */
static int proc_alive(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The state follows the last ')' (the command name may contain one). */
    const char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 0;
    return p[2] != 'Z' && p[2] != 'X' && p[2] != 'x';
}

static pid_t tgid_of(struct thr *r)
{
    if (r->tgid == 0) {
        pid_t tg, pp;
        if (proc_ids(r->tid, &tg, &pp) == 0)
            r->tgid = tg;
    }
    return r->tgid ? r->tgid : r->tid;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------
 * The tracer threads of this process.  SIGCHLD is sent to the whole
 * process (signal(7)): when the owner thread of one tracer is not in
 * sigtimedwait at that moment, the kernel may hand the signal to another
 * tracer's thread that is, and the first one sleeps on with a stop to
 * report.  So every SIGCHLD the kernel sends (si_code CLD_*, > 0) is passed
 * on to the other tracer threads; those forwards (SI_TKILL, < 0) are not
 * passed on again.  C tracers register here themselves; the Python backend
 * registers its tracers' threads and forwards through the same list
 * (umld_threads_*), so that the two backends pass SIGCHLDs to each other.
 * ------------------------------------------------------------------------ */

#define MAX_TRACER_THREADS 64
static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t thread_tids[MAX_TRACER_THREADS]; /* one entry per tracer; 0: free */
static int n_thread_tids;

int umld_threads_add(int tid)
{
    int rc = -ENOSPC;
    pthread_mutex_lock(&threads_lock);
    for (int i = 0; i < MAX_TRACER_THREADS; i++)
        if (thread_tids[i] == 0) {
            thread_tids[i] = tid;
            n_thread_tids++;
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&threads_lock);
    return rc;
}

void umld_threads_remove(int tid)
{
    pthread_mutex_lock(&threads_lock);
    for (int i = 0; i < MAX_TRACER_THREADS; i++)
        if (thread_tids[i] == tid) {
            thread_tids[i] = 0;
            n_thread_tids--;
            break;
        }
    pthread_mutex_unlock(&threads_lock);
}

void umld_threads_forward(int from_tid)
{
    pid_t me = getpid();
    pthread_mutex_lock(&threads_lock);
    for (int i = 0; n_thread_tids > 1 && i < MAX_TRACER_THREADS; i++)
        if (thread_tids[i] != 0 && thread_tids[i] != from_tid)
            syscall(SYS_tgkill, me, thread_tids[i], SIGCHLD);
    pthread_mutex_unlock(&threads_lock);
}

static void forward_sigchld(struct umld_tracer *t, const siginfo_t *si)
{
    if (si->si_code > 0) /* not a forward, not umld_wake */
        umld_threads_forward(t->owner_tid);
}

/* Start the orphan clock of an unannounced thread. */
static void note_unannounced(struct umld_tracer *t, struct thr *r)
{
    if (r->since_ms)
        return;
    r->since_ms = now_ms();
    int64_t due = r->since_ms + t->orphan_ms;
    if (!t->orphan_due_ms || due < t->orphan_due_ms)
        t->orphan_due_ms = due;
}

/* ------------------------------------------------------------------------
 * Emission with the ordering guarantee (events.py): an event of a thread
 * whose Cloned has not been queued yet is parked, and released right after
 * that Cloned.
 * ------------------------------------------------------------------------ */

static int emit(struct umld_tracer *t, const struct umld_event *ev);

/* A parked Exited followed by later events of the same tid, or one whose
 * tid is alive again now, belongs to an earlier thread with that tid (one
 * whose creator died before reporting it): drop it and what preceded it. */
static void drop_stale_exits(struct umld_tracer *t, pid_t tid)
{
    ssize_t last_exit = -1;
    size_t after = 0;
    for (size_t i = 0; i < t->pk_len; i++) {
        if (t->pk[i].tid != tid)
            continue;
        if (t->pk[i].kind == UMLD_EV_EXITED) {
            last_exit = (ssize_t)i;
            after = 0;
        } else {
            after++;
        }
    }
    if (last_exit < 0)
        return;
    if (after == 0 && !proc_alive(tid))
        return; /* an ordinary quick death: keep it */
    for (size_t i = 0; i <= (size_t)last_exit;) {
        if (t->pk[i].tid == tid) {
            pk_remove(t, i);
            last_exit--;
        } else {
            i++;
        }
    }
}

static void restart(struct umld_tracer *t, pid_t tid);

static int announce(struct umld_tracer *t, pid_t child)
{
    struct thr *c = thr_get(t, child);
    if (!c)
        return -ENOMEM;
    c->announced = 1;
    if (c->initial_parked) {
        /* Its initial stop came first: report it as the interrupt its
         * creator's follower asked for, or let it go. */
        c->initial_parked = 0;
        if (c->interrupt) {
            c->interrupt = 0;
            c->state = ST_INTERRUPT;
            struct umld_event iev;
            ev_init(&iev, UMLD_EV_INTERRUPTED, child);
            int rc = q_push(t, &iev);
            if (rc < 0)
                return rc;
        } else {
            restart(t, child);
        }
        c = umld__thr_find(t, child);
        if (!c)
            return 0;
    }
    if (t->pk_len == 0)
        return 0;
    drop_stale_exits(t, child);
    for (;;) {
        size_t i;
        for (i = 0; i < t->pk_len && t->pk[i].tid != child; i++)
            ;
        if (i == t->pk_len)
            return 0;
        struct umld_event ev = t->pk[i];
        pk_remove(t, i);
        int rc = emit(t, &ev);
        if (rc < 0)
            return rc;
        if (ev.kind == UMLD_EV_EXITED)
            return 0;
    }
}

/* The thread group of `x` is about to lose its last announced thread.
 * Threads that it created but whose Cloned was lost (the creator was killed
 * in its PTRACE_EVENT_FORK/CLONE stop before we collected it) would stay
 * parked -- and stopped -- forever; announce them as its children now. */
static int sweep_orphans(struct umld_tracer *t, pid_t x)
{
    struct thr *xr = umld__thr_find(t, x);
    if (!xr)
        return 0;
    pid_t g = tgid_of(xr);
    pid_t cand[64];
    size_t n = 0;
    for (size_t i = 0; i < t->tab_cap; i++) {
        struct thr *r = &t->tab[i];
        if (r->tid == 0 || r->tid == x)
            continue;
        if (r->announced && r->tgid == g)
            return 0; /* the group lives on; the event may still come */
        if (!r->announced && r->seen_alive && r->creator_tgid == g && n < 64)
            cand[n++] = r->tid;
    }
    for (size_t k = 0; k < n; k++) {
        struct thr *r = umld__thr_find(t, cand[k]);
        if (!r || r->announced)
            continue;
        struct umld_event ev;
        ev_init(&ev, UMLD_EV_CLONED, x);
        ev.child = cand[k];
        ev.clone_kind = (r->tgid == g) ? UMLD_CLONE_THREAD : UMLD_CLONE_FORK;
        int rc = emit(t, &ev);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int emit(struct umld_tracer *t, const struct umld_event *ev)
{
    struct thr *r = umld__thr_find(t, ev->tid);
    if (!r || !r->announced) {
        if (!r && !(r = thr_get(t, ev->tid)))
            return -ENOMEM;
        note_unannounced(t, r);
        return pk_push(t, ev);
    }
    if (ev->kind == UMLD_EV_EXITED) {
        if (t->pk_len) {
            int rc = sweep_orphans(t, ev->tid);
            if (rc < 0)
                return rc;
        }
        thr_del(t, ev->tid);
        return q_push(t, ev);
    }
    int rc = q_push(t, ev);
    if (rc == 0 && ev->kind == UMLD_EV_CLONED)
        rc = announce(t, ev->child);
    return rc;
}

static void drop_parked(struct umld_tracer *t, pid_t tid)
{
    for (size_t i = 0; i < t->pk_len;) {
        if (t->pk[i].tid == tid)
            pk_remove(t, i);
        else
            i++;
    }
}

static int has_parked_exit(struct umld_tracer *t, pid_t tid)
{
    for (size_t i = 0; i < t->pk_len; i++)
        if (t->pk[i].tid == tid && t->pk[i].kind == UMLD_EV_EXITED)
            return 1;
    return 0;
}

/* An announced thread of thread group `tg` (its leader if announced), or 0. */
static pid_t announced_in_group(struct umld_tracer *t, pid_t tg)
{
    struct thr *q = umld__thr_find(t, tg);
    if (q && q->announced)
        return tg;
    for (size_t i = 0; i < t->tab_cap; i++) {
        q = &t->tab[i];
        if (q->tid != 0 && q->announced && q->tgid == tg)
            return q->tid;
    }
    return 0;
}

/* The orphan rule (umld/tracer/platform.py, "Orphans") for one thread
 * unannounced for the orphan delay: its creator died in its fork/clone
 * event stop (a SIGKILL there discards the stop, so the event never comes)
 * or the child was created in a way we could not attribute.  A dead one is
 * forgotten (the core never knew it).  A live one is announced as a child
 * of an announced thread of its group (a thread) or of its current parent
 * -- the reaper it was re-parented to, as natively -- when we trace that;
 * otherwise it has nobody in the guest to belong to and is killed. */
static int adopt_one(struct umld_tracer *t, pid_t tid)
{
    struct thr *r = umld__thr_find(t, tid);
    if (!r || r->announced)
        return 0;
    if (has_parked_exit(t, tid)) {
        drop_parked(t, tid);
        thr_del(t, tid);
        return 0;
    }
    pid_t tg, pp;
    struct thr *q;
    struct umld_event ev;
    if (proc_ids(tid, &tg, &pp) == 0) {
        ev_init(&ev, UMLD_EV_CLONED, 0);
        ev.child = tid;
        if (tg != tid) {
            ev.tid = announced_in_group(t, tg);
            ev.clone_kind = UMLD_CLONE_THREAD;
        } else if ((q = umld__thr_find(t, pp)) && q->announced) {
            ev.tid = pp;
            ev.clone_kind = UMLD_CLONE_FORK;
        }
        if (ev.tid) {
            r = umld__thr_find(t, tid);
            r->tgid = tg;
            return emit(t, &ev);
        }
        kill(tid, SIGKILL); /* a thread takes its (unknown) group with it */
    }
    /* Dying: give its exit status time to arrive, then forget it. */
    r = umld__thr_find(t, tid);
    if (r) {
        r->since_ms = 0;
        note_unannounced(t, r);
    }
    return 0;
}

/* Apply the orphan rule to every thread whose delay is over: processes
 * first, so that a thread of an orphan process finds its group announced
 * (or announced by the process's own held-back Cloned events). */
static int adopt_orphans(struct umld_tracer *t)
{
    int64_t now = now_ms(), next = 0;
    pid_t due[64];
    size_t n = 0, n_procs = 0;
    for (size_t i = 0; i < t->tab_cap; i++) {
        struct thr *r = &t->tab[i];
        if (r->tid == 0 || r->announced || !r->since_ms)
            continue;
        if (r->since_ms + t->orphan_ms <= now && n < 64) {
            due[n++] = r->tid;
            if (r->tgid == 0 || r->tgid == r->tid) {
                pid_t first = due[n_procs];
                due[n_procs++] = r->tid;
                due[n - 1] = first;
            }
        } else {
            int64_t d = r->since_ms + t->orphan_ms;
            if (!next || d < next)
                next = d;
        }
    }
    t->orphan_due_ms = next;
    for (size_t k = 0; k < n; k++) {
        int rc = adopt_one(t, due[k]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Creation and teardown.
 * ------------------------------------------------------------------------ */

struct umld_tracer *umld_tracer_new(void)
{
    struct umld_tracer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->tab_cap = 64;
    t->tab = calloc(t->tab_cap, sizeof *t->tab);
    if (!t->tab) {
        free(t);
        errno = ENOMEM;
        return NULL;
    }
    t->owner = pthread_self();
    t->owner_tid = (pid_t)syscall(SYS_gettid);
    atomic_init(&t->wake, 0);
    t->pagesize = sysconf(_SC_PAGESIZE);
    if (t->pagesize <= 0)
        t->pagesize = 4096;
    sigemptyset(&t->waitset);
    sigemptyset(&t->hostset);
    sigaddset(&t->waitset, SIGCHLD);
    t->orphan_ms = UMLD_ORPHAN_MS;
    t->registered = umld_threads_add(t->owner_tid) == 0;
    return t;
}

int umld_set_orphan_delay(struct umld_tracer *t, int ms)
{
    UMLD_ENTER(t);
    if (ms < 0)
        return -EINVAL;
    t->orphan_ms = ms;
    /* Deadlines already set used the old delay: the next wait looks at
     * every unannounced thread again (adopt_orphans recomputes them). */
    for (size_t i = 0; i < t->tab_cap; i++)
        if (t->tab[i].tid != 0 && !t->tab[i].announced && t->tab[i].since_ms) {
            t->orphan_due_ms = now_ms();
            break;
        }
    return 0;
}

void umld_tracer_free(struct umld_tracer *t)
{
    if (!t)
        return;
    if (t->registered)
        umld_threads_remove(t->owner_tid);
    for (size_t i = 0; i < t->tab_cap; i++)
        if (t->tab[i].tid != 0 && t->tab[i].errfd >= 0)
            close(t->tab[i].errfd);
    free(t->tab);
    free(t->q);
    free(t->pk);
    free(t->buf);
    free(t);
}

int umld_set_host_signals(struct umld_tracer *t, const int *signals, int n)
{
    UMLD_ENTER(t);
    sigset_t ws, hs;
    sigemptyset(&ws);
    sigemptyset(&hs);
    sigaddset(&ws, SIGCHLD);
    for (int i = 0; i < n; i++) {
        if (signals[i] <= 0 || signals[i] >= NSIG || signals[i] == SIGKILL ||
            signals[i] == SIGSTOP || signals[i] == SIGCHLD)
            return -EINVAL;
        sigaddset(&ws, signals[i]);
        sigaddset(&hs, signals[i]);
    }
    t->waitset = ws;
    t->hostset = hs;
    t->n_host = n;
    t->mask_checked = 0;
    return 0;
}

void umld_stats(struct umld_tracer *t, uint64_t *out5)
{
    memcpy(out5, t->stats, sizeof t->stats);
}

/* ------------------------------------------------------------------------
 * Spawn.
 * ------------------------------------------------------------------------ */

/* Report (stage, errno) to the parent and die.  Runs in the forked child:
 * async-signal-safe calls only from here to execve. */
static void __attribute__((noreturn)) child_fail(int fd, int stage, int err)
{
    int msg[2] = {stage, err};
    ssize_t n = write(fd, msg, sizeof msg);
    (void)n;
    _exit(127);
}

static void __attribute__((noreturn))
child_main(int go_fd, int err_fd, pid_t parent, const char *path, char **argv, char **envp,
           const char *cwd, const void *filter, size_t filter_len, int flags, int tty_fd,
           const int *reset_signals, int n_reset, uint64_t sigmask)
{
    /* All signals are blocked (the parent blocked them around fork), so no
     * inherited handler can run before exec. */
    char c;
    ssize_t n;
    do
        n = read(go_fd, &c, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(127); /* the tracer went away before attaching */
    close(go_fd);

    /* A new session detaches from the caller's controlling terminal
     * (setsid(2)); it is also a new process group. */
    if (flags & UMLD_SPAWN_NEW_SESSION) {
        if (setsid() < 0)
            child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    } else if ((flags & UMLD_SPAWN_NEW_PGRP) && setpgid(0, 0) < 0) {
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    }
    /* tcsetpgrp from a background group raises SIGTTOU unless it is blocked
     * or ignored (tcsetpgrp(3)); it is blocked here. */
    if (tty_fd >= 0 && tcsetpgrp(tty_fd, getpgrp()) < 0)
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    if ((flags & UMLD_SPAWN_SUBREAPER) && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    /* PR_SET_PDEATHSIG fires when the thread that forked us exits -- the
     * tracer thread.  EXITKILL covers the same case once attached; this is
     * belt and braces.  Check for the race where it already happened. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    if (getppid() != parent)
        _exit(127);

    /* Handlers inherited from umld must not run between now and exec. */
    for (int s = 1; s < NSIG; s++) {
        struct sigaction sa;
        if (s == SIGKILL || s == SIGSTOP || sigaction(s, NULL, &sa) < 0)
            continue;
        if (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN) {
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            sigaction(s, &sa, NULL);
        }
    }
    for (int i = 0; i < n_reset; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        if (sigaction(reset_signals[i], &sa, NULL) < 0)
            child_fail(err_fd, UMLD_STAGE_SETUP, errno);
    }
    if (cwd && chdir(cwd) < 0)
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);

    /* The mask goes on before the filter so that rt_sigprocmask never
     * stops in the tracer before exec, whatever the filter traps. */
    sigset_t mask;
    sigemptyset(&mask);
    for (int s = 1; s <= 64 && s < NSIG; s++)
        if (sigmask & (1ULL << (s - 1)))
            sigaddset(&mask, s);
    if (sigprocmask(SIG_SETMASK, &mask, NULL) < 0)
        child_fail(err_fd, UMLD_STAGE_SETUP, errno);

    if (filter_len > 0) {
        /* NO_NEW_PRIVS lets an unprivileged process install a filter
         * (seccomp(2)); the kernel would reject a partial instruction with
         * EINVAL, so do the same. */
        if (filter_len % sizeof(struct sock_filter) != 0 ||
            filter_len / sizeof(struct sock_filter) > USHRT_MAX)
            child_fail(err_fd, UMLD_STAGE_SECCOMP, EINVAL);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            child_fail(err_fd, UMLD_STAGE_SECCOMP, errno);
        struct sock_fprog prog = {
            .len = (unsigned short)(filter_len / sizeof(struct sock_filter)),
            .filter = (struct sock_filter *)(uintptr_t)filter,
        };
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
            child_fail(err_fd, UMLD_STAGE_SECCOMP, errno);
    }
    execve(path, argv, envp ? envp : environ);
    child_fail(err_fd, UMLD_STAGE_EXEC, errno);
}

int umld_spawn(struct umld_tracer *t, const char *path, char **argv, char **envp, const char *cwd,
               const void *filter, size_t filter_len, int flags, int tty_fd,
               const int *reset_signals, int n_reset, uint64_t sigmask, int *out_pid)
{
    UMLD_ENTER(t);
    if ((flags & UMLD_SPAWN_NEW_SESSION) && tty_fd >= 0)
        return -EINVAL; /* a new session has no terminal to take */
    /* Make sure the table can take the new pid before anything happens. */
    if ((t->tab_len + 2) * 2 > t->tab_cap && tab_grow(t) < 0)
        return -ENOMEM;
    int go[2], ep[2];
    if (pipe2(go, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(ep, O_CLOEXEC) < 0) {
        int e = errno;
        close(go[0]);
        close(go[1]);
        return -e;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        close(go[1]);
        close(ep[0]);
        child_main(go[0], ep[1], parent, path, argv, envp, cwd, filter, filter_len, flags, tty_fd,
                   reset_signals, n_reset, sigmask);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(go[0]);
    close(ep[1]);
    if (pid < 0) {
        close(go[1]);
        close(ep[0]);
        return -fork_errno;
    }
    /* Both sides set the process group, as shells do, so that it is in
     * place when we return whichever runs first; the child's call is the
     * one that matters if this fails. */
    if ((flags & UMLD_SPAWN_NEW_PGRP) && !(flags & UMLD_SPAWN_NEW_SESSION))
        setpgid(pid, pid); /* (a group leader could not call setsid) */

    long opts = SEIZE_OPTIONS;
    if (ptrace(PTRACE_SEIZE, pid, 0, opts) < 0) {
        int e = errno;
        kill(pid, SIGKILL);
        close(go[1]);
        close(ep[0]);
        int st;
        while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
            ;
        return -e;
    }
    struct thr *r = thr_get(t, pid);
    r->tgid = pid;
    r->announced = 1;
    r->seen_alive = 1;
    r->errfd = ep[0];
    fcntl(ep[0], F_SETFL, O_NONBLOCK);
    ssize_t n;
    do
        n = write(go[1], "g", 1);
    while (n < 0 && errno == EINTR);
    close(go[1]);
    *out_pid = pid;
    return 0;
}

/* ------------------------------------------------------------------------
 * Turning wait statuses into events.
 * ------------------------------------------------------------------------ */

static inline int restart_req(const struct thr *r)
{
    if (r->exit_stop)
        return PTRACE_SYSCALL;
    switch (r->mode) {
    case UMLD_MODE_SYSCALL:
        return PTRACE_SYSCALL;
    case UMLD_MODE_SINGLESTEP:
        return PTRACE_SINGLESTEP;
    case UMLD_MODE_SYSEMU:
        return PTRACE_SYSEMU;
    case UMLD_MODE_SYSEMU_SINGLESTEP:
        return PTRACE_SYSEMU_SINGLESTEP;
    default:
        return PTRACE_CONT;
    }
}

static inline int holds_event(const struct thr *r, int event)
{
    return event > 0 && event < 8 && (r->held_events & (1u << event));
}

/* Leave a thread in its PTRACE_EVENT_* stop and report it. */
static int event_stop(struct umld_tracer *t, pid_t tid, int event, unsigned long msg,
                      struct umld_event *ev)
{
    struct thr *r = umld__thr_find(t, tid);
    if (!r)
        return 0;
    r->state = ST_EVENT;
    ev_init(ev, UMLD_EV_EVENTSTOP, tid);
    ev->signo = event;
    ev->result = (long)msg;
    return emit(t, ev);
}

/* Restart after a stop handled here.  ESRCH (killed meanwhile) is fine:
 * its exit status will follow. */
static void restart(struct umld_tracer *t, pid_t tid)
{
    struct thr *r = umld__thr_find(t, tid);
    int req = r ? restart_req(r) : PTRACE_CONT;
    if (r)
        r->state = ST_RUNNING;
    ptrace(req, tid, 0, 0);
}

/* An x32 call is an x86_64-entry call whose number has bit 30 set; the
 * kernel (and seccomp_data.nr) see the number as an int, so -1 and other
 * negative numbers are out-of-range x86_64 calls, not x32. */
static inline int is_x32(long nr)
{
    return nr >= (long)X32_SYSCALL_BIT && nr < 2 * (long)X32_SYSCALL_BIT;
}

static int on_seccomp(struct umld_tracer *t, struct thr *r, struct umld_event *ev)
{
    struct __ptrace_syscall_info si;
    pid_t tid = r->tid;
    ev_init(ev, UMLD_EV_SYSCALL, tid);
    if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof si, &si) > 0 &&
        si.op == PTRACE_SYSCALL_INFO_SECCOMP) {
        /* One call gives arch, nr and the arguments already taken from the
         * ABI's registers (ebx..ebp for i386). */
        ev->nr = (long)(int32_t)(uint32_t)si.seccomp.nr;
        if (si.arch == AUDIT_ARCH_I386) {
            ev->arch = UMLD_ARCH_I386;
            for (int i = 0; i < 6; i++)
                ev->args[i] = (uint32_t)si.seccomp.args[i];
        } else {
            ev->arch = is_x32(ev->nr) ? UMLD_ARCH_X32 : UMLD_ARCH_X86_64;
            memcpy(ev->args, si.seccomp.args, sizeof ev->args);
        }
    } else {
        /* Kernel before 5.3, or a stop that is not what it looks like:
         * fall back on the registers (cannot tell int 0x80 from syscall in
         * a 64-bit process, but a 32-bit one shows in cs). */
        struct user_regs_struct regs;
        if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
            return errno == ESRCH ? 0 : -errno;
        if (regs.cs == 0x23) {
            ev->arch = UMLD_ARCH_I386;
            uint64_t a[6] = {regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp};
            for (int i = 0; i < 6; i++)
                ev->args[i] = (uint32_t)a[i];
        } else {
            ev->arch = is_x32((int32_t)(uint32_t)regs.orig_rax) ? UMLD_ARCH_X32 : UMLD_ARCH_X86_64;
            uint64_t a[6] = {regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9};
            memcpy(ev->args, a, sizeof a);
        }
        ev->nr = (long)(int32_t)(uint32_t)regs.orig_rax;
    }
    r->state = ST_SECCOMP;
    r->arch = (uint8_t)ev->arch;
    return emit(t, ev);
}

/* A syscall-enter-stop (resume mode SYSCALL or SYSEMU), `si` its
 * PTRACE_GET_SYSCALL_INFO (op ENTRY). */
static int on_sysentry(struct umld_tracer *t, struct thr *r, const struct __ptrace_syscall_info *si,
                       struct umld_event *ev)
{
    ev_init(ev, UMLD_EV_SYSENTRY, r->tid);
    ev->nr = (long)(int32_t)(uint32_t)si->entry.nr;
    if (si->arch == AUDIT_ARCH_I386) {
        ev->arch = UMLD_ARCH_I386;
        for (int i = 0; i < 6; i++)
            ev->args[i] = (uint32_t)si->entry.args[i];
    } else {
        ev->arch = is_x32(ev->nr) ? UMLD_ARCH_X32 : UMLD_ARCH_X86_64;
        memcpy(ev->args, si->entry.args, sizeof ev->args);
    }
    r->state = ST_SYSENTRY;
    r->arch = (uint8_t)ev->arch;
    return emit(t, ev);
}

static int on_sysexit(struct umld_tracer *t, struct thr *r, struct umld_event *ev)
{
    struct user_regs_struct regs;
    pid_t tid = r->tid;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
        return errno == ESRCH ? 0 : -errno;
    if (r->restore) {
        /* The exit of a rewritten call: the guest's argument registers
         * back (a call the kernel restarts then restarts as the guest
         * made it, and stops at its seccomp stop again). */
        unsigned long long *slot64[6] = {&regs.rdi, &regs.rsi, &regs.rdx,
                                         &regs.r10, &regs.r8,  &regs.r9};
        unsigned long long *slot32[6] = {&regs.rbx, &regs.rcx, &regs.rdx,
                                         &regs.rsi, &regs.rdi, &regs.rbp};
        unsigned long long **slot = r->arch == UMLD_ARCH_I386 ? slot32 : slot64;
        for (int i = 0; i < 6; i++)
            *slot[i] = r->saved[i];
        r->restore = 0;
        if (ptrace(PTRACE_SETREGS, tid, 0, &regs) < 0)
            return errno == ESRCH ? 0 : -errno;
        if (!r->report_exit && r->mode != UMLD_MODE_SYSCALL) {
            r->exit_stop = 0;
            r->state = ST_RUNNING;
            if (ptrace(restart_req(r), tid, 0, 0) < 0 && errno != ESRCH)
                return -errno;
            return 0;
        }
    }
    ev_init(ev, UMLD_EV_SYSEXIT, tid);
    ev->arch = r->arch;
    ev->nr = (long)(int32_t)(uint32_t)regs.orig_rax;
    ev->result = r->arch == UMLD_ARCH_I386 ? (long)(int32_t)(uint32_t)regs.rax : (long)regs.rax;
    r->state = ST_SYSEXIT;
    r->exit_stop = 0;
    return emit(t, ev);
}

/* Is `child` (created by a PTRACE_EVENT_CLONE) a thread of `parent`?  The
 * child exists (attached, not reaped) unless it died in between; tgkill
 * with signal 0 succeeds exactly when it is in thread group `ptgid`. */
static int clone_is_thread(pid_t parent, pid_t ptgid, pid_t child)
{
    if (syscall(SYS_tgkill, ptgid, child, 0) == 0)
        return 1;
    if (errno != ESRCH || syscall(SYS_tgkill, child, child, 0) == 0)
        return 0;
    /* Gone already: read the flags the parent passed (it is stopped in the
     * call).  clone(2) has them in rdi (x86_64, x32) or ebx (i386, nr
     * 120); clone3(2) points at struct clone_args, flags first. */
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, parent, 0, &regs) < 0)
        return 0;
    unsigned long nr = regs.orig_rax & ~X32_SYSCALL_BIT;
    uint64_t flags = 0;
    if (nr == 56)
        flags = regs.rdi;
    else if (nr == 120)
        flags = (uint32_t)regs.rbx;
    else if (nr == 435) {
        uint64_t ptr = regs.cs == 0x23 ? (uint32_t)regs.rbx : regs.rdi;
        struct iovec l = {&flags, sizeof flags}, rm = {(void *)(uintptr_t)ptr, sizeof flags};
        if (process_vm_readv(parent, &l, 1, &rm, 1, 0) != sizeof flags)
            return 0;
    }
    return (flags & 0x00010000 /* CLONE_THREAD */) != 0;
}

static int on_clone(struct umld_tracer *t, struct thr *r, int event, struct umld_event *ev)
{
    pid_t tid = r->tid;
    unsigned long msg = 0;
    if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) < 0)
        return 0; /* killed in the stop; its exit follows */
    pid_t child = (pid_t)msg;
    pid_t ptgid = tgid_of(r);
    int kind;
    if (event == PTRACE_EVENT_FORK)
        kind = UMLD_CLONE_FORK;
    else if (event == PTRACE_EVENT_VFORK)
        kind = UMLD_CLONE_VFORK;
    else
        kind = clone_is_thread(tid, ptgid, child) ? UMLD_CLONE_THREAD : UMLD_CLONE_PROCESS;
    int hold = holds_event(r, event);
    struct thr *c = thr_get(t, child); /* invalidates r */
    if (!c)
        return -ENOMEM;
    c->tgid = kind == UMLD_CLONE_THREAD ? ptgid : child;
    if (hold)
        c->interrupt = 1; /* it starts stopped, for the one following it */
    int adopted = c->announced;
    if (!hold)
        restart(t, tid);
    if (!adopted) { /* else announced by adopt_orphans already: say it once */
        ev_init(ev, UMLD_EV_CLONED, tid);
        ev->child = child;
        ev->clone_kind = kind;
        int rc = emit(t, ev);
        if (rc < 0 || !hold)
            return rc;
    }
    return hold ? event_stop(t, tid, event, msg, ev) : 0;
}

static int on_exec(struct umld_tracer *t, struct thr *r, struct umld_event *ev)
{
    pid_t tid = r->tid;
    unsigned long msg = 0;
    pid_t former = tid;
    if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) == 0 && msg != 0)
        former = (pid_t)msg;
    if (former != tid) {
        /* A non-leader thread exec'd and took the leader's tid (ptrace(2),
         * "execve(2) under ptrace").  The old leader vanishes without an
         * exit report; the record of `tid` now describes the execing
         * thread, carrying its pending syscall-exit-stop if any. */
        struct thr *f = umld__thr_find(t, former);
        uint8_t exit_stop = f ? f->exit_stop : 0;
        drop_parked(t, former);
        thr_del(t, former);
        r = umld__thr_find(t, tid);
        if (!r)
            return 0;
        r->exit_stop = exit_stop;
    }
    /* The spawn's own execve succeeded: no spawn error can come anymore. */
    if (r->errfd >= 0) {
        close(r->errfd);
        r->errfd = -1;
    }
    r->tgid = tid;
    int hold = holds_event(r, PTRACE_EVENT_EXEC);
    if (!hold)
        restart(t, tid);
    ev_init(ev, UMLD_EV_EXECED, tid);
    ev->child = former;
    int rc = emit(t, ev);
    if (rc < 0 || !hold)
        return rc;
    return event_stop(t, tid, PTRACE_EVENT_EXEC, (unsigned long)former, ev);
}

static void read_spawn_error(int fd, struct umld_event *ev)
{
    int msg[2];
    ssize_t n;
    do
        n = read(fd, msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof msg) {
        ev->spawn_stage = msg[0];
        ev->spawn_errno = msg[1];
    }
}

static int is_stop_signal(int sig)
{
    return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

static int handle_status(struct umld_tracer *t, pid_t tid, int st)
{
    struct umld_event ev;
    t->stats[0]++;
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
        ev_init(&ev, UMLD_EV_EXITED, tid);
        ev.status = st;
        struct thr *r = umld__thr_find(t, tid);
        if (r && r->errfd >= 0) {
            read_spawn_error(r->errfd, &ev);
            close(r->errfd);
            r->errfd = -1;
        }
        return emit(t, &ev);
    }
    if (!WIFSTOPPED(st))
        return 0;
    int sig = WSTOPSIG(st);
    /* The PTRACE_EVENT_* number sits above the stop signal (ptrace(2):
     * "status>>8 == (SIGTRAP | PTRACE_EVENT_foo << 8)"); shifted as
     * unsigned so no sign comes in, and at most 0xffff: it fits. */
    int event = (int)((unsigned)st >> 16);
    struct thr *r = thr_get(t, tid);
    if (!r)
        return -ENOMEM;
    if (!r->seen_alive && !r->announced) {
        /* First sight of a thread whose creator has not reported it yet:
         * note who probably created it, for sweep_orphans. */
        pid_t tg, pp;
        if (proc_ids(tid, &tg, &pp) == 0) {
            r->tgid = tg;
            r->creator_tgid = tg != tid ? tg : pp;
        }
        note_unannounced(t, r);
    }
    r->seen_alive = 1;

    switch (event) {
    case 0:
        if (sig == (SIGTRAP | 0x80)) {
            if (r->mode == UMLD_MODE_SYSCALL || r->mode == UMLD_MODE_SYSEMU ||
                r->mode == UMLD_MODE_SYSEMU_SINGLESTEP) {
                struct __ptrace_syscall_info si;
                if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof si, &si) > 0 &&
                    si.op == PTRACE_SYSCALL_INFO_ENTRY)
                    return on_sysentry(t, r, &si, &ev);
            }
            return on_sysexit(t, r, &ev);
        }
        /* Under PTRACE_SEIZE group-stops come as PTRACE_EVENT_STOP, so a
         * plain stop is a signal-delivery-stop (ptrace(2), "Group-stop"). */
        r->state = ST_SIGNAL;
        ev_init(&ev, UMLD_EV_SIGNAL, tid);
        ev.signo = sig;
        return emit(t, &ev);
    case PTRACE_EVENT_SECCOMP:
        return on_seccomp(t, r, &ev);
    case PTRACE_EVENT_STOP:
        if (is_stop_signal(sig)) {
            /* Group-stop.  PTRACE_LISTEN keeps it stopped yet lets SIGCONT
             * (or a new stop) wake it into another PTRACE_EVENT_STOP. */
            int was_listening = r->state == ST_LISTEN;
            if (was_listening && r->interrupt && r->announced) {
                /* umld_interrupt of a thread in group-stop: it stays in
                 * this trap, reported, until the caller resumes it (it then
                 * runs, as a tracer's PTRACE_CONT makes it) or listens. */
                r->interrupt = 0;
                r->state = ST_INTERRUPT;
                ev_init(&ev, UMLD_EV_INTERRUPTED, tid);
                ev.signo = sig;
                return emit(t, &ev);
            }
            r->state = ST_LISTEN;
            ptrace(PTRACE_LISTEN, tid, 0, 0);
            if (was_listening)
                return 0; /* re-trap while still stopped */
            ev_init(&ev, UMLD_EV_GROUPSTOP, tid);
            ev.signo = sig;
            return emit(t, &ev);
        }
        /* SIGTRAP: on a listening tracee the group-stop ended (SIGCONT);
         * otherwise the initial stop of an auto-attached child. */
        if (r->state == ST_LISTEN) {
            restart(t, tid);
            /* An interrupt asked during the group-stop was used up by
             * the stop that LISTEN reported: ask again (ptrace(2),
             * PTRACE_INTERRUPT on a listening tracee). */
            if (r->interrupt)
                ptrace(PTRACE_INTERRUPT, tid, 0, 0);
            ev_init(&ev, UMLD_EV_CONTINUED, tid);
            return emit(t, &ev);
        }
        if (!r->announced) {
            /* The initial stop of a child not announced yet: it waits in
             * it, so that whatever follows its creator can follow it from
             * its first instruction (announce() restarts it). */
            r->initial_parked = 1;
            return 0;
        }
        if (r->interrupt) {
            r->interrupt = 0;
            r->state = ST_INTERRUPT;
            ev_init(&ev, UMLD_EV_INTERRUPTED, tid);
            return emit(t, &ev);
        }
        restart(t, tid);
        return 0;
    case PTRACE_EVENT_FORK:
    case PTRACE_EVENT_VFORK:
    case PTRACE_EVENT_CLONE:
        return on_clone(t, r, event, &ev);
    case PTRACE_EVENT_EXEC:
        return on_exec(t, r, &ev);
    default:
        /* VFORK_DONE and EXIT, when umld_set_event_stops asked. */
        if (holds_event(r, event) && r->announced) {
            unsigned long msg = 0;
            ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg);
            return event_stop(t, tid, event, msg, &ev);
        }
        restart(t, tid);
        return 0;
    }
}

/* Reap what is there until an event is ready.  Returns how many statuses
 * were handled, or -errno. */
static int drain(struct umld_tracer *t)
{
    for (int handled = 0;; handled++) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG | __WALL | __WNOTHREAD);
        if (p == 0)
            return handled;
        if (p < 0) {
            if (errno == EINTR)
                continue;
            return errno == ECHILD ? handled : -errno;
        }
        int rc = handle_status(t, p, st);
        if (rc < 0)
            return rc;
        if (t->q_len)
            return handled + 1;
    }
}

/* The signals umld_wait sleeps on must be blocked here (or sigtimedwait may
 * lose them to delivery), and SIGCHLD must be neither ignored nor
 * SA_NOCLDSTOP, or no SIGCHLD comes for ptrace stops (wait(2)). */
static int check_signal_setup(struct umld_tracer *t)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&t->waitset, s) == 1 && sigismember(&cur, s) != 1)
            return -EDEADLK;
    struct sigaction sa;
    if (sigaction(SIGCHLD, NULL, &sa) == 0 &&
        (sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDSTOP)))
        return -ENOTSUP;
    t->mask_checked = 1;
    return 0;
}

static void q_pop(struct umld_tracer *t, struct umld_event *ev)
{
    *ev = t->q[t->q_head];
    t->q_head = (t->q_head + 1) % t->q_cap;
    t->q_len--;
    t->stats[1]++;
}

int umld_wait(struct umld_tracer *t, struct umld_event *ev, int timeout_ms)
{
    UMLD_ENTER(t);
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    int after_sigchld = 0;
    for (;;) {
        if (atomic_load_explicit(&t->wake, memory_order_relaxed) && atomic_exchange(&t->wake, 0)) {
            ev_init(ev, UMLD_EV_WAKEUP, 0);
            return UMLD_EV_WAKEUP;
        }
        /* A guest that keeps us busy must not starve host signals: look
         * at them now and then without sleeping. */
        if (t->n_host && ++t->since_sleep >= 64) {
            t->since_sleep = 0;
            struct timespec zero = {0, 0};
            int s = sigtimedwait(&t->hostset, NULL, &zero);
            if (s > 0) {
                ev_init(ev, UMLD_EV_HOSTSIG, 0);
                ev->signo = s;
                return UMLD_EV_HOSTSIG;
            }
        }
        if (t->orphan_due_ms && now_ms() >= t->orphan_due_ms) {
            int rc = adopt_orphans(t);
            if (rc < 0)
                return rc;
        }
        if (t->q_len == 0) {
            int rc = drain(t);
            if (rc < 0)
                return rc;
            if (rc == 0 && after_sigchld)
                t->stats[4]++; /* a SIGCHLD with nothing for us */
        }
        after_sigchld = 0;
        if (t->q_len) {
            q_pop(t, ev);
            return ev->kind;
        }

        /* Nothing to reap: sleep until SIGCHLD, a host signal, a wake-up
         * (a thread-directed SIGCHLD), the deadline or an orphan's due
         * time. */
        if (!t->mask_checked) {
            int rc = check_signal_setup(t);
            if (rc < 0)
                return rc;
        }
        int64_t rel = -1; /* ms; -1: no limit */
        int64_t now = (timeout_ms > 0 || t->orphan_due_ms) ? now_ms() : 0;
        if (timeout_ms == 0)
            rel = 0;
        else if (timeout_ms > 0)
            rel = deadline > now ? deadline - now : 0;
        int for_orphans = 0;
        if (t->orphan_due_ms) {
            int64_t o = t->orphan_due_ms > now ? t->orphan_due_ms - now : 0;
            if (rel < 0 || o < rel) {
                rel = o;
                for_orphans = 1;
            }
        }
        struct timespec ts = {(time_t)(rel / 1000), (long)(rel % 1000) * 1000000L};
        t->stats[3]++;
        t->since_sleep = 0;
        siginfo_t si;
        int s = sigtimedwait(&t->waitset, &si, rel < 0 ? NULL : &ts);
        if (s < 0) {
            if (errno != EAGAIN)
                return -errno; /* EINTR: a handler ran; the caller retries */
            if (for_orphans)
                continue;
            /* Timed out -- but look once more: a status may have come with
             * its SIGCHLD consumed by an earlier wait. */
            int rc = drain(t);
            if (rc < 0)
                return rc;
            if (t->q_len) {
                q_pop(t, ev);
                return ev->kind;
            }
            return 0;
        }
        if (s == SIGCHLD) {
            /* A child changed state (ours or another tracer's), or
             * umld_wake (checked at loop top). */
            forward_sigchld(t, &si);
            after_sigchld = 1;
            continue;
        }
        ev_init(ev, UMLD_EV_HOSTSIG, 0);
        ev->signo = s;
        return UMLD_EV_HOSTSIG;
    }
}

int umld_wake(struct umld_tracer *t)
{
    atomic_store(&t->wake, 1);
    /* Thread-directed, so that exactly the tracer thread's sigtimedwait
     * sees it; blocked there, so it stays pending until then. */
    int rc = pthread_kill(t->owner, SIGCHLD);
    return -rc;
}

/* ------------------------------------------------------------------------
 * Answers to stops.
 * ------------------------------------------------------------------------ */

/* The record of `tid` if it is in one of the stops in `mask` (1 << state):
 * NULL with *rc = -ESRCH when we do not trace it (any more), -EINVAL when
 * it is not in such a stop. */
static struct thr *stopped_in(struct umld_tracer *t, pid_t tid, unsigned mask, int *rc)
{
    struct thr *r = umld__thr_find(t, tid);
    if (!r || !r->announced) {
        *rc = -ESRCH;
        return NULL;
    }
    if (!(mask & (1u << r->state))) {
        *rc = -EINVAL;
        return NULL;
    }
    return r;
}

#define M_SECCOMP (1u << ST_SECCOMP)
#define M_ANY_STOP                                                                                 \
    ((1u << ST_SECCOMP) | (1u << ST_SYSEXIT) | (1u << ST_SIGNAL) | (1u << ST_INTERRUPT) |          \
     (1u << ST_SYSENTRY) | (1u << ST_EVENT))

int umld_resume(struct umld_tracer *t, int tid, int sig, int stop_at_exit)
{
    UMLD_ENTER(t);
    int rc;
    struct thr *r = stopped_in(t, tid, M_ANY_STOP, &rc);
    if (!r)
        return rc;
    if (r->state == ST_INTERRUPT || r->state == ST_EVENT) {
        /* PTRACE_EVENT_* stops inject no signal (ptrace(2)). */
        sig = 0;
    } else if (stop_at_exit && r->state == ST_SECCOMP) {
        r->exit_stop = 1;
    }
    /* A syscall-exit-stop asked before (an interrupt, a signal) is still
     * due; otherwise the thread's resume mode. */
    int req = restart_req(r);
    r->state = ST_RUNNING;
    if (ptrace(req, tid, 0, (long)sig) < 0)
        return -errno;
    return 0;
}

int umld_complete(struct umld_tracer *t, int tid, long result)
{
    UMLD_ENTER(t);
    int rc;
    struct thr *r = stopped_in(t, tid, M_SECCOMP, &rc);
    if (!r)
        return rc;
    r->state = ST_RUNNING;
    /* seccomp(2), SECCOMP_RET_TRACE: "The tracer can skip the system call
     * by changing the system call number to -1", the return register then
     * holds the result.  Two POKEUSERs cost the same two calls as GETREGS
     * + SETREGS and copy less; the stop itself used GET_SYSCALL_INFO, so
     * there are no cached registers to reuse. */
    if (ptrace(PTRACE_POKEUSER, tid, OFF_ORIG_RAX, -1L) < 0 ||
        ptrace(PTRACE_POKEUSER, tid, OFF_RAX, result) < 0 || ptrace(restart_req(r), tid, 0, 0) < 0)
        return -errno;
    return 0;
}

int umld_rewrite(struct umld_tracer *t, int tid, long nr, const uint64_t *args, int nargs,
                 int stop_at_exit)
{
    UMLD_ENTER(t);
    int rc;
    struct thr *r = stopped_in(t, tid, M_SECCOMP, &rc);
    if (!r)
        return rc;
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0) {
        r->state = ST_RUNNING;
        return -errno;
    }
    /* Changing orig_rax at the seccomp stop changes the call; the filter is
     * then run again with RET_TRACE meaning ALLOW (ptrace(2),
     * "PTRACE_EVENT_SECCOMP stops (since Linux 4.8)"). */
    regs.orig_rax = (unsigned long)nr;
    unsigned long long *slot64[6] = {&regs.rdi, &regs.rsi, &regs.rdx,
                                     &regs.r10, &regs.r8,  &regs.r9};
    unsigned long long *slot32[6] = {&regs.rbx, &regs.rcx, &regs.rdx,
                                     &regs.rsi, &regs.rdi, &regs.rbp};
    int i386 = r->arch == UMLD_ARCH_I386;
    unsigned long long **slot = i386 ? slot32 : slot64;
    /* The kernel preserves every register but the result's (syscall(2),
     * "Architecture calling conventions"), and compiled code relies on it
     * (an i386 PIC's ebx, arguments kept in registers across a call): the
     * guest's own argument registers go back at the call's exit. */
    for (int i = 0; i < 6; i++)
        r->saved[i] = *slot[i];
    for (int i = 0; i < nargs && i < 6; i++)
        *slot[i] = i386 ? (uint32_t)args[i] : args[i];
    r->restore = 1;
    r->report_exit = stop_at_exit != 0;
    r->exit_stop = 1;
    r->state = ST_RUNNING;
    if (ptrace(PTRACE_SETREGS, tid, 0, &regs) < 0 || ptrace(PTRACE_SYSCALL, tid, 0, 0) < 0)
        return -errno;
    return 0;
}

int umld_set_result(struct umld_tracer *t, int tid, long result)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, 1u << ST_SYSEXIT, &rc))
        return rc;
    if (ptrace(PTRACE_POKEUSER, tid, OFF_RAX, result) < 0)
        return -errno;
    return 0;
}

_Static_assert(sizeof(struct user_regs_struct) == UMLD_NREGS * sizeof(uint64_t),
               "struct user_regs_struct is UMLD_NREGS words");
_Static_assert(sizeof(siginfo_t) == UMLD_SIGINFO_SIZE, "siginfo_t is UMLD_SIGINFO_SIZE bytes");

/* A thread that vanished in its stop (SIGKILL: ptrace(2), "Death under
 * ptrace") answers ESRCH; its Exited follows. */
int umld_get_regs(struct umld_tracer *t, int tid, uint64_t *out)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
        return -errno;
    memcpy(out, &regs, sizeof regs);
    return 0;
}

int umld_set_regs(struct umld_tracer *t, int tid, const uint64_t *in)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    struct user_regs_struct regs;
    memcpy(&regs, in, sizeof regs);
    if (ptrace(PTRACE_SETREGS, tid, 0, &regs) < 0)
        return -errno;
    return 0;
}

int umld_get_siginfo(struct umld_tracer *t, int tid, unsigned char *out)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, 1u << ST_SIGNAL, &rc))
        return rc;
    siginfo_t si;
    if (ptrace(PTRACE_GETSIGINFO, tid, 0, &si) < 0)
        return -errno;
    memcpy(out, &si, sizeof si);
    return 0;
}

int umld_set_siginfo(struct umld_tracer *t, int tid, const unsigned char *in)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, 1u << ST_SIGNAL, &rc))
        return rc;
    siginfo_t si;
    memcpy(&si, in, sizeof si);
    if (ptrace(PTRACE_SETSIGINFO, tid, 0, &si) < 0)
        return -errno;
    return 0;
}

int umld_get_sigmask(struct umld_tracer *t, int tid, uint64_t *out)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    /* ptrace(2): "addr ... the size of the buffer", the kernel's sigset. */
    if (ptrace(PTRACE_GETSIGMASK, tid, sizeof *out, out) < 0)
        return -errno;
    return 0;
}

int umld_set_sigmask(struct umld_tracer *t, int tid, uint64_t mask)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    if (ptrace(PTRACE_SETSIGMASK, tid, sizeof mask, &mask) < 0)
        return -errno;
    return 0;
}

int umld_listen(struct umld_tracer *t, int tid)
{
    UMLD_ENTER(t);
    int rc;
    struct thr *r = stopped_in(t, tid, 1u << ST_INTERRUPT, &rc);
    if (!r)
        return rc;
    r->state = ST_LISTEN;
    if (ptrace(PTRACE_LISTEN, tid, 0, 0) < 0)
        return -errno;
    return 0;
}

int umld_interrupt(struct umld_tracer *t, int tid)
{
    UMLD_ENTER(t);
    struct thr *r = umld__thr_find(t, tid);
    if (!r || !r->announced)
        return -ESRCH;
    /* Asked again even when an earlier request is marked: Linux ends a
     * pending interrupt at any trap of the thread ("any trap clears
     * pending STOP trap", ptrace_stop), so an earlier one may have been
     * absorbed by another stop. */
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0)
        return -errno;
    r->interrupt = 1;
    return 0;
}

int umld_set_resume_mode(struct umld_tracer *t, int tid, int mode)
{
    UMLD_ENTER(t);
    if (mode < UMLD_MODE_CONT || mode > UMLD_MODE_SYSEMU_SINGLESTEP)
        return -EINVAL;
    struct thr *r = umld__thr_find(t, tid);
    if (!r || !r->announced)
        return -ESRCH;
    r->mode = (uint8_t)mode;
    return 0;
}

int umld_set_event_stops(struct umld_tracer *t, int tid, unsigned mask)
{
    UMLD_ENTER(t);
    int rc;
    struct thr *r = stopped_in(t, tid, M_ANY_STOP, &rc);
    if (!r)
        return rc;
    if (mask & ~0x7eu)
        return -EINVAL;
    long opts = SEIZE_OPTIONS;
    if (mask & (1u << PTRACE_EVENT_VFORK_DONE))
        opts |= PTRACE_O_TRACEVFORKDONE;
    if (mask & (1u << PTRACE_EVENT_EXIT))
        opts |= PTRACE_O_TRACEEXIT;
    if (ptrace(PTRACE_SETOPTIONS, tid, 0, opts) < 0)
        return -errno;
    r->held_events = (uint8_t)mask;
    return 0;
}

int umld_peek_user(struct umld_tracer *t, int tid, long offset, uint64_t *out)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    errno = 0;
    long v = ptrace(PTRACE_PEEKUSER, tid, offset, 0);
    if (v == -1 && errno)
        return -errno;
    *out = (uint64_t)v;
    return 0;
}

int umld_poke_user(struct umld_tracer *t, int tid, long offset, uint64_t value)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    if (ptrace(PTRACE_POKEUSER, tid, offset, value) < 0)
        return -errno;
    return 0;
}

long umld_get_regset(struct umld_tracer *t, int tid, int type, unsigned char *buf, size_t size)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    struct iovec iov = {buf, size};
    if (ptrace(PTRACE_GETREGSET, tid, (long)type, &iov) < 0)
        return -errno;
    return (long)iov.iov_len;
}

int umld_set_regset(struct umld_tracer *t, int tid, int type, const unsigned char *buf, size_t size)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    struct iovec iov = {(void *)buf, size};
    if (ptrace(PTRACE_SETREGSET, tid, (long)type, &iov) < 0)
        return -errno;
    return 0;
}

long umld_get_syscall_info(struct umld_tracer *t, int tid, unsigned char *buf, size_t size)
{
    UMLD_ENTER(t);
    int rc;
    if (!stopped_in(t, tid, M_ANY_STOP, &rc))
        return rc;
    long n = ptrace(PTRACE_GET_SYSCALL_INFO, tid, size, buf);
    return n < 0 ? -errno : n;
}

int umld_kill(struct umld_tracer *t, int tid, int sig)
{
    UMLD_ENTER(t);
    struct thr *r = umld__thr_find(t, tid);
    long rc;
    if (r && r->tgid)
        rc = syscall(SYS_tgkill, r->tgid, tid, sig);
    else
        rc = kill(tid, sig); /* unknown group: reaches its process */
    if (rc < 0 && errno != ESRCH)
        return -errno;
    return 0;
}

/* ------------------------------------------------------------------------
 * Close: kill everything, reap everything.
 * ------------------------------------------------------------------------ */

static void kill_all(struct umld_tracer *t)
{
    for (size_t i = 0; i < t->tab_cap; i++) {
        struct thr *r = &t->tab[i];
        if (r->tid == 0)
            continue;
        /* SIGKILL acts on the whole thread group and also ends
         * ptrace-stops and PTRACE_LISTEN (ptrace(2)). */
        if (syscall(SYS_tgkill, r->tgid ? r->tgid : r->tid, r->tid, SIGKILL) < 0)
            kill(r->tid, SIGKILL);
    }
}

/* SIGKILL every process whose tracer is this thread (TracerPid in
 * /proc/PID/status names the tracing thread, proc(5)): catches tracees we
 * never heard of, such as a child whose creator died in its fork event
 * stop and that has not reported its first stop yet.  They get a record,
 * so that close waits for their exit.  Returns how many. */
static int kill_proc_tracees(struct umld_tracer *t)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        char path[64], buf[1024];
        pid_t pid = (pid_t)strtol(e->d_name, NULL, 10);
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        const char *tp = strstr(buf, "\nTracerPid:");
        if (tp && (pid_t)strtol(tp + 11, NULL, 10) == t->owner_tid) {
            kill(pid, SIGKILL);
            thr_get(t, pid);
            n++;
        }
    }
    closedir(d);
    return n;
}

static size_t live_count(struct umld_tracer *t)
{
    /* Parked-only records whose Exited we already reaped do not count. */
    size_t n = 0;
    for (size_t i = 0; i < t->tab_cap; i++) {
        struct thr *r = &t->tab[i];
        if (r->tid == 0)
            continue;
        int dead = 0;
        for (size_t k = 0; k < t->pk_len; k++)
            if (t->pk[k].tid == r->tid && t->pk[k].kind == UMLD_EV_EXITED)
                dead = 1;
        n += !dead;
    }
    return n;
}

int umld_close(struct umld_tracer *t)
{
    if (t->closed)
        return 0;
    if (!pthread_equal(pthread_self(), t->owner))
        return -UMLD_ERR_NOT_OWNER;
    t->closed = 1;
    kill_all(t);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int quiet_rounds = 0;
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG | __WALL | __WNOTHREAD);
        if (p < 0 && errno == EINTR)
            continue;
        if (p < 0)
            break; /* ECHILD: nothing left at all */
        if (p > 0) {
            quiet_rounds = 0;
            if (WIFEXITED(st) || WIFSIGNALED(st)) {
                thr_del(t, p);
            } else {
                /* A thread we had not seen (child of a fork in flight):
                 * kill it too; SIGKILL ends its stop. */
                thr_get(t, p);
                kill(p, SIGKILL);
            }
            continue;
        }
        size_t live = live_count(t);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        /* Once nothing we know of is alive, look for tracees we never
         * heard of; when there are none either, stop. */
        if (live == 0 && quiet_rounds >= 1 && kill_proc_tracees(t) == 0)
            break;
        if (ms > 10000)
            break;
        if (live)
            kill_all(t);
        struct timespec slice = {0, live ? 20000000L : 2000000L};
        siginfo_t si;
        if (sigtimedwait(&chld, &si, &slice) == SIGCHLD)
            forward_sigchld(t, &si);
        quiet_rounds++;
    }
    for (size_t i = 0; i < t->tab_cap; i++) {
        if (t->tab[i].tid != 0 && t->tab[i].errfd >= 0)
            close(t->tab[i].errfd);
        t->tab[i].tid = 0;
    }
    t->tab_len = 0;
    t->q_len = t->q_head = 0;
    t->pk_len = 0;
    return 0;
}
