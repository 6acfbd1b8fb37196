"""adjtimex(2) and clock_adjtime(2) validated as Linux validates them
(issue 17, LTP adjtimex02/03, clock_adjtime02): EFAULT, then EINVAL or
EPERM in the kernel's order, and the read-only query ADJ_OFFSET_SS_READ
allowed without privilege.  Nothing here changes the host clock, natively
or under umld (tests/guest/adjtime.c); the outputs are compared, as root
and as an ordinary user (who gets EPERM before any EINVAL but for
ADJ_ADJTIME alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Compare, User, run

pytestmark = pytest.mark.uses_ptrace


def test_as_root(compare: Compare, guest_bin: Path) -> None:
    argv = [str(guest_bin / "adjtime")]
    native = compare.native(argv)
    assert "tick-low: EINVAL" in native.stdout and "ss-read: ok" in native.stdout
    guest = compare.guest(argv, f"--bind={guest_bin}")
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr


def test_as_an_ordinary_user(backend: str, ordinary_user: User, guest_bin: Path) -> None:
    prog = ordinary_user.work / "adjtime"
    prog.write_bytes((guest_bin / "adjtime").read_bytes())
    prog.chmod(0o755)
    native = run(ordinary_user.argv([str(prog)]), cwd=ordinary_user.work)
    assert "tick-low: EPERM" in native.stdout and "ss-read: ok" in native.stdout
    guest = run([*ordinary_user.umld_argv(backend), str(prog)], cwd=ordinary_user.work)
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr
