"""The network tests' world: "the internet", a network namespace the test
creates and joins to the host with a veth pair (10.231.0.1/24 on the
host's side, 10.231.0.2/24 inside), where netpeer.py serves HTTP and TCP
data.  Guests reach it the way they reach anything beyond the host: in
``--net user`` through pasta's sockets on the host.  The only addresses
used are loopback and these."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_for

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
