"""The syscall table is complete, consistent, and the filter follows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from umld.core.syscalls import lookup_table
from umld.core.syscalls.table import Disposition
from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_TRACE,
    build_filter,
    evaluate,
)

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def test_every_x86_64_syscall_has_a_row() -> None:
    if not UNISTD.exists():
        pytest.skip("linux-libc-dev headers not installed")
    table = lookup_table("x86_64")
    for m in re.finditer(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()):
        row = table.lookup(int(m.group(2)))
        assert row is not None and row.name == m.group(1)


def test_rows_are_consistent() -> None:
    table = lookup_table("x86_64")
    for row in table:
        if row.disposition is Disposition.EMULATE:
            assert row.handler is not None
            doc = row.handler.__doc__ or ""
            assert doc.startswith("Implements Linux syscall "), row.name
        if row.disposition is Disposition.DENY:
            assert row.deny_errno > 0 and row.note


def test_filter_traps_exactly_the_table() -> None:
    table = lookup_table("x86_64")
    prog = build_filter(table.trapped())
    for nr in range(0, 600):
        row = table.lookup(nr)
        want = row is not None and row.traps
        got = evaluate(prog, nr)
        assert got == (SECCOMP_RET_TRACE if want else SECCOMP_RET_ALLOW), (nr, row)
    # Foreign ABIs always trap: their numbers mean other calls.
    assert evaluate(prog, 0x40000000 | 1) == SECCOMP_RET_TRACE
    assert evaluate(prog, 1, AUDIT_ARCH_I386) == SECCOMP_RET_TRACE
    # The hot calls of the benchmark must not stop.
    for name in ("getppid", "read", "write", "openat", "newfstatat", "close", "clone", "execve"):
        assert evaluate(prog, table.by_name(name).nr) == SECCOMP_RET_ALLOW


def test_trace_all_filter() -> None:
    prog = build_filter((), trace_all=True)
    assert all(evaluate(prog, nr) == SECCOMP_RET_TRACE for nr in range(500))


@pytest.mark.parametrize("size", [0, 1, 50, 300])
def test_large_filters_use_long_jumps_correctly(size: int) -> None:
    trapped = set(range(0, size * 2, 2))
    prog = build_filter(trapped)
    for nr in range(0, size * 2 + 10):
        assert (evaluate(prog, nr) == SECCOMP_RET_TRACE) == (nr in trapped)


def test_conditional_traps_follow_the_machines_features() -> None:
    # accept/connect stop only in a live machine (net/ settings can change),
    # sched_getaffinity only when the machine has a CPU count of its own.
    table = lookup_table("x86_64")
    nr = {name: table.by_name(name).nr for name in ("accept", "connect", "sched_getaffinity")}
    plain = table.trapped(set())
    assert not set(nr.values()) & plain
    assert table.by_name("uname").nr in plain
    assert nr["sched_getaffinity"] in table.trapped({"vcpus"})
    assert nr["accept"] not in table.trapped({"vcpus"})
    live = table.trapped({"live", "vcpus"})
    assert set(nr.values()) <= live
    assert live == table.trapped()
