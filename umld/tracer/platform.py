"""The tracer platform: how umld stops and resumes guest threads.

This package knows nothing of syscall semantics.  It starts guest programs
under ptrace with a seccomp filter it is handed (so only the calls the guest
kernel handles ever stop), turns ptrace stops into :mod:`umld.tracer.events`
values, and offers the few operations a guest kernel needs at a stop:
resume, cancel a call with a result, rewrite a call, read and write guest
memory.

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
  signals blocked; ``wake`` from another thread interrupts it.
* A syscall is cancelled the PRoot way: at the seccomp stop the syscall
  number is set to -1 (the kernel skips it) and the return register is set
  to the result (seccomp(2), SECCOMP_RET_TRACE).  One stop, no exit stop.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from umld.tracer.events import Event, Tid


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


class TracerPlatform(Protocol):
    """One tracer: every guest thread it starts or that they create."""

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

    def write_memory(self, tid: Tid, addr: int, data: bytes) -> None:
        """Write guest memory; raises TracerError(EFAULT) on failure."""
        ...

    def read_string(self, tid: Tid, addr: int, limit: int = 4096) -> bytes:
        """Read a NUL-terminated string (without the NUL), at most
        ``limit`` bytes; raises TracerError(EFAULT) if unreadable and
        TracerError(ENAMETOOLONG) when no NUL is found within ``limit``."""
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
