"""Fixtures for the export tests: the demo server (serve_demo.py) in a subprocess.

pyfuse3 serves one mount per process, and a process must never touch its
own mount, so the server always runs apart from pytest; the tests use the
mount with plain syscalls and real tools.  Servers are always stopped and
unmounted afterwards, even when a test kills one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def fuse_unavailable() -> str | None:
    """Why the tests cannot mount, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as e:
        return f"the export extra is not installed: {e}"
    return None


def mounted(mnt: Path) -> bool:
    """Whether /proc/self/mountinfo lists a mount at ``mnt``."""
    target = str(mnt).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    mnt: Path
    host: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_server(mnt: Path, host: Path, *options: str, timeout: float = 10.0) -> Server:
    """Start serve_demo at ``mnt`` over ``host``; return once it is mounted."""
    stderr = mnt.parent / f"{mnt.name}.server.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuse.serve_demo", str(mnt), str(host), *options],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    server = Server(proc, mnt, host, stderr)
    deadline = time.monotonic() + timeout
    while not mounted(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(server, mnt)
            raise RuntimeError(f"the demo server did not mount {mnt}:\n{server.log()}")
        time.sleep(0.01)
    return server


def stop_server(server: Server, mnt: Path) -> None:
    """Stop the server (SIGTERM, then SIGKILL) and make sure nothing stays mounted."""
    if server.alive():
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    if mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)


@pytest.fixture(scope="session")
def fuse_ok() -> None:
    reason = fuse_unavailable()
    if reason is not None:
        pytest.skip(f"no FUSE here: {reason}")


def _host_tree(host: Path) -> None:
    """The tree the HostTree exports: with its own /etc/hostname and links out."""
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "hostname").write_text("guest-host\n")
    (host / "sub" / "dir").mkdir(parents=True)
    (host / "abs").symlink_to("/etc/hostname")
    (host / "sub" / "dir" / "rel").symlink_to("../../../../../../../etc/hostname")
    (host / "sub" / "up").symlink_to("../../../../..")
    (host / "sub" / "root").symlink_to("/")


def _server(tmp: Path, *options: str, host: Path | None = None) -> Iterator[Server]:
    mnt = tmp / "mnt"
    mnt.mkdir()
    if host is None:
        host = tmp / "host"
        host.mkdir()
        _host_tree(host)
    server = start_server(mnt, host, *options)
    try:
        yield server
    finally:
        stop_server(server, mnt)


@pytest.fixture(scope="module")
def demo(fuse_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module, its ticker thread running."""
    yield from _server(tmp_path_factory.mktemp("export"), "--tick", "0.2")


@pytest.fixture
def small_ring(fuse_ok: None, tmp_path: Path) -> Iterator[Server]:
    """A server whose event log keeps 5 lines, without ticks."""
    yield from _server(tmp_path, "--ring", "5")


@pytest.fixture
def fresh(fuse_ok: None, tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own (to kill, say)."""
    yield from _server(tmp_path)


@pytest.fixture
def around_itself(fuse_ok: None, tmp_path: Path) -> Iterator[Server]:
    """A server whose host tree contains its own mountpoint (a guest whose
    root is the host's /)."""
    (tmp_path / "file").write_text("beside the mount\n")
    yield from _server(tmp_path, host=tmp_path)
