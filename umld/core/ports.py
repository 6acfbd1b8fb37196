"""Ports of the guest reached from the host (``--net user``).

Two ways, both shown in the export's ``net/ports``:

- ``--publish [HOSTADDR:]HOSTPORT:GUESTPORT[/udp]``: the host's port (on
  127.0.0.1 unless HOSTADDR) reaches the guest's, for the machine's life,
  listening or not (a connection to a port nothing listens on is reset);
  a port the host cannot give fails the machine's start with one line;
- automatically (``net/forward = auto``, the default): each port a server
  of the guest listens on is bound on the host's loopback at the same
  port while it listens, TCP and UDP, 127.0.0.1 and ::1.

Both go through one forwarder (:mod:`umld.core.forwarder`, its text says
how) that runs inside the machine's network namespace; this side, in the
host's, decides and binds.  pasta and slirp4netns forward nothing: the
Debian 12 pasta (0.0~git20230309) binds nothing for ``-t auto``, and its
spliced forwarding of ``-t PORT`` closed the first large transfer of a
connection early (``EOFError: peer closed early`` in bench/net.py, and
with pasta alone, outside umld), where this forwarder moved the same 256
MiB streams whole and faster.

What the guest may and may not get.  Only loopback addresses of the host
are bound, never its other interfaces (the guest's servers are not put on
the network by starting).  A port already in use on the host stays the
host's (the guest's is not forwarded: an ``events`` line says why); so
does a port below ``ip_unprivileged_port_start`` for an ordinary user.  A
guest port that ``--publish`` names is pasta's.  At most MAX_PORTS ports
are forwarded at once (a guest that opens thousands of listeners does not
take the host's ports).  ``net/forward = none``, live, closes every
automatic forward and binds no more; users who do not want a guest's
servers on their loopback at all set it so.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, final

from umld.errors import UmldError, get_logger

log = get_logger("umld.ports")

#: Guest ports forwarded automatically at once.
MAX_PORTS = 256
#: The program that runs inside the namespace.
FORWARDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forwarder.py")

Key = tuple[str, int]


class Published(NamedTuple):
    """A port of ``--publish``: the host's address and port, the guest's."""

    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    def host(self) -> str:
        return _host_text(self.host_addr, self.host_port)


class Forward(NamedTuple):
    """One row of ``net/ports``."""

    proto: str
    host: str
    guest_port: int
    how: str  # "auto" or "publish"

    def text(self) -> str:
        return f"{self.proto} {self.host} -> {self.guest_port} {self.how}"


def _host_text(addr: str, port: int) -> str:
    """``127.0.0.1:8080``, ``[::1]:8080``."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _listen(proto: str, addr: str, port: int) -> socket.socket:
    """A host socket bound at addr:port (listening, for TCP); OSError."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # A port of a forward just closed may still have connections
            # in TIME_WAIT (socket(7) SO_REUSEADDR).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
    except OSError:
        s.close()
        raise
    return s


def _bind(proto: str, port: int) -> tuple[list[socket.socket], str | None]:
    """The host's loopback sockets for a guest port (127.0.0.1, and ::1
    where the host has IPv6), and why they could not be bound.  Both or
    none: a host service on one of them keeps the port whole, or a host
    client of ``localhost:PORT`` would reach the guest by one family and
    its own service by the other."""
    socks: list[socket.socket] = []
    for addr in ("127.0.0.1", "::1"):
        try:
            socks.append(_listen(proto, addr, port))
        except OSError as exc:
            if addr == "::1" and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue  # no IPv6 loopback on this host
            for other in socks:
                other.close()
            return [], f"{_host_text(addr, port)}: {exc.strerror}"
    return socks, None


@final
class PortForwards:
    """The port forwards of one machine, published and automatic: the
    forwarder inside, the host's sockets outside.  Thread-safe."""

    def __init__(
        self,
        *,
        enabled: bool,
        published: Sequence[Published] = (),
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._published = list(published)
        self._enabled = enabled
        self.on_event = on_event
        self._lock = threading.Lock()
        self._listening: set[Key] = set()
        self._forwarded: dict[Key, list[str]] = {}
        self._refused: set[Key] = set()
        self._ctl: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    # -- start and end -------------------------------------------------------------

    def start(self, spawn: Callable[[list[str], tuple[int, ...]], subprocess.Popen[bytes]]) -> None:
        """Starts the forwarder: ``spawn(argv, fds)`` runs it inside the
        machine's network namespace with ``fds`` kept open."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-I", FORWARDER, str(theirs.fileno())]
            self._proc = spawn(argv, (theirs.fileno(),))
        finally:
            theirs.close()
        self._ctl = ours
        self._thread = threading.Thread(target=self._run, name="umld-ports", daemon=True)
        self._thread.start()
        self._publish()

    def _publish(self) -> None:
        """The --publish ports, bound now; UmldError (the start's one line)
        when the host cannot give one."""
        by_guest: dict[Key, list[socket.socket]] = {}
        for p in self._published:
            try:
                s = _listen(p.proto, p.host_addr, p.host_port)
            except OSError as exc:
                for socks in by_guest.values():
                    for other in socks:
                        other.close()
                raise UmldError(
                    f"umld: --publish {p.host()}:{p.guest_port}: {exc.strerror}"
                ) from None
            by_guest.setdefault((p.proto, p.guest_port), []).append(s)
        for (proto, port), socks in by_guest.items():
            self._send(f"serve {proto} {port}", socks)

    def close(self) -> None:
        """The machine has ended: the forwarder goes with its sockets."""
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            with contextlib.suppress(OSError):
                ctl.shutdown(socket.SHUT_RDWR)
            ctl.close()
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the view and the live setting ----------------------------------------------

    def rows(self) -> list[Forward]:
        """``net/ports``: what --publish and the automatic forwards reach."""
        out = [Forward(p.proto, p.host(), p.guest_port, "publish") for p in self._published]
        with self._lock:
            for (proto, port), hosts in sorted(self._forwarded.items()):
                out += [Forward(proto, host, port, "auto") for host in hosts]
        return out

    def set_enabled(self, enabled: bool) -> None:
        """``config/net/forward``: ``auto`` forwards what the guest listens
        on from now on, ``none`` closes every automatic forward."""
        with self._lock:
            self._enabled = enabled
            keys = sorted(self._listening)
        for key in keys:
            if enabled:
                self._forward(key)
            else:
                self._drop(key)

    # -- the forwarder's reports -----------------------------------------------------

    def _run(self) -> None:
        ctl = self._ctl
        assert ctl is not None
        while True:
            try:
                msg = ctl.recv(256)
            except OSError:
                return
            if not msg:
                if self._ctl is not None:
                    self._event("net: the port forwarder ended")
                return
            try:
                verb, proto, port_text = msg.decode().split()
                key = (proto, int(port_text))
            except ValueError:
                log.warning("port forwarder: unknown message %r", msg[:100])
                continue
            with self._lock:
                if verb == "listen":
                    self._listening.add(key)
                else:
                    self._listening.discard(key)
                    self._refused.discard(key)
            if verb == "listen":
                self._forward(key)
            else:
                self._drop(key)

    def _forward(self, key: Key) -> None:
        proto, port = key
        with self._lock:
            if not self._enabled or key in self._forwarded or key in self._refused:
                return
            if any(p.proto == proto and p.guest_port == port for p in self._published):
                return
            if len(self._forwarded) >= MAX_PORTS:
                self._refused.add(key)
                why: str | None = f"more than {MAX_PORTS} ports are forwarded"
                socks: list[socket.socket] = []
            else:
                socks, why = _bind(proto, port)
                if why is not None:
                    self._refused.add(key)
            hosts = [_host_text(s.getsockname()[0], port) for s in socks]
            if socks:
                self._forwarded[key] = hosts
        if why is not None:
            self._event(f"net: {proto} port {port} of the guest is not forwarded: {why}")
            return
        self._send(f"serve {proto} {port}", socks)
        self._event(f"net: forward {proto} {', '.join(hosts)} -> {port}")

    def _drop(self, key: Key) -> None:
        with self._lock:
            hosts = self._forwarded.pop(key, None)
        if hosts is not None:
            self._send(f"drop {key[0]} {key[1]}", [])
            self._event(f"net: unforward {key[0]} {', '.join(hosts)}")

    def _send(self, line: str, socks: list[socket.socket]) -> None:
        ctl = self._ctl
        try:
            if ctl is not None:
                fds = array.array("i", [s.fileno() for s in socks])
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())] if socks else []
                ctl.sendmsg([line.encode()], anc)
        except OSError as exc:
            log.debug("port forwarder: %s", exc)
        finally:
            # The forwarder holds its copies now: the port is free again
            # when it closes them.
            for s in socks:
                s.close()

    def _event(self, text: str) -> None:
        log.info("%s", text)
        if self.on_event is not None:
            self.on_event(text)
