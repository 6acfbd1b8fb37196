"""The syscall table: data, and the single source of truth.

One :class:`Syscall` row per number says what the guest kernel does with
the call:

* PASSTHROUGH: the host kernel runs it natively; it never stops (the
  seccomp filter lets it through).  Most calls are here: guest file data,
  memory, time, signals between guest processes all move natively.
* EMULATE: a handler in ``sys_<family>.py`` answers it (it may still let
  the call run natively after looking, e.g. to count it).
* DENY: refused with a fixed errno because it would change the host
  outside what the guest was given (reboot(2), module loading, the host
  clock).  These trap so that the refusal is seen and counted.

The seccomp filter, ``umld syscalls`` and the export's syscall list are
all generated from these rows.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from umld.core.syscalls.context import SyscallContext

#: What a handler returns: None lets the call run natively, an int
#: completes it with that result (negative errno for failure).
Outcome: TypeAlias = int | None
Handler: TypeAlias = "Callable[[SyscallContext], Outcome]"


class Hold(Exception):
    """Raised by a handler to keep the task stopped in its syscall until
    the kernel releases it (the call then runs natively)."""


class Disposition(enum.Enum):
    PASSTHROUGH = "passthrough"
    EMULATE = "emulate"
    DENY = "deny"


class Family(enum.Flag):
    """Which part of the kernel a call belongs to (gVisor/strace classes)."""

    FILE = enum.auto()  # takes a path
    DESC = enum.auto()  # works on a file descriptor
    PROCESS = enum.auto()  # process and thread life cycle
    SIGNAL = enum.auto()
    MEMORY = enum.auto()
    IPC = enum.auto()  # SysV and POSIX IPC
    NETWORK = enum.auto()
    TIME = enum.auto()
    IDENTITY = enum.auto()  # uids, gids, capabilities
    UTS = enum.auto()  # host and domain name
    SCHED = enum.auto()
    SYSTEM = enum.auto()  # host-wide administration
    MISC = enum.auto()


class Syscall(NamedTuple):
    nr: int
    name: str
    family: Family
    disposition: Disposition
    handler: Handler | None = None
    #: For DENY rows: the errno the guest gets.
    deny_errno: int = 0
    #: What differs from Linux, for the docs; empty when nothing does.
    note: str = ""
    #: A machine feature without which the call need not stop: "live"
    #: (settings that change while it runs) or "vcpus" (a CPU count of its
    #: own).  A machine without it leaves the call out of its filter, and
    #: the handler, which would pass it through anyway, never runs.
    needs: str = ""

    @property
    def traps(self) -> bool:
        """Whether the call stops in the tracer (is in the filter)."""
        return self.disposition is not Disposition.PASSTHROUGH


def passthrough(nr: int, name: str, family: Family, note: str = "") -> Syscall:
    return Syscall(nr, name, family, Disposition.PASSTHROUGH, note=note)


def emulated(
    nr: int, name: str, family: Family, handler: Handler, note: str = "", needs: str = ""
) -> Syscall:
    return Syscall(nr, name, family, Disposition.EMULATE, handler=handler, note=note, needs=needs)


def denied(nr: int, name: str, family: Family, note: str, deny_errno: int = errno.EPERM) -> Syscall:
    return Syscall(nr, name, family, Disposition.DENY, deny_errno=deny_errno, note=note)


class SyscallTable:
    """Rows by number and by name for one architecture."""

    def __init__(self, arch: str, rows: Iterable[Syscall]) -> None:
        self.arch = arch
        self._by_nr: dict[int, Syscall] = {}
        self._by_name: dict[str, Syscall] = {}
        for row in rows:
            if row.nr in self._by_nr or row.name in self._by_name:
                raise ValueError(f"duplicate syscall row {row.nr} {row.name}")
            if (row.disposition is Disposition.EMULATE) != (row.handler is not None):
                raise ValueError(f"{row.name}: EMULATE rows, and only they, have a handler")
            self._by_nr[row.nr] = row
            self._by_name[row.name] = row
        #: Dense list for the dispatcher's hot path.
        self.dense: list[Syscall | None] = [None] * (max(self._by_nr, default=-1) + 1)
        for nr, row in self._by_nr.items():
            self.dense[nr] = row

    def __iter__(self) -> Iterator[Syscall]:
        return iter(sorted(self._by_nr.values(), key=lambda r: r.nr))

    def __len__(self) -> int:
        return len(self._by_nr)

    def lookup(self, nr: int) -> Syscall | None:
        dense = self.dense
        return dense[nr] if 0 <= nr < len(dense) else None

    def by_name(self, name: str) -> Syscall:
        return self._by_name[name]

    def name(self, nr: int) -> str:
        row = self.lookup(nr)
        return row.name if row is not None else f"syscall_{nr}"

    def trapped(self, features: Iterable[str] | None = None) -> frozenset[int]:
        """Numbers the seccomp filter must stop on; with ``features``, only
        the conditional rows (``needs``) whose feature is in it."""
        have = None if features is None else set(features)
        return frozenset(
            r.nr
            for r in self._by_nr.values()
            if r.traps and (have is None or not r.needs or r.needs in have)
        )
