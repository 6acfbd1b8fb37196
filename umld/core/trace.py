"""Full-trace mode: one strace-like line per syscall.

Argument names and types come from python-ptrace's prototype table;
strings are read from guest memory at entry (before the call can change
them), and the line is written when the call returns.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO, final

from umld.core.syscalls.table import SyscallTable
from umld.tracer.events import SyscallStop, Tid

if TYPE_CHECKING:
    from umld.core.task import Task

_STRING_TYPES = ("const char *", "char *")
_MAX_STR = 64


def _prototypes() -> dict[str, Any]:
    try:
        from ptrace.syscall.prototypes import SYSCALL_PROTOTYPES
    except ImportError:  # python-ptrace is a dependency; be robust anyway
        return {}
    return dict(SYSCALL_PROTOTYPES)


@final
class SyscallFormatter:
    def __init__(
        self,
        table: SyscallTable,
        out: TextIO,
        read_string: Callable[[Tid, int, int], bytes] | None = None,
    ) -> None:
        self.table = table
        self.out = out
        self.read_string = read_string
        self.protos = _prototypes()
        self.pending: dict[Tid, str] = {}

    def _arg(self, tid: Tid, ctype: str, value: int) -> str:
        if ctype in _STRING_TYPES and self.read_string is not None and value:
            try:
                s = self.read_string(tid, value, _MAX_STR + 1)
            except Exception:
                return hex(value)
            text = repr(s[:_MAX_STR])[1:]
            return text + ("..." if len(s) > _MAX_STR else "")
        if ctype == "int":  # the low 32 bits, signed
            low = value & 0xFFFFFFFF
            return str(low - (1 << 32) if low & 0x80000000 else low)
        if ctype in ("unsigned int", "long", "size_t", "pid_t", "uid_t", "gid_t"):
            return str(value - (1 << 64) if value >= 1 << 63 else value)
        return hex(value)

    def format_call(
        self, tid: Tid, nr: int, args: Sequence[int], table: SyscallTable | None = None
    ) -> str:
        table = table or self.table
        name = table.name(nr)
        proto = self.protos.get(name)
        if proto is None:
            shown = ", ".join(hex(a) for a in args[:6])
        else:
            shown = ", ".join(
                self._arg(tid, ctype, args[i]) for i, (ctype, _n) in enumerate(proto[1][:6])
            )
        abi = "" if table is self.table else f"[{table.arch}] "
        return f"{abi}{name}({shown})"

    def enter(
        self, task: Task, nr: int, args: Sequence[int], table: SyscallTable | None = None
    ) -> None:
        self.pending[task.tid] = f"{task.tid} {self.format_call(task.tid, nr, args, table)}"

    def exit(self, task: Task, nr: int, result: int, *, emulated: bool = False) -> None:
        call = self.pending.pop(task.tid, f"{task.tid} {self.table.name(nr)}(...)")
        if -4096 < result < 0:
            code = -result
            shown = f"-1 {errno.errorcode.get(code, str(code))}"
        else:
            shown = str(result) if result < 1 << 20 or result < 0 else hex(result)
        mark = " (umld)" if emulated else ""
        self.out.write(f"{call} = {shown}{mark}\n")

    def signal(self, task: Task, signo: int) -> None:
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = str(signo)
        self.out.write(f"{task.tid} --- {name} ---\n")

    def foreign(self, task: Task, ev: SyscallStop) -> None:
        self.out.write(
            f"{task.tid} [{ev.arch.name.lower()}] syscall_{ev.nr:#x}(...) = -1 ENOSYS (umld)\n"
        )

    def gone(self, tid: Tid) -> None:
        call = self.pending.pop(tid, None)
        if call is not None:
            self.out.write(f"{call} = ?\n")
