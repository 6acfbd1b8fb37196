"""umld inside umld (issue 16): ``umld run --nest -- umld run -- CMD``.

The outer machine traces the inner umld, whose own ptrace of its guest is
the outer guest kernel's (umld/core/guest_ptrace.py); the inner machine's
namespaces are made inside the outer's.  What ``--nest`` gives the guest
and why is in the README ("Nesting") and sandbox.c (op_nest, pid1_main).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


def inner(backend: str, *options: str) -> list[str]:
    """``umld run`` as a guest runs it (the same interpreter, seen through
    the outer machine's copy-on-write root)."""
    return [sys.executable, "-m", "umld", "run", f"--tracer={backend}", *options, "--"]


HOST_AND_ID = ["sh", "-c", "hostname; id -u"]


def test_nested_run_as_root(backend: str) -> None:
    got = run([*umld_argv(backend, "--nest"), *inner(backend, "--hostname", "inner"), *HOST_AND_ID])
    assert (got.returncode, got.stdout, got.stderr) == (0, "inner\n0\n", "")


def test_nested_run_as_an_ordinary_user(backend: str, ordinary_user: User) -> None:
    argv = ordinary_user.umld_argv(backend, "--nest")
    got = run([*argv, *inner(backend, "--hostname", "inner"), *HOST_AND_ID], cwd=ordinary_user.work)
    assert (got.returncode, got.stdout, got.stderr) == (0, f"inner\n{ordinary_user.uid}\n", "")


def test_the_other_backend_inside(backend: str) -> None:
    other = "python" if backend == "c" else "c"
    got = run([*umld_argv(backend, "--nest"), *inner(other, "--net", "none"), "true"])
    assert (got.returncode, got.stderr) == (0, "")


def test_three_levels(backend: str) -> None:
    # The third machine's root cannot be copy-on-write (overlays stack two
    # deep): a read-only view of the second's, with its own /tmp.
    argv = [
        *umld_argv(backend, "--nest"),
        *inner(backend, "--nest"),
        *inner(backend, "--read-only-root", "--hostname", "third"),
        *HOST_AND_ID,
    ]
    # From "/": the third machine's /tmp is its own, so a working directory
    # below /tmp (a checkout there) would not exist in it.
    got = run(argv, timeout=180, cwd="/")
    assert (got.returncode, got.stdout, got.stderr) == (0, "third\n0\n", "")


def test_three_levels_copy_on_write_fails_with_one_line() -> None:
    argv = [*umld_argv("c", "--nest"), *inner("c", "--nest"), *inner("c", "--net", "none"), "true"]
    got = run(argv, timeout=180)
    assert got.returncode == 125
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert "--read-only-root" in got.stderr


# -- adversarial ---------------------------------------------------------------


def test_without_nest_the_inner_umld_fails_with_one_line(backend: str) -> None:
    got = run([*umld_argv(backend), *inner(backend, "--net", "none"), "true"])
    assert got.returncode == 125
    assert got.stderr.count("\n") == 1 and got.stderr.startswith("umld: "), got.stderr
    assert "--nest" in got.stderr


def test_without_nest_as_an_ordinary_user(ordinary_user: User) -> None:
    argv = ordinary_user.umld_argv("c")
    got = run([*argv, *inner("c", "--net", "none"), "true"], cwd=ordinary_user.work)
    assert got.returncode == 125
    assert got.stderr.count("\n") == 1 and "--nest" in got.stderr, got.stderr


def test_nest_refuses_unsafe_host_ids() -> None:
    got = run([*umld_argv("c", "--nest", "--unsafe-host-ids"), "true"])
    assert got.returncode == 2
    first = got.stderr.splitlines()[0]
    assert first == "umld: --nest and --unsafe-host-ids cannot be used together"


def test_the_uncovered_proc_shows_only_the_machines_processes(backend: str) -> None:
    """/dev/.umld/proc is a procfs of the machine's own pid namespace: no
    host process (this test's own, pid 1 of the host) is in it, and its pid
    1 is the machine's init."""
    script = (
        "ls /dev/.umld/proc | grep -c '^[0-9]'; cat /dev/.umld/proc/1/comm; "
        "cat /dev/.umld/proc/self/status | grep '^NSpid'; "
        f"test -e /dev/.umld/proc/{os.getpid()}/comm && echo host-visible; true"
    )
    got = run([*umld_argv(backend, "--nest"), "sh", "-c", script])
    assert got.returncode == 0, got.stderr
    count, comm, nspid = got.stdout.splitlines()[:3]
    assert int(count) < 10, got.stdout
    assert comm.startswith("umld-"), comm  # the machine's init
    assert len(nspid.split()) == 2, nspid  # the machine's namespace only
    assert "host-visible" not in got.stdout


def test_the_inner_guest_does_not_see_the_uncovered_proc(backend: str) -> None:
    """The inner machine has a /dev of its own: no /dev/.umld unless it
    nests in turn, and its /proc is its own pid namespace's."""
    script = "test -e /dev/.umld && echo seen; ls /proc | grep -c '^[0-9]'"
    got = run([*umld_argv(backend, "--nest"), *inner(backend, "--net", "none"), "sh", "-c", script])
    assert got.returncode == 0, got.stderr
    assert "seen" not in got.stdout
    assert int(got.stdout.split()[-1]) < 6


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned directory every user may search (the tests' own
    temporary directories are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="umld-nest-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_inner_root_is_not_root_of_the_outer_guests_files(open_dir: Path, backend: str) -> None:
    """Run by root, the outer guest's root writes the host directory it is
    given as root does; the inner machine's root is the outer's nobody
    (sandbox.c, become_own_userns): it owns nothing there and may not write."""
    if os.geteuid() != 0:
        pytest.skip("root runs the outer machine")
    shared = open_dir / "shared"
    shared.mkdir(mode=0o755)
    (shared / "file").write_text("root's\n")
    os.chmod(shared / "file", 0o644)
    script = (
        f"stat -c '%u' {shared}/file; "
        f"echo x > {shared}/new 2>/dev/null && echo wrote || echo refused; "
        f"echo y >> {shared}/file 2>/dev/null && echo appended || echo refused"
    )
    outer = run([*umld_argv(backend, "--nest", f"--bind={open_dir}"), "sh", "-c", script])
    assert outer.stdout.splitlines() == ["0", "wrote", "appended"], outer.stderr
    (shared / "new").unlink()
    argv = [*umld_argv(backend, "--nest", f"--bind={open_dir}"), *inner(backend, "--net", "none")]
    got = run([*argv, "sh", "-c", script])
    assert got.stdout.splitlines() == ["65534", "refused", "refused"], got.stderr
    assert not (shared / "new").exists()
    assert (shared / "file").read_text() == "root's\ny\n"
