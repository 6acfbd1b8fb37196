"""The i386 ABI goes through the guest kernel, not around it.

A 32-bit program (tests/guest/abi32.c, gcc -m32) sees the machine as a
64-bit one does: its uname(2) and the old i386 unames give the machine's
name, sched_getaffinity(2) its CPU count (a mask of 32-bit longs), and the
calls that would set the host clock are refused.  x32 calls (which this
kernel may not even offer) are refused with ENOSYS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


@pytest.fixture(scope="module")
def abi32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("abi32") / "abi32"
    built = subprocess.run(
        ["gcc", "-m32", "-O1", "-Wall", "-Werror", "-o", str(out), str(GUEST_SRC / "abi32.c")],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build 32-bit programs (gcc-multilib): {built.stderr.strip()}")
    return out


def test_a_32_bit_program_sees_the_machine(backend: str, abi32: Path) -> None:
    modes = ["uname", "olduname", "oldolduname", "nproc"]
    native = run([str(abi32), *modes])
    host = os.uname().nodename
    assert native.stdout.splitlines()[0] == f"uname={host} x86_64"
    r = run([*umld_argv(backend, "--hostname", "guest-i386", "--vcpus", "1"), str(abi32), *modes])
    assert (r.returncode, r.stdout) == (
        0,
        "uname=guest-i386 x86_64\n"
        "olduname=0 guest-i386 x86_64\n"
        "oldolduname=0 guest-i3 x86_64\n"  # fields of 9 bytes, as Linux cuts them
        "nproc=1\n",
    ), r.stderr


def test_i386_calls_cannot_set_the_host_clock(backend: str, abi32: Path) -> None:
    """stime, settimeofday and clock_settime64 (with the time it is, so
    that nothing would change if one went through) fail with EPERM, even
    when umld runs as root."""
    r = run([*umld_argv(backend), str(abi32), "clock"])
    assert (r.returncode, r.stdout) == (0, "clock=1,1,1\n"), r.stderr


def test_x32_calls_are_refused(backend: str, guest_bin: Path) -> None:
    r = run([*umld_argv(backend), str(guest_bin / "tracer_calls"), "x32"])
    assert (r.returncode, r.stdout) == (0, "x32=-38\n"), r.stderr  # ENOSYS


def test_the_tables_filter_checks_itself() -> None:
    """umld syscalls --check runs the generated filter over both tables."""
    r = run([sys.executable, "-m", "umld", "syscalls", "--check"])
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    assert "stops exactly what the tables say" in r.stderr
