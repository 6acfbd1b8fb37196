"""Syscall tables by architecture, and the seccomp filter they make."""

from __future__ import annotations

from collections.abc import Iterable

from umld.core.syscalls.table import SyscallTable
from umld.tracer.seccomp import build_filter


def lookup_table(arch: str = "x86_64") -> SyscallTable:
    if arch == "x86_64":
        from umld.core.syscalls.x86_64 import TABLE

        return TABLE
    if arch == "i386":
        from umld.core.syscalls.i386 import TABLE as I386

        return I386
    raise ValueError(f"no syscall table for {arch}")


def machine_filter(features: Iterable[str] | None, *, trace_all: bool = False) -> bytes:
    """The seccomp filter of a machine with ``features`` (None: every
    feature): the x86_64 and i386 sections, each from its table."""
    have = None if features is None else set(features)
    return build_filter(
        lookup_table("x86_64").rules(have),
        i386=lookup_table("i386").rules(have),
        trace_all=trace_all,
    )
