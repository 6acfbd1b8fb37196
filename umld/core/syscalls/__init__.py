"""Syscall tables by architecture, and the seccomp filter they make."""

from __future__ import annotations

from collections.abc import Iterable

from umld.core.syscalls.table import SyscallTable
from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_TRACE,
    build_filter,
    evaluate,
)


def lookup_table(arch: str = "x86_64") -> SyscallTable:
    if arch == "x86_64":
        from umld.core.syscalls.x86_64 import TABLE

        return TABLE
    if arch == "i386":
        from umld.core.syscalls.i386 import TABLE as I386

        return I386
    raise ValueError(f"no syscall table for {arch}")


_FILTERS: dict[tuple[frozenset[str] | None, bool], bytes] = {}


def machine_filter(features: Iterable[str] | None, *, trace_all: bool = False) -> bytes:
    """The seccomp filter of a machine with ``features`` (None: every
    feature): the x86_64 and i386 sections, each from its table.  Made
    once per process and set of features (the warm umld makes the usual
    one before it forks its runs, umld/_warm.py)."""
    have = None if features is None else frozenset(features)
    key = (have, trace_all)
    prog = _FILTERS.get(key)
    if prog is None:
        prog = _FILTERS[key] = build_filter(
            lookup_table("x86_64").rules(have),
            i386=lookup_table("i386").rules(have),
            trace_all=trace_all,
        )
    return prog


def check_filter(program: bytes, features: Iterable[str] | None = None) -> list[str]:
    """Run ``program`` on every number of both ABIs, with argument vectors
    that make each row's tests hold and fail (Syscall.probe_args), and
    name every call it decides otherwise than the tables (for a machine
    with ``features``).  Empty when the filter is right."""
    have = None if features is None else set(features)
    wrong = []
    for abi, arch in (("x86_64", AUDIT_ARCH_X86_64), ("i386", AUDIT_ARCH_I386)):
        table = lookup_table(abi)
        top = max(r.nr for r in table) + 64
        for nr in range(top):
            row = table.lookup(nr)
            probes = row.probe_args() if row is not None else [(0,) * 6]
            for args in probes:
                want = (
                    row is not None
                    and row.in_machine_filter
                    and row.conditions(have) is not None
                    and row.stops_for(args, wide=abi == "x86_64", have=have)
                )
                got = evaluate(program, nr, arch, args)
                if got != (SECCOMP_RET_TRACE if want else SECCOMP_RET_ALLOW):
                    name = row.name if row is not None else f"syscall_{nr}"
                    wrong.append(f"{abi} {nr} {name} {args}: {'stops' if not want else 'runs'}")
    return wrong
