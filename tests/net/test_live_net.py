"""Live control of the machine's network through its export: the link
down stalls a transfer and up resumes it, the counters follow the bytes,
net/interfaces shows the interface, bad values are EINVAL with the reason
in events."""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, wait_for
from tests.net.conftest import Internet

pytestmark = pytest.mark.uses_ptrace

#: The guest's side: reads commands on stdin, prints one line per result.
DRIVER = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "send":
        n = int(args[0])
        with socket.create_connection((host, port)) as s:
            s.sendall(b"sink\n" + b"y" * n)
            s.shutdown(socket.SHUT_WR)
            print("sent", s.makefile().readline().strip(), flush=True)
    elif cmd == "recv":
        n, got = int(args[0]), 0
        with socket.create_connection((host, port)) as s:
            s.sendall(b"send %d\n" % n)
            while chunk := s.recv(1 << 16):
                got += len(chunk)
        print("received", got, flush=True)
    elif cmd == "slow":
        got, mark = 0, 0
        with socket.create_connection((host, port)) as s:
            s.sendall(b"slow\n")
            while got < int(args[0]):
                got += len(s.recv(1 << 16))
                if got - mark >= 1 << 16:
                    mark = got
                    print("progress", got, flush=True)
        print("done", flush=True)
"""


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


@pytest.fixture(params=["root", "user"])
def live(
    request: pytest.FixtureRequest, internet: Internet, ordinary_user: User, tmp_path: Path
) -> Iterator[Live]:
    who = None if request.param == "root" else ordinary_user
    base = Path(f"/tmp/umld-livenet-{os.getpid()}-{tmp_path.name}")
    base.mkdir(mode=0o755)
    mnt = base / "mnt"
    mnt.mkdir()
    if who is not None:
        os.chown(mnt, who.uid, who.gid)
    argv = [sys.executable, "-m", "umld", "run", f"--mount={mnt}", "--", sys.executable, "-c",
            DRIVER, internet.addr, str(internet.data_port)]  # fmt: skip
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


def test_interfaces_and_counters(live: Live) -> None:
    lines = live.read("net/interfaces").splitlines()
    names = [ln.split()[0] for ln in lines]
    assert names == ["lo", "eth0"], lines
    _name, mac, _state, *addrs = lines[1].split()
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac) and addrs, lines
    n = 8 << 20
    before = live.counters("eth0")
    assert live.ask(f"send {n}") == f"sent {n}"
    middle = live.counters("eth0")
    assert live.ask(f"recv {n}") == f"received {n}"
    after = live.counters("eth0")
    sent = middle["tx_bytes"] - before["tx_bytes"]
    received = after["rx_bytes"] - middle["rx_bytes"]
    # The payload plus TCP/IP headers of 64 KiB frames (pasta's MTU): within 5%.
    assert n <= sent <= n * 1.05, (before, middle)
    assert n <= received <= n * 1.05, (middle, after)
    metrics = live.read("metrics.prom")
    assert re.search(
        r'umld_net_transmit_bytes_total\{machine="[^"]+",interface="eth0"\} \d+', metrics
    )


def test_link_down_stalls_and_up_resumes(live: Live) -> None:
    live.inp.write(f"slow {64 << 20}\n")
    live.inp.flush()
    assert live.line(30).startswith("progress")
    live.set("net/link", "down")
    assert " DOWN " in live.read("net/interfaces")
    # What was on its way when the link went down may still arrive; then
    # nothing does (a stall can only be seen over some time).
    while live.line(0.5):
        pass
    assert live.line(1.5) == "", "data arrived with the link down"
    live.set("net/link", "up")
    assert live.line(30).startswith("progress"), "the transfer did not resume"


BAD = (
    ("net/link", "sideways", "'up' or 'down'"),
    ("net/address", "10.0.0.300/24", "not an address in CIDR form"),
    ("net/address", "10.0.0.3", "with its prefix length"),
)


def test_bad_values_are_einval_with_the_reason(live: Live) -> None:
    for key, value, _why in BAD:
        with pytest.raises(OSError) as exc:
            live.set(key, value)
        assert exc.value.errno == errno.EINVAL
    # Unset, it shows the interface's address (pasta's: the host's).
    shown = live.read("config/net/address").strip()
    assert shown and shown in live.read("net/interfaces").split()
    live.set("net/address", "10.231.5.5/24")
    assert live.read("config/net/address") == "10.231.5.5/24\n"
    assert "10.231.5.5/24" in live.read("net/interfaces")
    seen = live.events("net/address=10.231.5.5/24 by export")
    for key, value, why in BAD:
        assert f"{key}: rejected {value!r} from export: " in seen and why in seen, (why, seen)
