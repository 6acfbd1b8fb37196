"""Debuggers of guest threads: one protocol for whatever follows a guest
thread the way a ptrace(2) tracer does.

umld traces every guest thread itself, so nothing else on the host can
ptrace one: a guest's own strace or gdb, or a host gdb pointed at the
export.  The guest kernel therefore stands in for the kernel's ptrace:
it keeps a thread in a stop on a debugger's behalf and lets the debugger
read and change it there through the same tracer platform.  Two
debuggers exist: the guest's own ptrace (``guest_ptrace.py``: a guest
process traces another) and the export's gdb server (``gdbstub.py``:
``proc/PID/gdb``).  A thread has at most one (``Task.debugger``), as a
thread has at most one tracer natively.

How a stop reaches a debugger.  The kernel does its own work at a stop
first (a trapped call's handler, a port access emulated at its fault, a
signal a clear virtual IF holds): what it consumes never reaches the
debugger, exactly as a call umld emulates is one the host kernel never
runs.  What is left goes to :meth:`Debugger.stopped` with a
:class:`DebugStop` value.  The debugger answers True to keep the thread
in that stop (it resumes it later, on the tracer thread, with
``kernel.tracer.resume`` and the signal it chooses) or False to let the
kernel answer as if there were no debugger.  Which stops come is the
debugger's choice, made on the tracer platform: ``set_resume_mode``
(syscall stops, single steps), ``set_event_stops`` (PTRACE_EVENT_*
stops), ``interrupt`` (an interrupt stop).

Notifications (:meth:`cloned`, :meth:`execed`, :meth:`exited`,
:meth:`group_stopped`, :meth:`continued`) tell the debugger what
happened to a thread it follows; the thread is not in a stop it could
answer there (an exit is final; a group-stop is left to PTRACE_LISTEN by
the platform).

Everything here runs on the tracer thread.  A debugger driven from
elsewhere (the export's gdb server serves a socket) hands its work to
that thread (``MachineControl.on_tracer``).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from umld.tracer.events import CloneKind

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.task import Task


class StopKind(enum.Enum):
    SIGNAL = "signal"  # signal-delivery-stop: ``signo`` is about to be delivered
    SYSCALL_ENTRY = "syscall-entry"  # ``nr`` is about to run
    SYSCALL_EXIT = "syscall-exit"  # ``nr`` returned ``value``
    EVENT = "event"  # PTRACE_EVENT ``event`` with its message ``value``
    INTERRUPT = "interrupt"  # the platform's interrupt() stop
    SECCOMP = "seccomp"  # a filter the guest installed said RET_TRACE: ``nr``, data ``value``


class DebugStop(NamedTuple):
    """A stop of a followed thread, handed to its debugger."""

    kind: StopKind
    signo: int = 0
    nr: int = -1
    value: int = 0
    event: int = 0


class Debugger(Protocol):
    """What follows guest threads (``Task.debugger``)."""

    def stopped(self, kernel: GuestKernel, task: Task, stop: DebugStop) -> bool:
        """The thread is in ``stop``: True keeps it there (the debugger
        resumes it later), False lets the kernel answer."""
        ...

    def cloned(self, kernel: GuestKernel, parent: Task, child: Task, kind: CloneKind) -> None:
        """``parent`` made ``child`` (already a Task, not yet followed:
        the debugger sets ``child.debugger`` if it follows it)."""
        ...

    def execed(self, kernel: GuestKernel, task: Task) -> None:
        """``task`` completed an execve (an EVENT stop may follow)."""
        ...

    def exited(self, kernel: GuestKernel, task: Task, status: int) -> None:
        """``task`` is gone with wait status ``status``."""
        ...

    def group_stopped(self, kernel: GuestKernel, task: Task, signo: int) -> None:
        """``task`` entered a group-stop (SIGSTOP and the like)."""
        ...

    def continued(self, kernel: GuestKernel, task: Task) -> None:
        """``task`` left its group-stop (SIGCONT)."""
        ...
