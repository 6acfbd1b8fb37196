"""The markers skip with a reason where the host cannot (tests/conftest.py).

A session of pytest is run where the host refuses ptrace (a seccomp filter
around it that makes ptrace(2) fail with EPERM, as a container runtime's
profile does) or has no usable FUSE (a private mount namespace in which
/dev/fuse is /dev/null): the ``uses_ptrace`` and ``uses_fuse`` tests it
runs are skipped with the reason, none fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Installs a filter that makes ptrace(2) fail with EPERM, then execs argv.
NO_PTRACE = """
import ctypes, errno, os, struct, sys
prog = b"".join(struct.pack("=HBBI", *i) for i in [
    (0x20, 0, 0, 0),                         # A = seccomp_data.nr
    (0x15, 0, 1, 101),                       # nr == ptrace ?
    (0x06, 0, 0, 0x00050000 | errno.EPERM),  # SECCOMP_RET_ERRNO | EPERM
    (0x06, 0, 0, 0x7FFF0000),                # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0           # PR_SET_NO_NEW_PRIVS
assert libc.syscall(317, 1, 0, ctypes.byref(fprog)) == 0  # seccomp(SET_MODE_FILTER)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _pytest(tmp_path: Path, *tests: str) -> list[str]:
    """A child session of pytest on ``tests``, reporting skips."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'basetemp'}",
        *tests,
    ]


def _outcome(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr


def test_uses_ptrace_skips_where_ptrace_is_refused(tmp_path: Path) -> None:
    tests = [
        "tests/tracer/test_platform.py::test_true_execs_then_exits",
        "tests/kernel/test_run.py::test_orphans_reparent_to_first_process",
    ]
    p = subprocess.run(
        [sys.executable, "-c", NO_PTRACE, *_pytest(tmp_path, *tests)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 skipped" in _outcome(p), p.stdout
    assert " failed" not in p.stdout and " error" not in p.stdout
    for backend in ("c", "python"):
        assert (
            f"uses_ptrace: the {backend!r} tracer cannot run here: "
            "ptrace(PTRACE_SEIZE) of a child was refused: Operation not permitted"
        ) in p.stdout, p.stdout


def test_uses_fuse_skips_without_a_usable_fuse(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is missing (Debian package util-linux)")
    # A mount namespace of our own (a user namespace too when not root):
    # the bind over /dev/fuse is seen by the child session alone.
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    test = "tests/daemon/test_daemon.py::test_ready_status_is_reported"
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    p = subprocess.run(
        [
            "unshare",
            *userns,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *_pytest(tmp_path, test),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "unshare failed" in p.stderr or "mount:" in p.stderr:
        pytest.skip(f"no private mount namespace here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 skipped" in _outcome(p), p.stdout
    assert (
        "uses_fuse: no usable FUSE here: /dev/fuse is not the FUSE device (character device 10:229)"
    ) in p.stdout, p.stdout
