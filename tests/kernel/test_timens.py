"""The machine's time namespace (issue 17, LTP clock_gettime03): owned by
the guest's user namespace, so a guest root makes time namespaces of its
own and setns(2)s back into the machine's; and the machine's uptime starts
at its start, nested too (sandbox.c, enter_machine_time)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Compare, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


def test_a_time_namespace_of_the_guests_own(compare: Compare, guest_bin: Path) -> None:
    argv = [str(guest_bin / "timens")]
    native = compare.native(argv)
    assert "setns back: ok" in native.stdout, native.stdout
    guest = compare.guest(argv, f"--bind={guest_bin}")
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr


def _uptime(argv: list[str]) -> float:
    got = run([*argv, "cat", "/proc/uptime"], cwd="/")
    assert got.returncode == 0, got.stderr
    return float(got.stdout.split()[0])


def test_the_machines_uptime_starts_with_it(backend: str) -> None:
    assert _uptime(umld_argv(backend)) < 30
    inner = [sys.executable, "-m", "umld", "run", f"--tracer={backend}", "--net", "none", "--"]
    # Nested: the inner machine's offset adds to the outer's (offsets
    # count from the host's clocks).
    assert _uptime([*umld_argv(backend, "--nest"), *inner]) < 30
