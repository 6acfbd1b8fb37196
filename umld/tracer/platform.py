"""The tracer platform: how umld stops and resumes guest threads.

This package knows nothing of syscall semantics.  It starts guest programs
under ptrace with a seccomp filter it is handed (so only the calls the guest
kernel handles ever stop), turns ptrace stops into :mod:`umld.tracer.events`
values, and offers the few operations a guest kernel needs at a stop:
resume, cancel a call with a result, rewrite a call, read and write guest
memory, and at a signal-delivery-stop read the signal's siginfo and the
thread's registers (the guest kernel emulates privileged instructions
there: umld/core/privileged.py).

How it works (both backends):

* ``spawn`` forks a child that waits on a pipe; the parent attaches with
  PTRACE_SEIZE and options TRACESYSGOOD | TRACEFORK | TRACEVFORK |
  TRACECLONE | TRACEEXEC | TRACESECCOMP | EXITKILL, then releases the child,
  which sets up its process group, terminal, signal state and subreaper
  flag, sets PR_SET_NO_NEW_PRIVS, installs the seccomp filter and execs.
  EXITKILL (ptrace(2)) means that every guest dies if umld dies.
* Only the thread that attached may issue ptrace requests (ptrace(2),
  "the tracee is attached to a thread").  Every method here except ``wake``
  must therefore be called from the thread that created the platform
  object.  ``wait`` reaps with ``__WALL | __WNOTHREAD`` so several tracer
  threads in one process never steal each other's tracees.
* ``wait`` sleeps in sigtimedwait(2) on SIGCHLD plus the host signals, so
  the tracer thread (and every other thread of umld) must keep those
  signals blocked; ``wake`` from another thread interrupts it.  SIGCHLD
  goes to the whole process (signal(7)), so with several tracers in one
  process (one per thread, of either backend) one may take another's:
  every tracer passes the SIGCHLDs the kernel sends on to the others
  (one list of tracer threads, kept in c_tracer/tracer.c).
* A syscall is cancelled the PRoot way: at the seccomp stop the syscall
  number is set to -1 (the kernel skips it) and the return register is set
  to the result (seccomp(2), SECCOMP_RET_TRACE).  One stop, no exit stop.
* A debugger of a guest thread (the guest's own ptrace, the export's gdb
  server) needs more of ptrace: ``set_resume_mode`` makes every restart
  of one thread PTRACE_SYSCALL, SINGLESTEP or SYSEMU (the syscall stops
  are told apart by PTRACE_GET_SYSCALL_INFO's op, ENTRY or EXIT),
  ``set_event_stops`` keeps the thread in chosen PTRACE_EVENT_* stops
  (adding PTRACE_O_TRACEEXIT / TRACEVFORKDONE to its options for those
  two), and ``peek_user``/``poke_user``, ``get_regset``/``set_regset``
  and ``get_syscall_info`` read and write what such a debugger reads.
* ``interrupt`` stops a running thread on the core's request with
  PTRACE_INTERRUPT (possible because tracees are seized, not attached):
  the PTRACE_EVENT_STOP with SIGTRAP that follows is told apart from the
  initial stop of an auto-attached child and from the end of a group-stop
  by the backend's record that it asked, and reported as Interrupted.  The
  guest kernel uses it to reach a thread that is not in any stop (to
  change its signal mask after an execve, privileged.py).

Orphans: one rule, every backend.  A new thread is traced from its first
instruction (auto-attach, PTRACE_O_TRACEFORK/CLONE), but it is announced
by its creator's PTRACE_EVENT_FORK/VFORK/CLONE stop, and nothing of it is
reported before that Cloned (the ordering guarantee of
:mod:`umld.tracer.events`): its stops are held back, the thread left in
them.  That event never comes when the creator is killed in the stop (a
SIGKILL ends a ptrace stop without reporting it; ptrace(2), "Death under
ptrace").  A thread that has waited ``orphan_delay`` seconds for its
Cloned is therefore dealt with as the kernel deals with a child whose
parent died:

* a thread (of a live thread group) is announced as a Cloned (THREAD) of
  an announced thread of its group;
* a process is announced as a Cloned (FORK) of its current parent, the
  reaper it was re-parented to, when that one is announced (natively it
  runs on under that reaper; the spawned process is the subreaper of the
  guest, see ``SpawnSpec.subreaper``);
* one that nobody in the guest can adopt (its reaper is outside, its
  group unknown) is killed with SIGKILL and never announced: no guest
  process could ever wait for it;
* one that is dead by then is forgotten: the guest never knew it.

Its held-back events follow its Cloned in order.  A backend may announce
such a thread earlier as its creator's child (the C backend does when the
creator's group exits with unannounced children it created): the same
event, sooner.  Why adopt rather than kill: killing would be a behaviour
no native program ever sees (a double-forking daemon whose middle process
is killed keeps its grandchild running).  Why ``ORPHAN_DELAY`` (2 s) by
default: a creator that is alive reports its event within microseconds,
so the delay only has to outlast a badly overloaded or CPU-throttled host;
until then the orphan sits stopped, holding back nothing but itself.
Tests inject a short delay (``open_tracer(name, orphan_delay=...)``).
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from umld.tracer.events import Event, ResumeMode, Tid

#: Seconds a traced thread waits for the event announcing it before the
#: orphan rule above applies (the default of every backend).
ORPHAN_DELAY = 2.0


class TracerError(Exception):
    """The platform could not do what was asked (ptrace refused, no such
    thread, ...).  ``errno`` holds the errno when there is one."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class TracerUnavailable(TracerError):
    """The kernel refuses ptrace or seccomp here; the message says which
    and why (for example Yama ptrace_scope, a container's seccomp profile)."""


class SpawnSpec(NamedTuple):
    """What ``spawn`` starts.

    ``path`` is the file to execve (already resolved by the caller);
    ``argv[0]`` is passed as is.  ``env`` None means the environment of
    umld.  ``seccomp_filter`` is a classic BPF program as bytes (see
    :mod:`umld.tracer.seccomp`); empty means no filter (every call runs
    natively; only process events stop).
    """

    path: bytes
    argv: Sequence[bytes]
    env: Sequence[bytes] | None = None
    cwd: bytes | None = None
    seccomp_filter: bytes = b""
    #: Put the child in a new process group of its own (setpgid(0, 0)).
    new_process_group: bool = True
    #: Put the child in a new session of its own (setsid(2)), which also
    #: makes a new process group: it has no controlling terminal, so
    #: opening /dev/tty fails with ENXIO as in a daemon, and nothing it
    #: does reaches the terminal of the caller's session.  Excludes
    #: ``foreground_tty``.
    new_session: bool = False
    #: When not None, a terminal fd: the child's new process group becomes
    #: the foreground group of that terminal (tcsetpgrp(3)) before exec.
    foreground_tty: int | None = None
    #: PR_SET_CHILD_SUBREAPER in the child: orphans of the guest re-parent
    #: to it, as to the init of a PID namespace (prctl(2)).
    subreaper: bool = True
    #: Signals set back to SIG_DFL in the child before exec (Python ignores
    #: SIGPIPE and SIGXFSZ; a native shell would not).
    reset_signals: Sequence[int] = (signal.SIGPIPE, signal.SIGXFSZ)
    #: Signal mask the child execs with.
    sigmask: frozenset[int] = frozenset()


class Regs(NamedTuple):
    """The general registers of a stopped thread: struct user_regs_struct
    (sys/user.h) field by field, in its order, as unsigned 64-bit values
    (``rflags`` is the struct's ``eflags``).  A 32-bit thread's registers
    are the same struct (the kernel zero-extends them)."""

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int


#: sizeof(struct user_regs_struct) / 8 and sizeof(siginfo_t) on x86_64.
NREGS = 27
SIGINFO_SIZE = 128
#: offsetof(struct user, u_debugreg) (sys/user.h, x86_64): DR0..DR7 follow,
#: a word each (DR4, DR5 are not usable).
USER_DEBUGREG = 848
#: Register set kinds (linux/elf.h) for get_regset/set_regset.
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202
#: si_signo, si_errno, si_code, padding, then the union: for a fault
#: (SIGSEGV, SIGBUS...) si_addr; for kill(2) and sigqueue(3) si_pid and
#: si_uid, then si_value (siginfo_t in asm-generic/siginfo.h).
_SIGINFO_HEAD = struct.Struct("=3i4xQ")
_SIGINFO_KILL = struct.Struct("=iIq")


class SigInfo(NamedTuple):
    """The siginfo of a signal-delivery-stop (PTRACE_GETSIGINFO).

    ``addr`` is si_addr (meaningful for faults), ``pid``/``uid``/``value``
    are si_pid, si_uid and si_value (meaningful for kill, tgkill,
    sigqueue): they share the union, so each is read from the same bytes.
    ``raw`` is the whole siginfo_t, for :meth:`TracerPlatform.set_siginfo`."""

    signo: int
    errno: int
    code: int
    addr: int
    pid: int
    uid: int
    value: int
    raw: bytes

    @classmethod
    def from_raw(cls, raw: bytes) -> SigInfo:
        signo, err, code, addr = _SIGINFO_HEAD.unpack_from(raw)
        pid, uid, value = _SIGINFO_KILL.unpack_from(raw, 16)
        return cls(signo, err, code, addr, pid, uid, value, bytes(raw))


class TracerPlatform(Protocol):
    """One tracer: every guest thread it starts or that they create.

    Backends take ``orphan_delay`` (seconds, default ORPHAN_DELAY) as a
    constructor argument (``open_tracer`` passes it on): see "Orphans"
    above."""

    name: str

    def spawn(self, spec: SpawnSpec) -> Tid:
        """Start ``spec`` traced; return its pid.  Raises TracerUnavailable
        when ptrace is refused, TracerError (errno set) when fork fails.
        Failures inside the child (filter, exec) come back as
        ``Exited.spawn_error``."""
        ...

    def set_host_signals(self, signals: Sequence[int]) -> None:
        """Signals that ``wait`` reports as HostSignal.  The caller blocks
        them (and SIGCHLD) in every thread of the process."""
        ...

    def wait(self, timeout: float | None = None) -> Event | None:
        """Next event; None when ``timeout`` seconds pass with none."""
        ...

    def wake(self) -> None:
        """Make a ``wait`` in progress (or the next one) return Wakeup.
        The only method that may be called from any thread."""
        ...

    def resume(self, tid: Tid, signo: int = 0, *, stop_at_exit: bool = False) -> None:
        """Resume a stopped thread (PTRACE_CONT, delivering ``signo``).
        With ``stop_at_exit`` after a SyscallStop, the thread stops again
        when the call returns (SyscallExit)."""
        ...

    def complete(self, tid: Tid, result: int) -> None:
        """At a SyscallStop: skip the call, make it return ``result``
        (a negative errno for failure), resume."""
        ...

    def rewrite(
        self, tid: Tid, nr: int, args: Sequence[int], *, stop_at_exit: bool = False
    ) -> None:
        """At a SyscallStop: run syscall ``nr`` with ``args`` instead, resume.
        At the call's exit the guest's own argument registers are put back
        (the kernel preserves them, and compiled code relies on it), so
        only the result is the rewritten call's; with ``stop_at_exit`` the
        SyscallExit comes after that."""
        ...

    def set_result(self, tid: Tid, result: int) -> None:
        """At a SyscallExit: replace the return value (does not resume)."""
        ...

    def read_memory(self, tid: Tid, addr: int, size: int) -> bytes:
        """Read guest memory (process_vm_readv(2)); may return fewer bytes
        at an unmapped boundary; raises TracerError(EFAULT) if none."""
        ...

    def write_memory(self, tid: Tid, addr: int, data: bytes, *, force: bool = False) -> None:
        """Write guest memory as the kernel's copy_to_user does for a
        syscall's result: raises TracerError(EFAULT) at an unmapped,
        read-only or PROT_NONE page (the bytes before it are written).
        ``force``: as a debugger writes (ptrace(2) PTRACE_POKETEXT, with
        FOLL_FORCE), through read-only mappings too, by /proc/PID/mem."""
        ...

    def read_string(self, tid: Tid, addr: int, limit: int = 4096) -> bytes:
        """Read a NUL-terminated string (without the NUL), at most
        ``limit`` bytes; raises TracerError(EFAULT) if unreadable and
        TracerError(ENAMETOOLONG) when no NUL is found within ``limit``."""
        ...

    def get_regs(self, tid: Tid) -> Regs:
        """The thread's general registers (PTRACE_GETREGS), at any stop
        the core sees (SyscallStop, SyscallExit, SignalStop)."""
        ...

    def set_regs(self, tid: Tid, regs: Regs) -> None:
        """Set the general registers (PTRACE_SETREGS); does not resume.
        The kernel refuses values a thread may not have (a segment
        selector of another privilege level, reserved flags): TracerError
        EIO/EINVAL then."""
        ...

    def get_siginfo(self, tid: Tid) -> SigInfo:
        """At a SignalStop: the signal's siginfo (PTRACE_GETSIGINFO).
        Never fetched by ``wait``: a stop costs it only when asked."""
        ...

    def set_siginfo(self, tid: Tid, raw: bytes) -> None:
        """At a SignalStop: replace the siginfo (PTRACE_SETSIGINFO,
        ``raw`` is SIGINFO_SIZE bytes, e.g. ``SigInfo.raw``); resuming
        with its ``si_signo`` delivers that signal with it (resuming with
        another number makes the kernel build an SI_USER one: ptrace(2),
        "Signal-delivery-stop")."""
        ...

    def get_sigmask(self, tid: Tid) -> int:
        """The thread's signal mask (PTRACE_GETSIGMASK; signal s in bit
        s-1), at any stop the core sees, Interrupted included."""
        ...

    def set_sigmask(self, tid: Tid, mask: int) -> None:
        """Replace the thread's signal mask (PTRACE_SETSIGMASK).  The
        kernel drops SIGKILL and SIGSTOP from it, as sigprocmask(2) does.
        Signals that become unblocked are delivered, with their own
        siginfo, once the thread runs."""
        ...

    def interrupt(self, tid: Tid) -> None:
        """Ask a thread to stop (PTRACE_INTERRUPT): an Interrupted event
        follows, at once if it runs or sits in a group-stop (then with that
        stop's signal), once resumed if it is in another stop.  Asking
        twice before the stop gives one event; a thread that dies first
        reports its Exited only.  TracerError ESRCH for a thread not
        traced."""
        ...

    def set_resume_mode(self, tid: Tid, mode: ResumeMode) -> None:
        """How the thread is restarted from now on (every restart, the
        backend's own included): for a debugger of a guest thread.  A
        syscall-exit-stop asked with ``stop_at_exit`` still comes.  Takes
        effect at the next restart; TracerError ESRCH for a thread not
        traced."""
        ...

    def set_event_stops(self, tid: Tid, events: frozenset[int]) -> None:
        """Which PTRACE_EVENT_* stops (EVENT_FORK ... EVENT_EXIT) leave the
        thread stopped, reported as EventStop after the event's own
        notification.  A child made at a kept FORK, VFORK or CLONE stop
        starts stopped too: its first event after its Cloned is an
        Interrupted stop, before its first instruction.  At any stop the
        core sees."""
        ...

    def peek_user(self, tid: Tid, offset: int) -> int:
        """A word of the thread's user area (PTRACE_PEEKUSER; struct user
        of sys/user.h: the debug registers at USER_DEBUGREG), at a stop."""
        ...

    def poke_user(self, tid: Tid, offset: int, value: int) -> None:
        """Write a word of the user area (PTRACE_POKEUSER); the kernel
        refuses what a thread may not have (EIO, EINVAL)."""
        ...

    def get_regset(self, tid: Tid, kind: int, size: int) -> bytes:
        """A register set (PTRACE_GETREGSET: NT_PRSTATUS, NT_PRFPREG,
        NT_X86_XSTATE...): at most ``size`` bytes, as many as the kernel
        filled."""
        ...

    def set_regset(self, tid: Tid, kind: int, data: bytes) -> None:
        """Write a register set (PTRACE_SETREGSET)."""
        ...

    def get_syscall_info(self, tid: Tid) -> bytes:
        """PTRACE_GET_SYSCALL_INFO at the thread's stop: struct
        ptrace_syscall_info as the kernel fills it (its op says which
        kind of stop)."""
        ...

    def listen(self, tid: Tid) -> None:
        """At an Interrupted taken in group-stop: back into that group-stop
        (PTRACE_LISTEN), as if never interrupted."""
        ...

    def kill(self, tid: Tid, signo: int) -> None:
        """Send ``signo`` to thread ``tid`` (tgkill(2)); ignores ESRCH."""
        ...

    def tids(self) -> frozenset[Tid]:
        """Threads currently traced (announced and not yet Exited)."""
        ...

    def close(self) -> None:
        """SIGKILL every traced thread, reap them all, free resources.
        Idempotent."""
        ...
