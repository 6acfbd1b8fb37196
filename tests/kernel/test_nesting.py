"""umld inside umld (issue 16): ``umld run --nest -- umld run -- CMD``.

The outer machine traces the inner umld, whose own ptrace of its guest is
the outer guest kernel's (umld/core/guest_ptrace.py); the inner machine's
namespaces are made inside the outer's.  What ``--nest`` gives the guest
and why is in the README ("Nesting") and sandbox.c (op_nest, pid1_main).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    given as root does; the inner machine's root is the outer's uid 1
    (sandbox.c, become_own_userns): it owns nothing there and may not write
    (the outer's root is no id of the inner's: the overflow id 65534)."""
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


def _until(condition: str) -> str:
    """Shell: wait for CONDITION, 30 s at most."""
    return f"i=0; until {condition} || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done; "


def _inner_export_script(backend: str, mount: Path, then: str = "") -> str:
    """An outer guest's shell: an inner machine exported at MOUNT, read and
    tuned by the outer guest through that export while the inner runs."""
    options = ("--net", "none", "--mount", str(mount), "--hostname", "inner")
    waits_for_change = _until('[ "$(hostname)" = changed ]') + "hostname"
    return (
        f"{' '.join(inner(backend, *options))} sh -c '{waits_for_change}' & "
        + _until(f"cat {mount}/config/hostname 2>/dev/null")
        + then
        + f"echo changed > {mount}/config/hostname; wait $!; echo rc=$?"
    )


def test_the_inner_export_is_read_and_tuned_inside_the_outer_machine(
    backend: str, open_dir: Path
) -> None:
    """``umld run --mount`` inside a machine: the inner export is a FUSE
    mount in the outer guest's mount namespace, served by the inner umld;
    the outer guest reads its config/ and writes a setting the inner
    guest then sees."""
    mount = open_dir / "inner"
    mount.mkdir()
    argv = [*umld_argv(backend, "--nest", f"--bind={open_dir}"), "sh", "-c"]
    got = run([*argv, _inner_export_script(backend, mount)], timeout=120, cwd="/")
    assert (got.stdout, got.returncode) == ("inner\nchanged\nrc=0\n", 0), got.stderr


def test_the_host_reading_the_inner_export_is_refused_at_once(open_dir: Path) -> None:
    """Through the outer export's fs/, the host meets the inner export as
    the kernel lets it: a FUSE mount made in a user namespace serves only
    that namespace and those below it, and only callers whose ids it maps
    (fuse_allow_current_process, fuse_get_req: EACCES, EOVERFLOW).  The
    reader gets that error at once; nothing waits and the machines go
    on (the README, "Nesting")."""
    mount, export = open_dir / "inner", open_dir / "export"
    mount.mkdir()
    export.mkdir()
    ready, done = open_dir / "ready", open_dir / "done"
    then = f"touch {ready}; " + _until(f"[ -e {done} ]")
    argv = [*umld_argv("c", "--nest", f"--bind={open_dir}", f"--mount={export}"), "sh", "-c"]
    proc = subprocess.Popen(
        [*argv, _inner_export_script("c", mount, then)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.communicate(timeout=60)
        start = time.monotonic()
        with pytest.raises(OSError) as refused:
            (export / "fs" / str(mount).lstrip("/") / "config" / "hostname").read_text()
        assert refused.value.errno in (errno.EACCES, errno.EOVERFLOW)
        assert time.monotonic() - start < 5
        done.touch()
        out, err = proc.communicate(timeout=60)
        assert (out, proc.returncode) == ("inner\nchanged\nrc=0\n", 0), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_inner_machine_has_a_machines_ids(backend: str) -> None:
    """Run by root, the inner machine has the ids a machine has (65535,
    the outer's 1..65535 in one piece, sandbox.c nested_uids): chown(2)
    to its users and setgroups(2) work in it, getgroups(2) keeps the
    order setgroups gave (the kernel sorts by host id), and the outer
    reads that map of an inner process (a uid_map's second field is in
    the reader's namespace)."""
    if os.geteuid() != 0:
        pytest.skip("root runs the outer machine")
    in_inner = (
        "cd /tmp && touch a b c && chown 1000:1000 a && chown 65534:65534 b && "
        "stat -c %u:%g a b c && "
        'python3 -c "import os; os.setgroups([0, 1, 2]); print(os.getgroups())"; '
        "exec sleep 30"
    )
    script = (
        f"{' '.join(inner(backend, '--net', 'none'))} sh -c '{in_inner}' & "
        + _until("pgrep -x sleep >/dev/null")
        + "tr -s ' ' < /proc/$(pgrep -x sleep)/uid_map; kill $(pgrep -x sleep); wait"
    )
    got = run([*umld_argv(backend, "--nest"), "sh", "-c", script], cwd="/")
    assert got.stdout.splitlines() == [
        *("1000:1000", "65534:65534", "0:0", "[0, 1, 2]"),  # the inner's view
        " 0 1 65535",  # the outer's
    ], got.stderr
