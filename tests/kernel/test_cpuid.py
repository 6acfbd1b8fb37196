"""CPUID of the machine's own (issue 15, setting ``cpuid``).

tests/guest/cpuid.c prints leaf 1's logical processors and hypervisor
bit, the signature of leaf 0x40000000, leaf 0xB subleaf 1's logical
processors and leaf 0.  With ``--cpuid own`` they are the machine's (in
the first process, a child after fork, a program after execve); without
it, exactly the host's (the native run's output).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


def _cpuid_fault() -> bool:
    with open("/proc/cpuinfo") as f:
        return " cpuid_fault" in f.read()


needs_fault = pytest.mark.skipif(not _cpuid_fault(), reason="no cpuid_fault on this CPU")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpuid") / "cpuid"
    cc = ["gcc", "-O1", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([*cc, "-o", str(out), str(GUEST_SRC / "cpuid.c")], check=True)
    return out


def _leaf0(text: str) -> str:
    m = re.search(r"^leaf0=.*$", text, re.M)
    assert m is not None, text
    return m.group(0)


@needs_fault
@pytest.mark.parametrize("mode", ["", "fork", "exec"])
def test_own_cpuid_shows_the_machines_vcpus_and_umld(backend: str, guest: Path, mode: str) -> None:
    native = run([str(guest)])
    r = run(
        [
            *umld_argv(backend, "--vcpus", "6", "--cpuid", "own"),
            str(guest),
            *[mode][: 1 if mode else 0],
        ]
    )
    assert r.returncode == 0, r.stderr
    head = "logical=6 hypervisor=1\nsignature=umldumldumld\nleafb1=6\n"
    assert r.stdout.startswith(head), r.stdout
    # Every other leaf is the host's.
    assert _leaf0(r.stdout) == _leaf0(native.stdout)


def test_host_cpuid_by_default(backend: str, guest: Path) -> None:
    native = run([str(guest)])
    r = run([*umld_argv(backend, "--vcpus", "6"), str(guest)])
    assert (r.returncode, r.stdout) == (0, native.stdout), r.stderr


@needs_fault
def test_the_guests_own_cpuid_faulting_still_faults(backend: str, guest: Path) -> None:
    native = run([str(guest), "fault"])
    assert native.returncode == -signal.SIGSEGV
    assert native.stdout == "get=1 set=0 get=0\n"
    r = run([*umld_argv(backend, "--cpuid", "own"), str(guest), "fault"])
    assert (r.returncode, r.stdout) == (128 + signal.SIGSEGV, native.stdout), r.stderr


MACHINE = "logical=6 hypervisor=1\nsignature=umldumldumld\nleafb1=6\n"


@needs_fault
def test_a_guest_cannot_turn_the_emulation_off(backend: str, guest: Path) -> None:
    """arch_prctl(ARCH_SET_CPUID, 1) (CPUID not to fault) succeeds as it
    does natively, and CPUID still answers the machine's values: the
    guest's own setting is virtual."""
    native = run([str(guest), "unfault"])
    assert native.stdout.startswith("set=0\n"), native.stdout
    r = run([*umld_argv(backend, "--vcpus", "6", "--cpuid", "own"), str(guest), "unfault"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("set=0\n" + MACHINE), r.stdout


@needs_fault
def test_own_cpuid_as_an_ordinary_user(backend: str, guest: Path, ordinary_user: User) -> None:
    """The same for a machine an ordinary user runs."""
    mine = ordinary_user.work / "cpuid"
    shutil.copy(guest, mine)
    os.chown(mine, ordinary_user.uid, ordinary_user.gid)
    argv = ordinary_user.umld_argv(backend, "--vcpus", "6", "--cpuid", "own")
    r = run([*argv, str(mine), "fork"])
    assert (r.returncode, r.stdout.startswith(MACHINE)) == (0, True), (r.stdout, r.stderr)
    r = run([*ordinary_user.umld_argv(backend, "--vcpus", "6"), str(mine)])
    assert r.stdout == run([str(guest)]).stdout, r.stderr
