"""Syscall tables by architecture."""

from __future__ import annotations

from umld.core.syscalls.table import SyscallTable


def lookup_table(arch: str = "x86_64") -> SyscallTable:
    if arch == "x86_64":
        from umld.core.syscalls.x86_64 import TABLE

        return TABLE
    raise ValueError(f"no syscall table for {arch}")
