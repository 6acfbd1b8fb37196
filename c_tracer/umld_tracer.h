/*
 * umld C tracer core: ptrace + seccomp stops turned into small event records.
 *
 * This is the engine behind umld/tracer/ptrace_c.py; the Python side only
 * converts `struct umld_event` into the events of umld/tracer/events.py.
 * See umld/tracer/platform.py ("How it works") for the model.
 *
 * Handled here without any event reaching the caller: the initial
 * PTRACE_EVENT_STOP of auto-attached children (restarted), group-stops
 * (PTRACE_LISTEN; re-traps while still stopped), the restarts after
 * fork/vfork/clone/exec events (with PTRACE_SYSCALL when a syscall-exit-stop
 * was asked for, so it is not lost), the clone kind (thread or process),
 * the spawn error pipe, parking of events of threads not announced yet, and
 * threads whose creator died in its fork event stop (announced as children
 * of their thread group or reaper after a delay, or killed).
 *
 * Threading rule (ptrace(2): "the tracee is attached to a thread"): every
 * function here except umld_wake() must be called on the thread that called
 * umld_tracer_new().  That thread must keep SIGCHLD and every host signal
 * blocked (umld_wait sleeps in sigtimedwait(2) on them; umld_wake interrupts
 * it with a thread-directed SIGCHLD).  It should have no children of its own
 * other than the ones umld_spawn() starts: umld_wait reaps with
 * waitpid(-1, __WALL | __WNOTHREAD).
 *
 * Return convention: 0 (or a count / event kind) on success, -errno on
 * failure.
 *
 * The section between the CDEF markers is fed verbatim to cffi's cdef() by
 * c_tracer/build_ffi.py, so it may only contain what pycparser accepts:
 * plain declarations and integer #defines.
 */
#ifndef UMLD_TRACER_H
#define UMLD_TRACER_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Event kinds (struct umld_event.kind); umld_wait returns one of them. */
#define UMLD_EV_SYSCALL 1      /* SyscallStop: tid nr args[6] arch          */
#define UMLD_EV_SYSEXIT 2      /* SyscallExit: tid nr result                */
#define UMLD_EV_SIGNAL 3       /* SignalStop: tid signo                     */
#define UMLD_EV_CLONED 4       /* Cloned: tid child clone_kind              */
#define UMLD_EV_EXECED 5       /* Execed: tid child(=former tid)            */
#define UMLD_EV_EXITED 6       /* Exited: tid status spawn_stage spawn_errno */
#define UMLD_EV_GROUPSTOP 7    /* GroupStopped: tid signo                   */
#define UMLD_EV_CONTINUED 8    /* Continued: tid                            */
#define UMLD_EV_HOSTSIG 9      /* HostSignal: signo                         */
#define UMLD_EV_WAKEUP 10      /* Wakeup                                    */
#define UMLD_EV_INTERRUPTED 11 /* Interrupted: tid signo(group-stop's, or 0) */
#define UMLD_EV_SYSENTRY 12    /* SyscallEntry: tid nr args[6] arch          */
#define UMLD_EV_EVENTSTOP 13   /* EventStop: tid signo(=PTRACE_EVENT_*) result(=message) */

/* Resume modes (umld_set_resume_mode): the ptrace request every restart of
 * the thread uses, PTRACE_CONT, PTRACE_SYSCALL, PTRACE_SINGLESTEP,
 * PTRACE_SYSEMU, PTRACE_SYSEMU_SINGLESTEP. */
#define UMLD_MODE_CONT 0
#define UMLD_MODE_SYSCALL 1
#define UMLD_MODE_SINGLESTEP 2
#define UMLD_MODE_SYSEMU 3
#define UMLD_MODE_SYSEMU_SINGLESTEP 4

/* struct umld_event.arch (values of umld.tracer.events.Arch) */
#define UMLD_ARCH_X86_64 0
#define UMLD_ARCH_I386 1
#define UMLD_ARCH_X32 2

/* struct umld_event.clone_kind */
#define UMLD_CLONE_FORK 0
#define UMLD_CLONE_VFORK 1
#define UMLD_CLONE_THREAD 2
#define UMLD_CLONE_PROCESS 3

/* struct umld_event.spawn_stage: where a spawned child failed before exec */
#define UMLD_STAGE_NONE 0
#define UMLD_STAGE_SETUP 1
#define UMLD_STAGE_SECCOMP 2
#define UMLD_STAGE_EXEC 3

/* Returned (negated) by every function but umld_wake when called from a
 * thread other than the one that created the tracer. */
#define UMLD_ERR_NOT_OWNER 100000

/* umld_spawn flags */
#define UMLD_SPAWN_NEW_PGRP 1
#define UMLD_SPAWN_SUBREAPER 2
#define UMLD_SPAWN_NEW_SESSION 4 /* setsid(2) instead of setpgid; no tty_fd */

struct umld_event {
    int kind;
    int tid;
    int arch;
    int signo;
    int child; /* Cloned: the new tid; Execed: the former tid */
    int clone_kind;
    int status; /* Exited: raw wait status */
    int spawn_stage;
    int spawn_errno;
    long nr;
    long result;
    uint64_t args[6];
};

struct umld_tracer;

/* A tracer owned by the calling thread; NULL (errno set) on failure. */
struct umld_tracer *umld_tracer_new(void);
/* Free memory only (call umld_close first to kill and reap tracees). */
void umld_tracer_free(struct umld_tracer *t);

/* Start `path` traced.  argv and envp are NULL-terminated; envp NULL means
 * the current environ.  cwd may be NULL.  filter is a struct sock_filter
 * array of filter_len bytes (0: no filter, no NO_NEW_PRIVS).  sigmask holds
 * signal s in bit s-1.  On success *out_pid is the child and 0 is returned;
 * -EPERM (or -EACCES / -ENOSYS) means PTRACE_SEIZE was refused.  Failures in
 * the child come back later in that pid's Exited event. */
int umld_spawn(struct umld_tracer *t, const char *path, char **argv, char **envp, const char *cwd,
               const void *filter, size_t filter_len, int flags, int tty_fd,
               const int *reset_signals, int n_reset, uint64_t sigmask, int *out_pid);

/* How long (ms, >= 0) a traced thread waits for the event announcing it
 * before the orphan rule applies (umld/tracer/platform.py, "Orphans");
 * 2000 ms by default.  -EINVAL for a negative value. */
int umld_set_orphan_delay(struct umld_tracer *t, int ms);

/* Signals that umld_wait reports as UMLD_EV_HOSTSIG (replaces the set). */
int umld_set_host_signals(struct umld_tracer *t, const int *signals, int n);

/* Next event into *ev: returns its kind (> 0), 0 after timeout_ms
 * milliseconds without one (-1: no timeout), -EINTR when a signal handler
 * interrupted the sleep (the caller runs its handlers and calls again), or
 * another -errno. */
int umld_wait(struct umld_tracer *t, struct umld_event *ev, int timeout_ms);

/* Make the current or next umld_wait return UMLD_EV_WAKEUP.  Any thread. */
int umld_wake(struct umld_tracer *t);

/* Answers to a stop.  -ESRCH: the thread is gone or not stopped (an Exited
 * follows if it was killed); -EINVAL: wrong kind of stop for the request. */
int umld_resume(struct umld_tracer *t, int tid, int sig, int stop_at_exit);
int umld_complete(struct umld_tracer *t, int tid, long result);
/* Sets the syscall number and the first nargs (<= 6) arguments. */
int umld_rewrite(struct umld_tracer *t, int tid, long nr, const uint64_t *args, int nargs,
                 int stop_at_exit);
int umld_set_result(struct umld_tracer *t, int tid, long result);

/* Guest memory.  Reads point *out at a buffer owned by the tracer, valid
 * until the next read; they return the byte count or -errno. */
long umld_read_mem(struct umld_tracer *t, int tid, uint64_t addr, size_t size, const char **out);
int umld_write_mem(struct umld_tracer *t, int tid, uint64_t addr, const char *data, size_t size,
                   int force);
/* String length (without NUL), at most `limit`: reads up to limit + 1
 * bytes for the NUL; -ENAMETOOLONG when there is none, -EFAULT when the
 * string runs into unreadable memory. */
long umld_read_string(struct umld_tracer *t, int tid, uint64_t addr, size_t limit,
                      const char **out);

/* The general registers and the siginfo of a stopped thread, for the guest
 * kernel's emulation of privileged instructions (umld/core/privileged.py).
 * Registers: struct user_regs_struct (sys/user.h) as UMLD_NREGS 64-bit
 * words in its order; at any stop the caller sees (SyscallStop,
 * SyscallExit, SignalStop).  Siginfo: the kernel's siginfo_t as
 * UMLD_SIGINFO_SIZE bytes (PTRACE_GETSIGINFO, PTRACE_SETSIGINFO), at a
 * signal-delivery-stop only (-EINVAL elsewhere).  Never fetched by
 * umld_wait: the caller asks when it needs them. */
#define UMLD_NREGS 27
#define UMLD_SIGINFO_SIZE 128
int umld_get_regs(struct umld_tracer *t, int tid, uint64_t *out);
int umld_set_regs(struct umld_tracer *t, int tid, const uint64_t *regs);
int umld_get_siginfo(struct umld_tracer *t, int tid, unsigned char *out);
int umld_set_siginfo(struct umld_tracer *t, int tid, const unsigned char *info);

/* The signal mask of a stopped thread (PTRACE_GETSIGMASK,
 * PTRACE_SETSIGMASK; signal s in bit s-1), at any stop the caller sees,
 * Interrupted included.  The kernel never lets SIGKILL or SIGSTOP be
 * blocked: their bits are dropped on the way in. */
int umld_get_sigmask(struct umld_tracer *t, int tid, uint64_t *out);
int umld_set_sigmask(struct umld_tracer *t, int tid, uint64_t mask);

/* Stop a running thread (PTRACE_INTERRUPT): an UMLD_EV_INTERRUPTED comes
 * once it stops (at once if it was running or in a group-stop, when it is
 * next resumed if it was in another stop), and the
 * caller answers with umld_resume (the signal argument is ignored there,
 * as at every PTRACE_EVENT_STOP).  Asking twice before the stop gives one
 * event; a thread that dies first gives its Exited only. */
int umld_interrupt(struct umld_tracer *t, int tid);
/* At an UMLD_EV_INTERRUPTED taken in group-stop (signo nonzero): back to
 * the group-stop (PTRACE_LISTEN) instead of running on. */
int umld_listen(struct umld_tracer *t, int tid);

/* How the thread is restarted from now on (UMLD_MODE_*), for a debugger
 * of a guest thread: SYSCALL reports every syscall-enter-stop as
 * UMLD_EV_SYSENTRY and every syscall-exit-stop as UMLD_EV_SYSEXIT;
 * SINGLESTEP gives a SIGTRAP signal-delivery-stop after each instruction;
 * SYSEMU stops at each syscall's entry (UMLD_EV_SYSENTRY) and skips the
 * call.  A syscall-exit-stop asked with stop_at_exit still comes (that
 * restart uses PTRACE_SYSCALL).  Takes effect at the thread's next
 * restart; any time the thread is known.  -EINVAL for another mode. */
int umld_set_resume_mode(struct umld_tracer *t, int tid, int mode);

/* Which PTRACE_EVENT_* stops (bit e for event e: FORK 1, VFORK 2, CLONE 3,
 * EXEC 4, VFORK_DONE 5, EXIT 6) leave the thread stopped, reported as
 * UMLD_EV_EVENTSTOP after the event's own notification (Cloned, Execed)
 * if it has one; the caller answers with umld_resume.  VFORK_DONE and
 * EXIT turn on PTRACE_O_TRACEVFORKDONE and PTRACE_O_TRACEEXIT for the
 * thread (its later children inherit them, and their such events are
 * restarted here).  At any stop the caller sees. */
int umld_set_event_stops(struct umld_tracer *t, int tid, unsigned mask);

/* The thread's user area (PTRACE_PEEKUSER, PTRACE_POKEUSER: struct user
 * of sys/user.h, e.g. the debug registers at offsetof(u_debugreg)), and
 * its register sets (PTRACE_GETREGSET, PTRACE_SETREGSET with an iovec:
 * NT_PRSTATUS, NT_PRFPREG, NT_X86_XSTATE...; the get returns the bytes the
 * kernel filled), and its PTRACE_GET_SYSCALL_INFO (returns the size of the
 * kernel's struct; at most `size` bytes copied).  At any stop the caller
 * sees. */
int umld_peek_user(struct umld_tracer *t, int tid, long offset, uint64_t *out);
int umld_poke_user(struct umld_tracer *t, int tid, long offset, uint64_t value);
long umld_get_regset(struct umld_tracer *t, int tid, int type, unsigned char *buf, size_t size);
int umld_set_regset(struct umld_tracer *t, int tid, int type, const unsigned char *buf,
                    size_t size);
long umld_get_syscall_info(struct umld_tracer *t, int tid, unsigned char *buf, size_t size);

/* tgkill(2) `sig` to `tid`; 0 when the thread is already gone. */
int umld_kill(struct umld_tracer *t, int tid, int sig);

/* The process's list of tracer threads, among which SIGCHLDs the kernel
 * sends are passed on (tracer.c): C tracers are in it by themselves;
 * another backend adds its tracers' threads (one entry per tracer, 0 or
 * -ENOSPC) and forwards a kernel SIGCHLD it took to all but itself. */
int umld_threads_add(int tid);
void umld_threads_remove(int tid);
void umld_threads_forward(int from_tid);

/* SIGKILL every traced thread, reap them all, close fds.  Idempotent. */
int umld_close(struct umld_tracer *t);

/* Counters for tests and benchmarks: [0] waitpid statuses handled,
 * [1] events delivered, [2] events that were parked, [3] sleeps in
 * sigtimedwait, [4] SIGCHLDs after which there was nothing to reap. */
void umld_stats(struct umld_tracer *t, uint64_t *out5);

/* The host CPU's CPUID for `leaf` (eax) and `subleaf` (ecx): out4 gets
 * eax, ebx, ecx, edx (Intel SDM vol. 2, CPUID).  Run in umld, where
 * CPUID is never made to fault: what a guest's faulting CPUID is
 * answered from (umld/core/privileged.py). */
void umld_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out4);
/* CDEF-END */

#endif /* UMLD_TRACER_H */
