"""The network tests' world: "the internet", a network namespace the test
creates and joins to the host with a veth pair (10.231.0.1/24 on the
host's side, 10.231.0.2/24 inside), where netpeer.py serves HTTP and TCP
data.  Guests reach it the way they reach anything beyond the host: in
``--net user`` through pasta's sockets on the host.  The only addresses
used are loopback and these."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import User, wait_for

HERE = Path(__file__).resolve().parent
HOST_SIDE = "10.231.0.1"
INSIDE = "10.231.0.2"


@dataclass
class Internet:
    netns: str
    addr: str
    http_port: int
    data_port: int
    root: Path

    def url(self, name: str) -> str:
        return f"http://{self.addr}:{self.http_port}/{name}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("ip(8) is not installed (Debian package iproute2)")
    tag = f"{os.getpid() % 100000}"
    netns, veth = f"umld-inet-{tag}", f"uinet{tag}"
    _ip("netns", "add", netns)
    root = Path(f"/tmp/umld-inet-{tag}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    (root / "hello.txt").write_text("hello from the internet\n")
    proc = None
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("addr", "add", f"{HOST_SIDE}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "addr", "add", f"{INSIDE}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(HERE / "netpeer.py"), str(root),
             "8000", "9000"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        wait_for(lambda: _reaches(INSIDE, 8000), "the internet's HTTP server")
        yield Internet(netns, INSIDE, 8000, 9000, root)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _reaches(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=2).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_port() -> int:
    """A port a guest's server may use and have forwarded automatically:
    below the ephemeral range (umld/core/forwarder.py leaves that range
    alone), free on the host for TCP and UDP on both loopback addresses.
    Random, so that suites run side by side rarely pick the same."""
    import random

    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        try:
            for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(family, kind) as s:
                        s.bind((addr, port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port below the ephemeral range")


class Live:
    """A running machine with its export at ``mnt``, read and written by
    its owner (an ordinary user's FUSE mount is its alone)."""

    def __init__(self, proc: subprocess.Popen[str], mnt: Path, who: User | None) -> None:
        self.proc, self.mnt, self.who = proc, mnt, who
        assert proc.stdout is not None and proc.stdin is not None
        self.out, self.inp = proc.stdout, proc.stdin

    def ask(self, line: str) -> str:
        self.inp.write(line + "\n")
        self.inp.flush()
        return self.line(60)

    def line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.out], [], [], timeout)
        return self.out.readline().strip() if ready else ""

    def _as_owner(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["sh", "-c", script, "sh", *args]
        return subprocess.run(
            self.who.argv(argv) if self.who else argv, capture_output=True, text=True, timeout=30
        )

    def read(self, name: str) -> str:
        r = self._as_owner('cat "$1"', str(self.mnt / name))
        assert r.returncode == 0, r.stderr
        return r.stdout

    def counters(self, iface: str) -> dict[str, int]:
        text = self.read("status")
        return {k: int(v) for k, v in re.findall(rf"^net\.{iface}\.(\w+): (\d+)$", text, re.M)}

    def set(self, key: str, value: str) -> None:
        """Writes config/KEY; OSError(EINVAL) when it is refused."""
        r = self._as_owner(
            '/usr/bin/printf "%s\\n" "$2" > "$1"', str(self.mnt / "config" / key), value
        )
        if r.returncode != 0:
            assert "Invalid argument" in r.stderr, r.stderr
            raise OSError(errno.EINVAL, r.stderr.strip())

    def events(self, until: str) -> str:
        """The event stream up to the line with ``until``."""
        r = self._as_owner(
            'grep -m1 -F "$2" "$1" >/dev/null; echo', str(self.mnt / "events"), until
        )
        assert r.returncode == 0, r.stderr
        return self.read_events()

    def read_events(self) -> str:
        # The stream replays what happened, then follows: a timeout ends it.
        argv = ["timeout", "1", "cat", str(self.mnt / "events")]
        r = subprocess.run(self.who.argv(argv) if self.who else argv, capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        return r.stdout


@contextlib.contextmanager
def live_machine(
    who: User | None, tmp_path: Path, guest: list[str], options: Sequence[str] = ()
) -> Iterator[Live]:
    """``umld run --mount [OPTIONS]`` of ``guest`` (its stdin and stdout the
    test's, its first line "ready"), as root or as ``who``, once its export
    is up."""
    base = Path(f"/tmp/umld-livenet-{os.getpid()}-{tmp_path.name}")
    base.mkdir(mode=0o755)
    mnt = base / "mnt"
    mnt.mkdir()
    if who is not None:
        os.chown(mnt, who.uid, who.gid)
    argv = [sys.executable, "-m", "umld", "run", f"--mount={mnt}", *options, "--", *guest]
    with subprocess.Popen(
        who.argv(argv) if who else argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    ) as proc:
        m = Live(proc, mnt, who)
        try:
            assert m.line(60) == "ready", proc.stderr.read() if proc.stderr else ""
            wait_for(lambda: m._as_owner('test -e "$1"', str(mnt / "net/interfaces")).returncode
                     == 0, "the export")  # fmt: skip
            yield m
        finally:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            mnt.rmdir()
            base.rmdir()
