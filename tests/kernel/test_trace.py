"""Full-trace mode and the per-machine counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Compare, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


def test_full_trace_logs_every_call_and_changes_nothing(compare: Compare, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    argv = ["sh", "-c", "echo hello; cat /proc/version > /dev/null; exit 4"]
    native = compare.native(argv)
    guest = compare.guest(argv, "--trace-output", str(out))
    assert (guest.returncode, guest.stdout) == (native.returncode, native.stdout)
    lines = out.read_text().splitlines()
    text = "\n".join(lines)
    # Passthrough calls appear with their decoded arguments and results.
    assert "write(1, 'hello\\n', 6) = 6" in text
    assert any(line.split()[1].startswith("openat(") and "/proc/version" in line for line in lines)
    assert any("exit_group(4)" in line for line in lines)
    # Many more calls than the handful that trap without tracing.
    assert len(lines) > 30


def test_trace_marks_emulated_calls(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    r = run([*umld_argv(backend, "--hostname", "traced", "--trace-output", str(out)), "hostname"])
    assert r.stdout == "traced\n"
    assert any(
        line.split()[1].startswith("uname(") and line.endswith("= 0 (umld)")
        for line in out.read_text().splitlines()
    )


def test_stats_count_trapped_calls_and_processes(backend: str) -> None:
    r = run([*umld_argv(backend, "--stats"), "sh", "-c", "uname -n; uname -n; (true); exit 0"])
    assert r.returncode == 0
    line = r.stderr.strip().splitlines()[-1]
    assert "2 trapped syscalls (uname 2)" in line, line
    assert " 3 processes" in line or "4 processes" in line, line


def test_untrapped_calls_do_not_stop(backend: str) -> None:
    # 20k getppid calls: none traps without --trace.
    code = "import os\nfor _ in range(20000): os.getppid()\n"
    r = run([*umld_argv(backend, "--stats"), "python3", "-c", code])
    assert r.returncode == 0
    assert "getppid" not in r.stderr
