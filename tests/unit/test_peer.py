"""umld._peer against real peers: this process, a process that is gone,
one in namespaces of its own, one in a cgroup it is told is a machine's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umld import _peer

NOT_GUEST = {"machine_cgroups": (), "is_guest": lambda tid: False}


@pytest.fixture(autouse=True, params=["SO_PEERPIDFD", "pidfd_open"])
def pidfd_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with the peer's pidfd from SO_PEERPIDFD (Linux
    6.5), and as on older kernels, where that option is unknown
    (ENOPROTOOPT: an option number no kernel has) and pidfd_open(2) of the
    SO_PEERCRED pid is the fallback."""
    if request.param == "pidfd_open":
        monkeypatch.setattr(_peer, "SO_PEERPIDFD", 0x7FFF)
    return str(request.param)


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    return srv, path


def test_this_process_is_served() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer, why = _peer.refusal(a, **NOT_GUEST)  # type: ignore[arg-type]
        assert why is None
        assert peer == _peer.Peer(os.getpid(), os.geteuid(), os.getegid())


def test_a_guest_thread_and_a_machines_cgroup_are_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        _, why = _peer.refusal(a, machine_cgroups=(), is_guest=lambda tid: tid == os.getpid())
        assert why == "it is a guest process"
        mine = _peer.cgroup_dirs(os.getpid())
        assert mine and all(os.path.isdir(d) for d in mine), mine
        _, why = _peer.refusal(a, machine_cgroups=mine[:1], is_guest=lambda tid: False)
        assert why == "it runs in a machine's cgroup"
        parent = os.path.dirname(mine[0])
        _, why = _peer.refusal(a, machine_cgroups=[parent], is_guest=lambda tid: False)
        assert why == "it runs in a machine's cgroup"  # a sub-cgroup of a machine's too
        _, why = _peer.refusal(a, machine_cgroups=[mine[0] + "-x"], is_guest=lambda tid: False)
        assert why is None  # a sibling whose name starts alike is not


def test_a_peer_that_is_gone_is_refused(tmp_path: Path) -> None:
    srv, path = _listener(tmp_path)
    with srv:
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r})"
        subprocess.run([sys.executable, "-c", code], check=True)
        conn, _ = srv.accept()
        with conn:
            _, why = _peer.refusal(conn, **NOT_GUEST)  # type: ignore[arg-type]
    assert why is not None and "gone" in why


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_a_peer_in_namespaces_of_its_own_is_refused(tmp_path: Path) -> None:
    srv, path = _listener(tmp_path)
    os.chmod(path, 0o777)
    code = f"import socket, time; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); s.recv(1)"
    # A new user namespace (root in it is us outside) and pid namespace.
    child = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", sys.executable, "-c", code]
    )
    try:
        srv.settimeout(20)
        conn, _ = srv.accept()
        with conn:
            peer, why = _peer.refusal(conn, **NOT_GUEST)  # type: ignore[arg-type]
            assert peer is not None and peer.uid == os.geteuid()  # the same user outside
            assert why is not None and "namespace" in why and "inside a machine" in why, why
            conn.sendall(b"x")
    finally:
        child.wait(10)
        srv.close()


def test_cgroup_dirs_name_existing_directories() -> None:
    start = time.monotonic()
    dirs = _peer.cgroup_dirs(os.getpid())
    assert time.monotonic() - start < 0.5
    for d in dirs:
        assert os.path.isdir(d), d
        procs = Path(d) / "cgroup.procs"
        if procs.exists():
            assert str(os.getpid()) in procs.read_text().split(), d
