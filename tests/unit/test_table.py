"""The syscall table is complete, consistent, and the filter follows it."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from umld.core.syscalls import check_filter, lookup_table, machine_filter
from umld.core.syscalls.table import AllOf, ArgTest, Disposition, Syscall
from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_TRACE,
    build_filter,
    evaluate,
)

HEADERS = Path("/usr/include/x86_64-linux-gnu/asm")


@pytest.mark.parametrize(("abi", "header"), [("x86_64", "unistd_64.h"), ("i386", "unistd_32.h")])
def test_every_syscall_has_a_row(abi: str, header: str) -> None:
    unistd = HEADERS / header
    if not unistd.exists():
        pytest.skip("linux-libc-dev headers not installed")
    table = lookup_table(abi)
    found = re.findall(r"#define __NR_(\w+) (\d+)", unistd.read_text())
    assert len(found) > 300
    for name, nr in found:
        row = table.lookup(int(nr))
        assert row is not None and row.name == name, (nr, name, row)


def test_i386_calls_go_through_the_x86_64_rows() -> None:
    """A call of the same name has the same row (handler, disposition,
    tests); a variant of a denied call is denied; the i386-only calls that
    change the host are denied."""
    x86, i386 = lookup_table("x86_64"), lookup_table("i386")
    for row in i386:
        twin = x86.find(row.name)
        if twin is not None and row.name not in ("umount",):
            assert row._replace(nr=twin.nr) == twin, row.name
    for name in ("stime", "clock_settime64", "settimeofday", "kexec_load"):
        assert i386.by_name(name).disposition is Disposition.DENY, name
    # The machine's own reboot (sys_reboot.py), in both ABIs.
    assert i386.by_name("reboot").handler is x86.by_name("reboot").handler
    assert i386.by_name("clock_adjtime64").handler is x86.by_name("clock_adjtime").handler
    assert i386.by_name("socketcall").disposition is Disposition.EMULATE
    assert i386.by_name("chown32").disposition is Disposition.PASSTHROUGH
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert x86.by_name(name).deny_errno == i386.by_name(name).deny_errno == errno.ENOSYS


@pytest.mark.parametrize("abi", ["x86_64", "i386"])
def test_rows_are_consistent(abi: str) -> None:
    table = lookup_table(abi)
    for row in table:
        if row.disposition is Disposition.EMULATE:
            assert row.handler is not None
            doc = row.handler.__doc__ or ""
            assert doc.startswith("Implements Linux syscall "), row.name
        if row.disposition is Disposition.DENY:
            assert row.deny_errno > 0 and row.note


def _probes(row: Syscall) -> list[tuple[int, ...]]:
    """Argument vectors for a row: all zero, all ones, and for each
    clause of its tests one that makes it hold (with garbage in the high
    words, which 32-bit tests must ignore) and the same with each test
    broken in turn."""
    out: list[tuple[int, ...]] = [(0,) * 6, (0xFFFFFFFFFFFFFFFF,) * 6]
    for clause in (*row.when, *(c for _, tests in row.also for c in tests)):
        tests = clause.tests if isinstance(clause, AllOf) else (clause,)
        args = [0xDEAD_0000_0000_0000] * 6
        for t in tests:
            wanted = t.value if t.op in ("eq", "any") else t.value ^ 1
            args[t.arg] = (args[t.arg] if t.bits == 32 else 0) | wanted
        out.append(tuple(args))
        for t in tests:
            broken = list(args)
            broken[t.arg] = t.value if t.op == "ne" else (t.value ^ 1 if t.op == "eq" else 0)
            out.append(tuple(broken))
    return out


@pytest.mark.parametrize("abi", ["x86_64", "i386"])
def test_filter_traps_exactly_the_table(abi: str) -> None:
    """Every number of both ABIs, with argument vectors that make each
    row's tests hold and fail: the filter stops exactly the calls whose
    row traps and whose tests hold (Syscall.stops_for, the kernel's own
    check in full-trace mode)."""
    table = lookup_table(abi)
    arch = AUDIT_ARCH_X86_64 if abi == "x86_64" else AUDIT_ARCH_I386
    prog = machine_filter(None)
    for nr in range(0, 600):
        row = table.lookup(nr)
        if row is None:
            assert evaluate(prog, nr, arch) == SECCOMP_RET_ALLOW, nr
            continue
        for args in _probes(row):
            want = row.in_machine_filter and row.stops_for(args, wide=abi == "x86_64")
            got = evaluate(prog, nr, arch, args)
            assert got == (SECCOMP_RET_TRACE if want else SECCOMP_RET_ALLOW), (row, args)
    # x32 calls and unknown ABIs always trap: umld refuses them.
    assert evaluate(prog, 0x40000000 | 1) == SECCOMP_RET_TRACE
    assert evaluate(prog, 1, 0x12345678) == SECCOMP_RET_TRACE
    # The hot calls of the benchmark must not stop.
    for name in ("getppid", "read", "write", "openat", "statx", "close", "clone", "execve"):
        assert evaluate(prog, table.by_name(name).nr, arch) == SECCOMP_RET_ALLOW


def test_conditional_rows_stop_only_for_their_arguments() -> None:
    x86, i386 = lookup_table("x86_64"), lookup_table("i386")
    prog = machine_filter(None)
    ioctl = x86.by_name("ioctl").nr
    assert evaluate(prog, ioctl, args=(1, 0x5412, 0, 0, 0, 0)) == SECCOMP_RET_TRACE  # TIOCSTI
    assert evaluate(prog, ioctl, args=(1, 0x5413, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW  # TIOCGWINSZ
    # cmd is an unsigned int: the high word does not count.
    assert evaluate(prog, ioctl, args=(1, 0xFFFF_FFFF_0000_5412, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
    assert evaluate(prog, 54, AUDIT_ARCH_I386, (1, 0x541C, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
    sendto = x86.by_name("sendto").nr
    assert evaluate(prog, sendto, args=(3, 0x1000, 5, 0, 0, 0)) == SECCOMP_RET_ALLOW
    assert evaluate(prog, sendto, args=(3, 0x1000, 5, 0, 0x7FFF_0000_0000, 16)) == SECCOMP_RET_TRACE
    assert evaluate(prog, sendto, args=(3, 0x1000, 5, 0x20000000, 0, 0)) == SECCOMP_RET_TRACE
    # A pointer is 64 bits: one in the high word only is not NULL.
    assert evaluate(prog, sendto, args=(3, 0, 0, 0, 1 << 40, 16)) == SECCOMP_RET_TRACE
    openat = x86.by_name("openat").nr
    creat_suid = (0, 0, 0o100 | 0o1, 0o4755, 0, 0)
    assert evaluate(prog, openat, args=creat_suid) == SECCOMP_RET_TRACE
    assert evaluate(prog, openat, args=(0, 0, 0o1, 0o4755, 0, 0)) == SECCOMP_RET_ALLOW
    assert evaluate(prog, openat, args=(0, 0, 0o100, 0o644, 0, 0)) == SECCOMP_RET_ALLOW
    socket = x86.by_name("socket").nr
    live = machine_filter({"live"})
    assert evaluate(live, socket, args=(2, 1, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW  # TCP
    assert evaluate(live, socket, args=(2, 1 | 0o4000, 132, 0, 0, 0)) == SECCOMP_RET_TRACE
    assert evaluate(live, socket, args=(10, 5 | 0o2000000, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
    # A network that comes up at its first use: every family but AF_UNIX
    # stops (the first waits), in a live machine or not.
    for feats in ({"lazynet"}, {"lazynet", "live"}):
        lazy = machine_filter(feats)
        assert evaluate(lazy, socket, args=(2, 1, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
        assert evaluate(lazy, socket, args=(16, 3, 0, 0, 0, 0)) == SECCOMP_RET_TRACE  # netlink
        assert evaluate(lazy, socket, args=(1, 1, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
        assert evaluate(lazy, socket, args=(1, 5, 0, 0, 0, 0)) == (
            SECCOMP_RET_TRACE if "live" in feats else SECCOMP_RET_ALLOW
        )
        assert check_filter(lazy, feats) == []
    assert evaluate(machine_filter(set()), socket, args=(2, 1, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
    socketcall = i386.by_name("socketcall").nr
    for call, want in ((3, True), (1, True), (9, False), (11, True), (16, True), (20, True)):
        got = evaluate(prog, socketcall, AUDIT_ARCH_I386, (call, 0, 0, 0, 0, 0))
        assert got == (SECCOMP_RET_TRACE if want else SECCOMP_RET_ALLOW), call


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
    # Set-id modes and file capabilities stop only in a machine run by
    # host root (its writes to the host are root's).
    hostroot = {table.by_name(n).nr for n in ("chmod", "openat", "openat2", "setxattr")}
    assert not hostroot & live
    assert hostroot <= table.trapped({"hostroot"})
    # arch_prctl stops only with cpuid = own (CPUID faulting after exec).
    arch_prctl = table.by_name("arch_prctl").nr
    assert arch_prctl not in table.trapped({"live", "vcpus", "hostroot", "mounts"})
    assert arch_prctl in table.trapped({"cpuid"})
    assert table.trapped({"live", "vcpus", "hostroot", "cpuid", "mounts"}) == table.trapped()
    # Whatever the machine, a guest never types into a terminal.
    assert table.by_name("ioctl").nr in plain
    # wait calls stop only in guest ptrace tracers, by a filter of their own.
    waits = {table.by_name(n).nr for n in ("wait4", "waitid")}
    assert not waits & table.trapped()
    assert table.by_name("ptrace").nr in plain


A64 = 0xFFFF_FFFF_FFFF_FFFF


@pytest.mark.parametrize(
    ("test", "true", "false"),
    [
        (ArgTest(1, "eq", 7), [(0, 7), (0, 7 | 1 << 32)], [(0, 8), (0, 0)]),
        (ArgTest(1, "eq", 7, bits=64), [(0, 7)], [(0, 7 | 1 << 32), (0, 8)]),
        (ArgTest(1, "eq", 1 << 33 | 7, bits=64), [(0, 1 << 33 | 7)], [(0, 7), (0, 1 << 33)]),
        (ArgTest(2, "ne", 0, bits=64), [(0, 0, 1), (0, 0, 1 << 40)], [(0, 0, 0)]),
        (ArgTest(2, "ne", 0), [(0, 0, 1)], [(0, 0, 0), (0, 0, 1 << 40)]),
        (ArgTest(0, "any", 0o6000), [(0o4000,), (0o2755,), (A64,)], [(0o755,), (0o4000 << 32,)]),
        (ArgTest(0, "any", 1 << 35 | 1, bits=64), [(1,), (1 << 35,)], [(2,), (1 << 34,)]),
    ],
)
def test_argument_tests_in_bpf(
    test: ArgTest, true: list[tuple[int, ...]], false: list[tuple[int, ...]]
) -> None:
    """The generated code decides as ArgTest.holds does, on both words."""
    prog = build_filter({5: (test,)})
    for args, want in [(a, True) for a in true] + [(a, False) for a in false]:
        full = (*args, 0, 0, 0, 0, 0, 0)[:6]
        assert test.holds(full) is want, (test, args)
        got = evaluate(prog, 5, args=full)
        assert got == (SECCOMP_RET_TRACE if want else SECCOMP_RET_ALLOW), (test, args)
    # Its neighbours never stop, whatever their arguments.
    assert evaluate(prog, 4, args=(A64,) * 6) == SECCOMP_RET_ALLOW
    assert evaluate(prog, 6, args=true[0]) == SECCOMP_RET_ALLOW


def test_clauses_are_alternatives_of_conjunctions() -> None:
    creates = ArgTest(1, "any", 0o100)
    setid = ArgTest(2, "any", 0o6000)
    when = (AllOf((creates, setid)), ArgTest(0, "eq", 99))
    prog = build_filter({2: when, 3: ()})
    cases = {
        (0, 0o100, 0o4755): True,
        (0, 0o100, 0o755): False,
        (0, 0o1, 0o4755): False,
        (99, 0, 0): True,
    }
    for args, want in cases.items():
        full = (*args, 0, 0, 0)
        got = evaluate(prog, 2, args=full) == SECCOMP_RET_TRACE
        assert got is want is any(c.holds(full) for c in when), args
    assert evaluate(prog, 3) == SECCOMP_RET_TRACE  # no tests: always


def test_i386_section_is_its_own_and_32_bits_wide() -> None:
    """i386 numbers mean other calls; their tests compare low words only
    (a compat argument is 32 bits, whatever the upper half of the 64-bit
    register holds after int 0x80)."""
    prog = build_filter({5: ()}, i386={7: (ArgTest(1, "ne", 0, bits=64),)})
    x86, ia32 = AUDIT_ARCH_X86_64, AUDIT_ARCH_I386
    assert evaluate(prog, 5, x86) == SECCOMP_RET_TRACE
    assert evaluate(prog, 5, ia32) == SECCOMP_RET_ALLOW
    assert evaluate(prog, 7, x86, (0, 1, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
    assert evaluate(prog, 7, ia32, (0, 1, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
    assert evaluate(prog, 7, ia32, (0, 1 << 32, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
    # Without an i386 section every i386 call traps (the tracer tests'
    # filters), and x32 numbers always do.
    whole = build_filter({5: ()})
    assert all(evaluate(whole, n, ia32) == SECCOMP_RET_TRACE for n in (0, 5, 500))
    assert evaluate(prog, 0x40000000 | 5, x86) == SECCOMP_RET_TRACE


def test_many_conditional_numbers_need_long_jumps() -> None:
    rules = {n: (ArgTest(0, "eq", n),) for n in range(0, 400, 2)}
    prog = build_filter(rules, i386=rules)
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386):
        for n in range(0, 410):
            hit = evaluate(prog, n, arch, (n, 0, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
            miss = evaluate(prog, n, arch, (n + 1, 0, 0, 0, 0, 0)) == SECCOMP_RET_TRACE
            assert hit is (n in rules) and not miss, n


def test_check_filter_finds_a_filter_that_differs() -> None:
    """umld syscalls --check's own check: silent on the generated filter
    (for any features), loud on one that lost a row's tests."""
    assert check_filter(machine_filter(None)) == []
    for feats in (set(), {"live"}, {"hostroot", "vcpus"}):
        assert check_filter(machine_filter(feats), feats) == []
    x86 = lookup_table("x86_64")
    rules = x86.rules()
    rules[x86.by_name("ioctl").nr] = ()  # every ioctl would stop
    wrong = check_filter(build_filter(rules, i386=lookup_table("i386").rules()))
    assert wrong and all(" 16 ioctl " in w for w in wrong), wrong
