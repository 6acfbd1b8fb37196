"""oom_score_adj and the guest's capabilities (issue 17: LTP's harness
lowers oom_score_adj to -1000 and warned in 528 of 696 runs).

* The guest's root holds no capability its caller's bounding set lacks
  (sandbox.c, drop_what_the_caller_lacks): a host that runs umld without
  CAP_SYS_RESOURCE (this project's CI) gives the guest none either, so a
  program that checks its capabilities behaves as natively.
* ``--limits-oom-floor N`` lets the guest's processes lower their score
  to N, where umld may (root with CAP_SYS_RESOURCE) and a memory limit of
  the machine's own keeps its OOMs inside it; otherwise one line says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Compare, User, run, umld_argv
from umld.core import procfs

pytestmark = pytest.mark.uses_ptrace


def _bounding(text: str) -> int:
    line = next(x for x in text.splitlines() if x.startswith("CapBnd:"))
    return int(line.split()[1], 16)


def test_the_guest_holds_no_capability_its_caller_lacks(backend: str) -> None:
    caller = _bounding(Path("/proc/self/status").read_text())
    got = run([*umld_argv(backend), "cat", "/proc/self/status"])
    assert got.returncode == 0, got.stderr
    guest = _bounding(got.stdout)
    assert guest & ~caller == 0, f"{guest:#x} has more than {caller:#x}"
    assert guest != 0


def test_as_an_ordinary_user(backend: str, ordinary_user: User) -> None:
    native = run(ordinary_user.argv(["cat", "/proc/self/status"]))
    got = run([*ordinary_user.umld_argv(backend), "cat", "/proc/self/status"])
    assert got.returncode == 0, got.stderr
    assert _bounding(got.stdout) & ~_bounding(native.stdout) == 0


def test_ltps_oom_protection_as_natively(compare: Compare, guest_bin: Path) -> None:
    """Where umld may lower scores, the machine gets a floor (and a memory
    limit) and the write succeeds as natively; where it may not (CI), the
    guest lacks CAP_SYS_RESOURCE as its caller does and moves on."""
    argv = [str(guest_bin / "oom")]
    native = compare.native(argv)
    options = [f"--bind={guest_bin}"]
    if procfs.has_capability(procfs.CAP_SYS_RESOURCE):
        options += ["--memory=1G", "--limits-oom-floor=-1000"]
    guest = compare.guest(argv, *options)
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr
    assert "WARN" not in native.stdout


def test_a_floor_without_memory_is_a_usage_error(backend: str) -> None:
    got = run([*umld_argv(backend, "--limits-oom-floor=-1000"), "true"])
    assert got.returncode == 2
    assert got.stderr.splitlines()[0].startswith("umld: --limits-oom-floor below 0 needs")
    bad = run([*umld_argv(backend, "--limits-oom-floor=-1001"), "true"])
    assert bad.returncode == 2
    assert "from -1000 to 1000" in bad.stderr.splitlines()[0]


def test_a_floor_where_umld_cannot_lower_scores(backend: str, ordinary_user: User) -> None:
    """An ordinary user, or root without CAP_SYS_RESOURCE: one line, 125."""
    argv = ordinary_user.umld_argv(backend, "--memory=1G", "--limits-oom-floor=-500")
    got = run([*argv, "true"], cwd=ordinary_user.work)
    assert got.returncode == 125
    assert got.stderr.count("\n") == 1 and "CAP_SYS_RESOURCE" in got.stderr, got.stderr


@pytest.mark.skipif(
    not procfs.has_capability(procfs.CAP_SYS_RESOURCE),
    reason="umld's caller lacks CAP_SYS_RESOURCE here (the floor is refused: tested above)",
)
def test_the_floor_holds(backend: str) -> None:
    script = (
        "cat /proc/self/oom_score_adj; echo -500 > /proc/self/oom_score_adj; "
        "cat /proc/self/oom_score_adj; echo -501 > /proc/self/oom_score_adj 2>/dev/null "
        "|| echo refused; cat /proc/self/oom_score_adj"
    )
    got = run([*umld_argv(backend, "--memory=1G", "--limits-oom-floor=-500"), "sh", "-c", script])
    start = Path("/proc/self/oom_score_adj").read_text().strip()
    assert got.stdout.splitlines() == [start, "-500", "refused", "-500"], got.stderr
