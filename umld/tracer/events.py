"""Stop events reported by a tracer backend.

Events are values, never exceptions: immutable named tuples, cheap to
build on the hot path (a frozen dataclass costs a setattr per field, and
importing dataclasses alone costs milliseconds of every umld start).
Compare events by type as well as by value.  Every event names the thread
(``tid``) it concerns.  Two groups:

* **Stops** (:class:`SyscallStop`, :class:`SyscallEntry`, :class:`SyscallExit`,
  :class:`SignalStop`, :class:`Interrupted`, :class:`EventStop`):
  the thread is left stopped under ptrace and the core must answer with
  exactly one of ``resume``/``complete``/``rewrite`` on the platform.
* **Notifications** (everything else): the backend has already done what
  ptrace requires (resumed, listened, reaped); the core only updates its
  bookkeeping.

Ordering guarantee given by every backend: the :class:`Cloned` event that
announces a child is delivered before any event of that child, and no event
of a thread follows its :class:`Exited` event.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, NewType

Tid = NewType("Tid", int)
"""A host thread id (the value waitpid(2) and ptrace(2) use)."""


class Arch(enum.IntEnum):
    """Which system call ABI a stop came from (seccomp_data.arch)."""

    X86_64 = 0
    I386 = 1  # int 0x80 / sysenter from a 64-bit or 32-bit process
    X32 = 2  # x32 ABI: nr has bit 30 set


class ResumeMode(enum.IntEnum):
    """How a thread is restarted (``set_resume_mode``): the ptrace request
    of its every restart, for a debugger of a guest thread."""

    CONT = 0
    SYSCALL = 1  # every syscall-enter (SyscallEntry) and -exit (SyscallExit)
    SINGLESTEP = 2  # a SIGTRAP SignalStop after each instruction
    SYSEMU = 3  # SyscallEntry at each call, which is then skipped
    SYSEMU_SINGLESTEP = 4


#: PTRACE_EVENT_* numbers (linux/ptrace.h).
EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC, EVENT_VFORK_DONE, EVENT_EXIT = 1, 2, 3, 4, 5, 6


class CloneKind(enum.Enum):
    FORK = "fork"
    VFORK = "vfork"
    THREAD = "thread"  # clone(2) with CLONE_THREAD: same thread group
    PROCESS = "process"  # clone(2) without CLONE_THREAD, not fork/vfork


class SyscallStop(NamedTuple):
    """The thread is about to execute a trapped syscall (seccomp RET_TRACE).

    ``args`` always has six entries, already taken from the registers the
    ABI uses for arguments (for I386: ebx, ecx, edx, esi, edi, ebp).
    """

    tid: Tid
    nr: int
    args: tuple[int, int, int, int, int, int]
    arch: Arch = Arch.X86_64


class SyscallEntry(NamedTuple):
    """A syscall-enter-stop of a thread in resume mode SYSCALL or SYSEMU
    (every call, trapped or not; for a trapped one its SyscallStop comes
    next, once resumed).  Fields as in SyscallStop."""

    tid: Tid
    nr: int
    args: tuple[int, int, int, int, int, int]
    arch: Arch = Arch.X86_64


class SyscallExit(NamedTuple):
    """The thread returns from a syscall it was resumed from with
    ``stop_at_exit=True``.  ``nr`` is the syscall that ran (-1 if it was
    skipped), ``result`` the value in the return register (negative errno on
    failure)."""

    tid: Tid
    nr: int
    result: int


class SignalStop(NamedTuple):
    """Signal-delivery-stop: ``signo`` is about to be delivered to ``tid``.

    The core resumes with ``signo`` to deliver it or 0 to suppress it."""

    tid: Tid
    signo: int


class Cloned(NamedTuple):
    """``tid`` created ``child`` (already attached and running)."""

    tid: Tid
    child: Tid
    kind: CloneKind


class Execed(NamedTuple):
    """``tid`` completed execve(2).  When a non-leader thread execs, the
    kernel gives it the leader's id: ``tid`` is then the leader's id and
    ``former_tid`` the id the thread had before (see ptrace(2), "execve(2)
    under ptrace").  Otherwise ``former_tid == tid``."""

    tid: Tid
    former_tid: Tid


class Exited(NamedTuple):
    """``tid`` is gone and reaped by the tracer.

    ``status`` is the raw wait status (use ``os.WIFEXITED`` & co.).  For a
    process created by ``spawn`` that died before its first execve succeeded,
    ``spawn_error`` says where it failed: ``("seccomp", errno)``,
    ``("exec", errno)`` or ``("setup", errno)``; otherwise it is None."""

    tid: Tid
    status: int
    spawn_error: tuple[str, int] | None = None


class Interrupted(NamedTuple):
    """``tid`` stopped because the core asked (``interrupt``;
    PTRACE_INTERRUPT, a PTRACE_EVENT_STOP).  A stop: the core answers with
    ``resume`` (no signal can be injected here; one given is ignored), or,
    when it was taken in a group-stop (``signo``: that stop's signal), with
    ``listen`` to leave it stopped as before (resume makes it run, as a
    tracer's PTRACE_CONT of a group-stopped tracee does)."""

    tid: Tid
    signo: int = 0


class EventStop(NamedTuple):
    """``tid`` is left in a PTRACE_EVENT_* stop the core asked to keep
    (``set_event_stops``): ``event`` is the PTRACE_EVENT number (1 FORK,
    2 VFORK, 3 CLONE, 4 EXEC, 5 VFORK_DONE, 6 EXIT), ``message`` what
    PTRACE_GETEVENTMSG gives there (the new tid, the former tid, the exit
    status).  It follows the event's own Cloned or Execed.  A stop: the
    core answers with ``resume``."""

    tid: Tid
    event: int
    message: int


class GroupStopped(NamedTuple):
    """``tid`` entered a group-stop because of ``signo`` (SIGSTOP, SIGTSTP,
    SIGTTIN, SIGTTOU).  The backend keeps it stopped with PTRACE_LISTEN so
    that a later SIGCONT resumes it as it would without a tracer."""

    tid: Tid
    signo: int


class Continued(NamedTuple):
    """``tid`` left a group-stop (SIGCONT arrived)."""

    tid: Tid


class HostSignal(NamedTuple):
    """umld itself received ``signo`` (one of the signals passed to
    ``set_host_signals``).  ``tid`` is 0."""

    signo: int
    tid: Tid = Tid(0)


class Wakeup(NamedTuple):
    """``wait`` returned because another thread called ``wake``."""

    tid: Tid = Tid(0)


Stop = SyscallStop | SyscallEntry | SyscallExit | SignalStop | Interrupted | EventStop
Notification = Cloned | Execed | Exited | GroupStopped | Continued | HostSignal | Wakeup
Event = Stop | Notification
