"""Automatic port forwarding (--net user, net/forward auto): a server the
guest starts is reached from the host's loopback at the same port while it
listens, and only there; a host's port in use stays the host's; a flood of
listeners takes at most ports.MAX_PORTS of the host's; net/forward none
closes them live.  Real servers in real guests, reached by the test from
the host."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, wait_for
from tests.net.conftest import Live, free_port, live_machine, server_port
from umld.core.ports import MAX_PORTS

pytestmark = pytest.mark.uses_ptrace

#: The guest: starts and stops servers on command, one line "ok" each.
SERVERS = r"""
import socket, sys, threading
servers = {}

def tcp(port, host="0.0.0.0"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.create_server((host, port), family=family, backlog=16)
    servers[port] = s
    def serve():
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"guest %d\n" % port)
    threading.Thread(target=serve, daemon=True).start()

def stall(port):
    s = socket.create_server(("0.0.0.0", port))
    servers[port] = s
    held = []
    def serve():
        while True:
            try:
                held.append(s.accept()[0])  # and never read
            except OSError:
                return
    threading.Thread(target=serve, daemon=True).start()

def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    servers[port] = s
    def serve():
        while True:
            try:
                data, peer = s.recvfrom(1000)
            except OSError:
                return
            s.sendto(b"echo " + data, peer)
    threading.Thread(target=serve, daemon=True).start()

print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "tcp":
            tcp(int(args[0]))
        elif cmd == "tcp6":
            tcp(int(args[0]), "::")
        elif cmd == "stall":
            stall(int(args[0]))
        elif cmd == "udp":
            udp(int(args[0]))
        elif cmd == "close":
            s = servers.pop(int(args[0]))
            s.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(2)
            s.close()
        elif cmd == "many":
            base, n = map(int, args)
            for p in range(base, base + n):
                tcp(p)
        print("ok", flush=True)
    except OSError as exc:
        print("error", exc, flush=True)
"""


@pytest.fixture(params=["root", "user"])
def guest(request: pytest.FixtureRequest, ordinary_user: User, tmp_path: Path) -> Iterator[Live]:
    who = None if request.param == "root" else ordinary_user
    with live_machine(who, tmp_path, [sys.executable, "-c", SERVERS]) as m:
        yield m


def answer(port: int, host: str = "127.0.0.1") -> str | None:
    """What a TCP server at host:port says first; None when nothing listens."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            return s.makefile().readline()
    except OSError:
        return None


def listeners(port: int) -> set[str]:
    """The host's TCP listening addresses on ``port`` (ss(8))."""
    r = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return {line.split()[3].rsplit(":", 1)[0] for line in r.stdout.splitlines()}


def test_a_server_is_forwarded_while_it_listens_and_only_on_loopback(guest: Live) -> None:
    port = server_port()
    assert guest.ask(f"tcp {port}") == "ok"
    assert wait_for(lambda: answer(port), "the forward", timeout=10) == f"guest {port}\n"
    assert answer(port, "::1") == f"guest {port}\n"
    # The host's loopback alone, never its other addresses.
    assert listeners(port) == {"127.0.0.1", "[::1]"}
    ports = guest.read("net/ports").splitlines()
    assert f"tcp 127.0.0.1:{port} -> {port} auto" in ports, ports
    assert f"tcp [::1]:{port} -> {port} auto" in ports, ports
    assert guest.ask(f"close {port}") == "ok"
    wait_for(lambda: answer(port) is None and not listeners(port), "the port closed")
    events = guest.events(f"net: unforward tcp 127.0.0.1:{port}")
    assert f"net: forward tcp 127.0.0.1:{port}, [::1]:{port} -> {port}" in events, events
    assert guest.read("net/ports") == ""


def test_a_port_of_the_ephemeral_range_is_not_forwarded(guest: Live) -> None:
    """A port the kernel would pick for a bind to 0 (or a client) stays
    the guest's: forwarding it would take one of the host's ports for
    outgoing connections."""
    picked, chosen = free_port(), server_port()
    assert guest.ask(f"tcp {picked}") == "ok"
    assert guest.ask(f"tcp {chosen}") == "ok"
    # The scan that forwards `chosen` saw `picked` listening already.
    wait_for(lambda: answer(chosen), "the forward", timeout=10)
    assert listeners(picked) == set()
    assert f":{picked} " not in guest.read("net/ports")


def test_an_ipv6_server_and_a_udp_server(guest: Live) -> None:
    port = server_port()
    assert guest.ask(f"tcp6 {port}") == "ok"
    assert wait_for(lambda: answer(port), "the forward", timeout=10) == f"guest {port}\n"
    udp = server_port()
    assert guest.ask(f"udp {udp}") == "ok"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)

        def echo() -> bytes | None:
            s.sendto(b"hi", ("127.0.0.1", udp))
            try:
                return s.recv(100)
            except OSError:
                return None

        assert wait_for(echo, "the UDP forward", timeout=10) == b"echo hi"
    assert f"udp 127.0.0.1:{udp} -> {udp} auto" in guest.read("net/ports")


def test_a_port_the_host_uses_stays_the_hosts(guest: Live) -> None:
    """A host service on 127.0.0.1:PORT: the guest's server on PORT is not
    forwarded (not even on ::1), the event says why, the host's answers."""
    port = server_port()
    host = socket.create_server(("127.0.0.1", port))
    try:
        assert guest.ask(f"tcp {port}") == "ok"
        events = guest.events(f"net: tcp port {port} of the guest is not forwarded")
        assert f"127.0.0.1:{port}: Address already in use" in events, events
        assert listeners(port) == {"127.0.0.1"}
        assert f":{port} " not in guest.read("net/ports")
    finally:
        host.close()


def test_forward_none_closes_them_live_and_auto_opens_them_again(guest: Live) -> None:
    port = server_port()
    assert guest.ask(f"tcp {port}") == "ok"
    wait_for(lambda: answer(port), "the forward", timeout=10)
    guest.set("net/forward", "none")
    wait_for(lambda: not listeners(port), "the forward closed")
    assert answer(port) is None and guest.read("net/ports") == ""
    guest.set("net/forward", "auto")
    assert wait_for(lambda: answer(port), "the forward again") == f"guest {port}\n"
    with pytest.raises(OSError) as exc:
        guest.set("net/forward", "sometimes")
    assert exc.value.errno == errno.EINVAL
    assert guest.read("config/net/forward") == "auto\n"


def _free_range(n: int) -> int:
    """The first of ``n`` consecutive TCP ports free on the host."""
    for base in range(20000, 30000, n):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} free ports")


@pytest.mark.slow
def test_a_flood_of_listeners_takes_at_most_max_ports(guest: Live) -> None:
    n = MAX_PORTS + 20
    base = _free_range(n)
    assert guest.ask(f"many {base} {n}") == "ok"
    guest.events(f"more than {MAX_PORTS} ports are forwarded")
    wait_for(
        lambda: (
            sum(line.endswith(" auto") for line in guest.read("net/ports").splitlines())
            == 2 * MAX_PORTS
        ),
        f"{MAX_PORTS} ports forwarded",
    )
    taken = [p for p in range(base, base + n) if listeners(p)]
    assert len(taken) == MAX_PORTS, len(taken)


def test_an_ordinary_users_guest_gets_no_privileged_host_port(
    ordinary_user: User, tmp_path: Path
) -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 80:
            pytest.skip("this host lets any user bind port 80")
    argv = [sys.executable, "-c", SERVERS]
    with live_machine(ordinary_user, tmp_path, argv, options=["--uid=0"]) as m:
        assert m.ask("tcp 80") == "ok"
        events = m.events("net: tcp port 80 of the guest is not forwarded")
        assert "127.0.0.1:80: Permission denied" in events, events


def test_published_ports_tcp_and_udp_are_listed_and_reach_the_guest(
    ordinary_user: User, tmp_path: Path
) -> None:
    """--publish goes through the same forwarder: HOSTPORT reaches the
    guest's GUESTPORT (a connection before the guest listens is reset)."""
    host_tcp, guest_tcp = free_port(), free_port()
    host_udp, guest_udp = server_port(), free_port()
    options = [f"--publish={host_tcp}:{guest_tcp}", f"--publish={host_udp}:{guest_udp}/udp"]
    with live_machine(ordinary_user, tmp_path, [sys.executable, "-c", SERVERS], options) as m:
        assert answer(host_tcp) is None
        assert m.ask(f"tcp {guest_tcp}") == "ok"
        assert answer(host_tcp) == f"guest {guest_tcp}\n"
        assert m.ask(f"udp {guest_udp}") == "ok"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"hi", ("127.0.0.1", host_udp))
            assert s.recv(100) == b"echo hi"
        ports = m.read("net/ports").splitlines()
        assert ports == [
            f"tcp 127.0.0.1:{host_tcp} -> {guest_tcp} publish",
            f"udp 127.0.0.1:{host_udp} -> {guest_udp} publish",
        ], ports


def test_a_published_port_the_host_uses_fails_the_start_with_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as host:
        port = host.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "umld", "run", f"--publish={port}:80", "--", "/bin/true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode != 0
    assert r.stderr.splitlines() == [
        f"umld: --publish 127.0.0.1:{port}:80: Address already in use"
    ], r.stderr


def test_a_server_that_never_reads_stalls_its_own_connection_only(guest: Live) -> None:
    """The forwarder copies every connection in one loop: a guest server
    that never reads fills its connection's buffers (the host's client
    blocks, as natively) and the other forwards go on."""
    stalled, other = server_port(), server_port()
    assert guest.ask(f"stall {stalled}") == "ok"
    assert guest.ask(f"tcp {other}") == "ok"
    wait_for(lambda: answer(other), "the forwards")
    with socket.create_connection(("127.0.0.1", stalled), timeout=5) as c:
        c.settimeout(1)
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 1 << 30:
                sent += c.send(b"x" * (1 << 16))
        # Blocked after what the kernel's buffers and one read hold.
        assert sent < 64 << 20, sent
        for _ in range(20):
            assert answer(other) == f"guest {other}\n"
