"""Guest threads (Task) and processes (ThreadGroup).

Guest ids are host ids: umld does not renumber processes, so a pid the
guest sees is the pid on the host and the kernel's own bookkeeping (wait,
signals, /proc) stays native.
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from typing import NewType, final

from umld.tracer.events import Tid

Pid = NewType("Pid", int)


class TaskState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"  # group-stop (SIGSTOP, SIGTSTP, ...)


@final
class Task:
    """A guest thread.  Owned by the tracer thread."""

    __slots__ = ("current_syscall", "state", "syscalls", "tgid", "tid")

    def __init__(self, tid: Tid, tgid: Pid) -> None:
        self.tid = tid
        self.tgid = tgid
        self.state = TaskState.RUNNING
        #: Trapped syscalls by number (every syscall in full-trace mode).
        self.syscalls: Counter[int] = Counter()
        #: The call the task is stopped in, or -1.
        self.current_syscall = -1

    def has_capability(self, cap: int) -> bool:
        """Whether the thread's effective capability set holds ``cap``
        (CapEff in /proc/TID/status, proc(5))."""
        try:
            with open(f"/proc/{self.tgid}/task/{self.tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"CapEff:"):
                        return bool(int(line.split()[1], 16) >> cap & 1)
        except OSError:
            pass
        return False


@final
class ThreadGroup:
    """A guest process."""

    __slots__ = ("execs", "pid", "ppid", "threads")

    def __init__(self, pid: Pid, ppid: Pid) -> None:
        self.pid = pid
        self.ppid = ppid
        self.threads: dict[Tid, Task] = {}
        self.execs = 0

    def syscall_counts(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for t in self.threads.values():
            total.update(t.syscalls)
        return total


def read_cmdline(pid: int) -> list[str]:
    """argv of a live process from /proc/PID/cmdline; [] once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]]
