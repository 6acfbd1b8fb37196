"""Guest threads (Task) and processes (ThreadGroup), by host id.

umld does not renumber processes: the kernel's tables are keyed by host
tids and pids, and the pid a guest process sees is its pid in the
machine's pid namespace (GuestKernel.guest_pid), so the kernel's own
bookkeeping (wait, signals, /proc) stays native.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, NewType, final

from umld.core import procfs
from umld.tracer.events import Tid

if TYPE_CHECKING:
    from umld.core.debugger import Debugger
    from umld.core.privileged import ThreadCpuid, ThreadIo

Pid = NewType("Pid", int)


@final
class Task:
    """A guest thread.  Owned by the tracer thread."""

    __slots__ = (
        "cpuid",
        "current_syscall",
        "debugger",
        "exit_hook",
        "io",
        "seccomp",
        "syscalls",
        "tgid",
        "tid",
    )

    def __init__(self, tid: Tid, tgid: Pid) -> None:
        self.tid = tid
        self.tgid = tgid
        #: Trapped syscalls by number (every syscall in full-trace mode).
        self.syscalls: Counter[int] = Counter()
        #: The call the task is stopped in, or -1.
        self.current_syscall = -1
        #: Its I/O rights (ioperm(2), iopl(2)) and virtual interrupt flag;
        #: None until it asks for any (umld/core/privileged.py).
        self.io: ThreadIo | None = None
        #: Its CPUID faulting with the ``cpuid`` setting ``own``
        #: (umld/core/privileged.py); None: nothing to do.
        self.cpuid: ThreadCpuid | None = None
        #: What follows it as a ptrace tracer would (umld/core/debugger.py).
        self.debugger: Debugger | None = None
        #: Called with the result at the exit of the call it is in (a
        #: handler's AtExit or Inject).
        self.exit_hook: Callable[[int], None] | None = None
        #: The seccomp filters the guest installed in it, newest first
        #: (guest_ptrace.py reads them for PTRACE_O_TRACESECCOMP).
        self.seccomp: tuple[bytes, ...] = ()

    def has_capability(self, cap: int) -> bool:
        """Whether the thread's effective capability set holds ``cap``
        (CapEff in /proc/TID/status, proc(5))."""
        eff = procfs.status(f"{self.tgid}/task/{self.tid}", ("CapEff",)).get("CapEff")
        return eff is not None and bool(int(eff, 16) >> cap & 1)


@final
class ThreadGroup:
    """A guest process."""

    __slots__ = ("pid", "threads")

    def __init__(self, pid: Pid) -> None:
        self.pid = pid
        self.threads: dict[Tid, Task] = {}

    def syscall_counts(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for t in self.threads.values():
            total.update(t.syscalls)
        return total
