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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from umld.tracer.seccomp import AllOf, ArgTest, Clause, Conditions, conditions_hold

__all__ = [
    "AllOf",
    "ArgTest",
    "AtExit",
    "Clause",
    "Conditions",
    "Disposition",
    "Family",
    "Handler",
    "Hold",
    "Inject",
    "Offloaded",
    "Outcome",
    "Rewrite",
    "Syscall",
    "SyscallTable",
    "denied",
    "derive",
    "emulated",
    "passthrough",
]

if TYPE_CHECKING:
    from umld.core.syscalls.context import SyscallContext


class Rewrite(NamedTuple):
    """A handler's answer: run syscall ``nr`` of the same ABI with ``args``
    (from registers, which no other guest thread can change) instead."""

    nr: int
    args: tuple[int, ...]


class AtExit(NamedTuple):
    """A handler's answer: let the call run natively, and at its exit call
    ``then`` with its result (on the tracer thread, the thread stopped
    there: ``then`` may change its result)."""

    then: Callable[[int], None]


class Inject(NamedTuple):
    """A handler's answer: run call ``nr`` with ``args`` in the thread
    first, then make the thread run its own call again (its ``syscall``
    instruction once more, its registers as they were): the call then
    stops here anew.  ``then`` gets the injected call's result."""

    nr: int
    args: tuple[int, ...]
    then: Callable[[int], None] | None = None


#: What a handler returns: None lets the call run natively, an int
#: completes it with that result (negative errno for failure), a Rewrite
#: runs another call natively in its place; AtExit and Inject as above.
Outcome: TypeAlias = int | Rewrite | AtExit | Inject | None
Handler: TypeAlias = "Callable[[SyscallContext], Outcome]"


class Hold(Exception):
    """Raised by a handler to keep the task stopped in its syscall until
    the kernel releases it (the call then runs natively)."""


class Offloaded(Hold):
    """Raised by a handler that has umld do the call elsewhere (a worker
    thread): the task stays stopped in it until that work hands its result
    to ``GuestKernel.finish`` (on the tracer thread)."""


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


#: The feature of rows that stop only in guest processes that use
#: ptrace(2): a filter of their own traps them (core/guest_ptrace.py);
#: no machine's filter has them.
TRACER = "tracer"


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
    #: own) or "hostroot" (run by host root, so that its writes to the
    #: host's files are root's).  A machine without it leaves the call out
    #: of its filter, and the handler never runs.
    needs: str = ""
    #: Argument tests (seccomp.ArgTest, AllOf): when given, the call stops
    #: only when one of them holds, and runs natively, unseen, otherwise.
    when: Conditions = ()
    #: Other features under which the call stops too, each with argument
    #: tests of its own (empty: always): socket(2) stops in a machine whose
    #: network comes up at its first use ("lazynet") for every family but
    #: AF_UNIX, whatever ``needs`` says.
    also: tuple[tuple[str, Conditions], ...] = ()

    @property
    def traps(self) -> bool:
        """Whether the call stops in the tracer (is in a filter)."""
        return self.disposition is not Disposition.PASSTHROUGH

    @property
    def in_machine_filter(self) -> bool:
        """Whether a machine's filter has it (TRACER rows are in the filter
        of guest tracers only)."""
        return self.disposition is not Disposition.PASSTHROUGH and self.needs != TRACER

    def conditions(self, have: Iterable[str] | None = None) -> Conditions | None:
        """The argument tests under which the call stops in a machine with
        the features ``have`` (None: every feature): () always, None never
        (``needs`` and every feature of ``also`` missing)."""
        parts = []
        if not self.needs or have is None or self.needs in have:
            parts.append(self.when)
        parts += [tests for feature, tests in self.also if have is None or feature in have]
        if not parts:
            return None
        if any(not tests for tests in parts):
            return ()
        return tuple(clause for tests in parts for clause in tests)

    def stops_for(
        self, args: Sequence[int], *, wide: bool = True, have: Iterable[str] | None = None
    ) -> bool:
        """Whether a call with ``args`` is one the filter of a machine with
        the features ``have`` stops (None: every feature); ``wide`` False
        for a 32-bit ABI."""
        tests = self.when if not self.also else self.conditions(have)
        if tests is None:
            return False
        return conditions_hold(tests, args, wide=wide)

    def describe_when(self) -> str:
        """The argument tests, for ``umld syscalls``; "" when none."""
        return " or ".join(c.describe() for c in self.when)

    def describe_stops(self) -> str:
        """When the call stops, for ``umld syscalls``: "never", "always",
        or its feature and argument tests."""
        if not self.traps:
            return "never"
        parts = []
        if self.needs == TRACER:
            parts.append("in guest ptrace tracers")
        elif self.needs:
            parts.append(f"{self.needs} machines")
        if self.when:
            parts.append(f"when {self.describe_when()}")
        for feature, tests in self.also:
            when = " or ".join(c.describe() for c in tests)
            parts.append(f"{feature} machines" + (f" when {when}" if when else ""))
        return ", ".join(parts) or "always"

    def probe_args(self) -> list[tuple[int, int, int, int, int, int]]:
        """Argument vectors that tell whether a filter decides as this row
        does: all zero, all ones, and for each clause of its tests one
        that makes it hold (garbage in the high words, which 32-bit tests
        ignore) and the same with each test broken in turn."""
        out = [_six((0,) * 6), _six((0xFFFFFFFFFFFFFFFF,) * 6)]
        for clause in (*self.when, *(c for _, tests in self.also for c in tests)):
            tests = clause.tests if isinstance(clause, AllOf) else (clause,)
            args = [0xDEAD_0000_0000_0000] * 6
            for t in tests:
                wanted = t.value if t.op in ("eq", "any") else t.value ^ 1
                args[t.arg] = (args[t.arg] if t.bits == 32 else 0) | wanted
            out.append(_six(args))
            for t in tests:
                broken = list(args)
                broken[t.arg] = t.value if t.op == "ne" else (t.value ^ 1 if t.op == "eq" else 0)
                out.append(_six(broken))
        return out


def _six(args: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    return (args[0], args[1], args[2], args[3], args[4], args[5])


def passthrough(nr: int, name: str, family: Family, note: str = "") -> Syscall:
    return Syscall(nr, name, family, Disposition.PASSTHROUGH, note=note)


def emulated(
    nr: int,
    name: str,
    family: Family,
    handler: Handler,
    note: str = "",
    needs: str = "",
    when: Iterable[Clause] = (),
    also: Iterable[tuple[str, Conditions]] = (),
) -> Syscall:
    return Syscall(
        nr,
        name,
        family,
        Disposition.EMULATE,
        handler=handler,
        note=note,
        needs=needs,
        when=tuple(when),
        also=tuple(also),
    )


def denied(nr: int, name: str, family: Family, note: str, deny_errno: int = errno.EPERM) -> Syscall:
    return Syscall(nr, name, family, Disposition.DENY, deny_errno=deny_errno, note=note)


#: How another ABI names the variants of a call (syscall_32.tbl):
#: clock_settime64, fcntl64, chown32, _llseek, oldstat, _newselect.
_SUFFIXES = ("_time64", "_time32", "64", "32")
_PREFIXES = ("_", "old", "new")


def _variants(name: str) -> Iterator[str]:
    """``name``, then the names it may be a variant of."""
    yield name
    stems = [name] + [name[: -len(s)] for s in _SUFFIXES if name.endswith(s)]
    for stem in stems:
        yield stem
        for p in _PREFIXES:
            if stem.startswith(p):
                yield stem[len(p) :]
                if stem[len(p) :].startswith("new"):
                    yield stem[len(p) + 3 :]


def derive(
    names: Mapping[int, str], sibling: SyscallTable, own: Iterable[Syscall], family: Family
) -> list[Syscall]:
    """The rows of another ABI's table: each number's name, with the row of
    the same name in ``sibling`` (its disposition, handler, notes, feature
    and argument tests: the same call goes through the same handler); or
    its row in ``own`` (the ABI's own calls and decisions); or the row of
    the call it is a variant of (``clock_settime64`` is denied as
    ``clock_settime`` is, ``chown32`` passes as ``chown`` does); or else a
    PASSTHROUGH row of ``family``."""
    mine = {row.name: row for row in own}
    rows = []
    # Built with tuple.__new__ rather than _replace: this runs at every
    # start (the filter's i386 section), 440 rows, and _replace costs
    # about a millisecond of it.
    make = tuple.__new__
    for nr, name in sorted(names.items()):
        row = mine.pop(name, None)
        if row is None:
            variant = next((sibling.find(n) for n in _variants(name) if sibling.find(n)), None)
            if variant is None:
                row = Syscall(nr, name, family, Disposition.PASSTHROUGH)
            else:
                row = make(Syscall, (nr, name, *variant[2:]))
        if row.nr != nr:
            row = make(Syscall, (nr, *row[1:]))
        rows.append(row)
    if mine:
        raise ValueError(f"own rows without a number: {sorted(mine)}")
    return rows


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

    def find(self, name: str) -> Syscall | None:
        return self._by_name.get(name)

    def name(self, nr: int) -> str:
        row = self.lookup(nr)
        return row.name if row is not None else f"syscall_{nr}"

    def trapped(self, features: Iterable[str] | None = None) -> frozenset[int]:
        """Numbers the seccomp filter must stop on; with ``features``, only
        the conditional rows (``needs``) whose feature is in it."""
        return frozenset(self.rules(features))

    def rules(self, features: Iterable[str] | None = None) -> dict[int, Conditions]:
        """What the filter section of this ABI traps: number -> argument
        tests (empty: always), for a machine with ``features`` (None: a
        machine with every feature).  TRACER rows are in no machine's
        filter: a guest tracer's own filter traps them."""
        have = None if features is None else set(features)
        out = {}
        for r in self._by_nr.values():
            if not r.in_machine_filter:
                continue
            if not r.also:  # the common case, quickly: this runs at every start
                if have is None or not r.needs or r.needs in have:
                    out[r.nr] = r.when
                continue
            tests = r.conditions(have)
            if tests is not None:
                out[r.nr] = tests
        return out
