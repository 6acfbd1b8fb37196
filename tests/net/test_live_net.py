"""Live control of the machine's network through its export: the link
down stalls a transfer and up resumes it, the counters follow the bytes,
net/interfaces shows the interface, bad values are EINVAL with the reason
in events."""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.net.conftest import Internet, Live, live_machine

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


@pytest.fixture(params=["root", "user"])
def live(
    request: pytest.FixtureRequest, internet: Internet, ordinary_user: User, tmp_path: Path
) -> Iterator[Live]:
    who = None if request.param == "root" else ordinary_user
    guest = [sys.executable, "-c", DRIVER, internet.addr, str(internet.data_port)]
    with live_machine(who, tmp_path, guest) as m:
        yield m


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
