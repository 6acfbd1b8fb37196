"""A machine never sees the daemon's control socket nor any umld export,
whatever ``--mount DIR`` is chosen: here a DIR outside /run and /tmp (the
guest's own ramdisks would hide those anyway), in the host tree that every
machine sees read-only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_daemon import (  # noqa: F401 (usable: a fixture)
    Daemon,
    N,
    remove_state,
    socket_path,
    start_daemon,
    stop_daemon,
    usable,
)

pytestmark = [pytest.mark.uses_ptrace, pytest.mark.uses_fuse]

#: The machine's name: the test run's prefix, so that its state (a named
#: machine keeps its upper layer) is removed with the others'.
WEB = N("web")


@pytest.fixture
def daemon_outside_run(usable: None) -> Iterator[Daemon]:  # noqa: F811
    base = Path("/var/tmp") / f"umld-hidden-{os.getpid()}-{os.urandom(3).hex()}"
    base.mkdir(mode=0o700)
    (base / "defs").mkdir()
    (base / "defs" / f"{WEB}.toml").write_text('command = ["sleep", "1000"]\n')
    d = start_daemon(base)
    try:
        yield d
    finally:
        stop_daemon(d)
        shutil.rmtree(base, ignore_errors=True)
        remove_state(WEB)


def test_socket_and_exports_are_not_in_reach_of_a_machine(daemon_outside_run: Daemon) -> None:
    d = daemon_outside_run
    sock = socket_path(d.mount)
    assert sock.is_socket() and (d.mount / WEB / "status").exists()
    probe = (
        "import os, socket, stat, sys\n"
        "mount, sock = sys.argv[1:]\n"
        "print('export:', sorted(os.listdir(mount)))\n"
        "print('socket:', stat.S_ISSOCK(os.stat(sock).st_mode))\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sock); print('connect: yes')\n"
        "except OSError as e:\n"
        "    print('connect: no', e.errno)\n"
    )
    r = d.umld("exec", WEB, "--", "python3", "-c", probe, str(d.mount), str(sock))
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "export: []", r
    assert lines[1] == "socket: False", r
    assert lines[2].startswith("connect: no"), r
