"""The port forwarder inside a machine's network namespace (``--net user``).

A server the guest starts is reached from the host's loopback at the same
port, as pasta's automatic forwarding (``-t auto``) promises.  Debian 12's
pasta (0.0~git20230309) binds nothing for ``auto`` here, so umld forwards
those ports itself, with two parts that each stay in one namespace:

- this program, run inside the machine's network namespace (nsenter(1) on
  the namespace umld keeps, by :mod:`umld.core.ports`), reads the
  namespace's sockets every SCAN seconds (``/proc/self/net/tcp``, ``tcp6``,
  ``udp``, ``udp6``: proc(5) shows the reader's namespace) and tells umld
  which ports the guest listens on;
- umld binds the same ports on the host's loopback (it is in the host's
  namespace) and hands the bound sockets here over the control socket
  (SCM_RIGHTS, unix(7)).  A socket stays in the namespace it was created
  in, so this program accepts on the host's socket, connects to the guest's
  server inside, and copies the bytes both ways.

umld never enters the guest's namespace and this program never creates a
socket of the host's; what the guest controls is which of its own ports
are forwarded, and umld decides which of those it binds (ports.py).

It imports the standard library only, and runs as a script (``python -I``,
so nothing of umld's package is imported and the script's directory is
not on the path): it starts in a few ms and holds no more than it needs.

The control socket is SOCK_SEQPACKET, one message a line:

========================  =========================================
this program → umld       ``listen tcp 8080`` / ``unlisten tcp 8080``
umld → this program       ``serve tcp 8080`` with the bound sockets,
                          ``drop tcp 8080``
========================  =========================================

Servers are TCP listeners and unconnected UDP sockets on ports outside
the namespace's ephemeral range (``ip_local_port_range``, ip(7)): a port
there is one the kernel picked for a bind to port 0 or for a client's
socket, not a service's, and forwarding it would take a port of the
host's own ephemeral range (the same by default), which the host's
outgoing connections need.  Each host peer of a UDP port gets a socket of its own inside
(so replies find it), closed after UDP_IDLE seconds of silence.
"""

from __future__ import annotations

import array
import contextlib
import errno
import selectors
import socket
import sys
import time
from typing import Any

#: Seconds between two reads of the namespace's sockets.
SCAN = 0.25
#: Connections copied at once; more are accepted and closed at once.
MAX_CONNECTIONS = 512
#: Peers of one UDP port at once.
MAX_UDP_PEERS = 256
#: Seconds a UDP peer's socket lives without a datagram.
UDP_IDLE = 60.0
#: TCP states in /proc/net/tcp (include/net/tcp_states.h): LISTEN.
TCP_LISTEN = "0A"
#: Bytes read at once.  A pair holds at most one read a way while its
#: peer cannot take it: MAX_CONNECTIONS * 2 * BUFFER (128 MiB) at worst.
#: 64 KiB moved 256 MiB streams at 1444 MiB/s, 256 KiB at 1782 (bench/net.py).
BUFFER = 1 << 17
#: struct linger {1, 0}: close(2) sends a reset (socket(7) SO_LINGER).
LINGER_RESET = b"\1\0\0\0\0\0\0\0"

Key = tuple[str, int]
#: A UDP peer's address, as recvfrom(2) gives it.
Addr = tuple[Any, ...]


def _address(hexaddr: str) -> str:
    """An address of /proc/net/{tcp,udp}{,6}: hex of the kernel's bytes,
    in 32-bit words of host order (little-endian here)."""
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def _ephemeral() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def listening() -> dict[Key, set[str]]:
    """The ports the namespace's servers listen on: (proto, port) → the
    local addresses."""
    out: dict[Key, set[str]] = {}
    ephemeral = _ephemeral()
    for proto in ("tcp", "udp"):
        for suffix in ("", "6"):
            try:
                with open(f"/proc/self/net/{proto}{suffix}") as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 4:
                    continue
                local, remote, state = fields[1], fields[2], fields[3]
                addr, _, port_hex = local.rpartition(":")
                port = int(port_hex, 16)
                if port == 0 or port in ephemeral:
                    continue
                if proto == "tcp" and state != TCP_LISTEN:
                    continue
                if proto == "udp" and int(remote.rpartition(":")[2], 16) != 0:
                    continue
                out.setdefault((proto, port), set()).add(_address(addr))
    return out


def target(addresses: set[str], port: int) -> tuple[str, int]:
    """Where a forwarded connection goes inside: the loopback of the
    family the guest listens on (every wildcard and loopback listener
    accepts it), else the one address it listens on."""
    for addr in sorted(addresses):
        if addr in ("0.0.0.0", "127.0.0.1"):
            return ("127.0.0.1", port)
    for addr in sorted(addresses):
        if addr in ("::", "::1"):
            return ("::1", port)
    return (sorted(addresses)[0], port)


def _connect(to: tuple[str, int], kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
    s = socket.socket(family, kind)
    try:
        s.connect(to)
    except OSError:
        s.close()
        raise
    return s


class _Pair:
    """One forwarded TCP connection, copied by the one loop (no thread per
    connection: starting one cost more than copying a small request).
    Bytes a socket cannot take yet wait in its buffer, and its peer is not
    read meanwhile (TCP's own flow control then holds the sender)."""

    count = 0

    def __init__(
        self, outer: socket.socket, to: tuple[str, int], sel: selectors.BaseSelector
    ) -> None:
        self.outer = outer
        self.sel = sel
        family = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
        self.inner = socket.socket(family, socket.SOCK_STREAM)
        self.connecting = True
        #: Bytes waiting to be written to each socket.
        self.pending: dict[socket.socket, bytes] = {outer: b"", self.inner: b""}
        #: Whether each socket's reading side has ended.
        self.ended: dict[socket.socket, bool] = {outer: False, self.inner: False}
        self.registered: dict[socket.socket, int] = {}
        self.closed = False
        _Pair.count += 1
        outer.setblocking(False)
        self.inner.setblocking(False)
        # Never a blocking connect(2): a guest server whose backlog is full
        # would stall every other connection.
        if self.inner.connect_ex(to) not in (0, errno.EINPROGRESS):
            self._reset()
            return
        self._interest(self.inner, selectors.EVENT_WRITE)

    def _peer(self, sock: socket.socket) -> socket.socket:
        return self.inner if sock is self.outer else self.outer

    def _interest(self, sock: socket.socket, mask: int) -> None:
        now = self.registered.get(sock, 0)
        if mask == now:
            return
        if not mask:
            self.sel.unregister(sock)
            del self.registered[sock]
        elif not now:
            self.sel.register(sock, mask, self)
            self.registered[sock] = mask
        else:
            self.sel.modify(sock, mask, self)
            self.registered[sock] = mask

    def ready(self, sock: socket.socket, events: int) -> None:
        if self.closed:  # an event of this round, for a pair it closed
            return
        try:
            if self.connecting:
                if self.inner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    # The server went between the scan and the connection:
                    # the client sees a reset, as it would natively.
                    self._reset()
                    return
                self.connecting = False
            else:
                if events & selectors.EVENT_WRITE:
                    self._flush(sock)
                if events & selectors.EVENT_READ:
                    self._read(sock)
        except OSError:
            self.close()
            return
        self._update()

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(BUFFER)
        except BlockingIOError:
            return
        peer = self._peer(sock)
        if not data:
            self.ended[sock] = True
            if not self.pending[peer]:
                peer.shutdown(socket.SHUT_WR)
            return
        try:
            sent = peer.send(data)
        except BlockingIOError:
            sent = 0
        self.pending[peer] = data[sent:]

    def _flush(self, sock: socket.socket) -> None:
        try:
            sent = sock.send(self.pending[sock])
        except BlockingIOError:
            return
        self.pending[sock] = self.pending[sock][sent:]
        if not self.pending[sock] and self.ended[self._peer(sock)]:
            sock.shutdown(socket.SHUT_WR)

    def _update(self) -> None:
        if self.closed:
            return
        if all(self.ended.values()) and not any(self.pending.values()):
            self.close()
            return
        for sock in (self.outer, self.inner):
            mask = 0
            if not self.ended[sock] and not self.pending[self._peer(sock)]:
                mask |= selectors.EVENT_READ
            if self.pending[sock]:
                mask |= selectors.EVENT_WRITE
            self._interest(sock, mask)

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            self.outer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _Pair.count -= 1
        for sock in (self.outer, self.inner):
            if sock in self.registered:
                self.sel.unregister(sock)
            sock.close()
        self.registered.clear()


class _Udp:
    """One forwarded UDP port: the host's socket and a socket inside per
    host peer."""

    def __init__(self, key: Key, outer: socket.socket, sel: selectors.BaseSelector) -> None:
        self.key = key
        self.outer = outer
        self.sel = sel
        self.peers: dict[Addr, tuple[socket.socket, float]] = {}
        outer.setblocking(False)
        sel.register(outer, selectors.EVENT_READ, self)

    def readable(self, sock: socket.socket, peer: Addr | None, to: tuple[str, int]) -> None:
        """A datagram on the host's socket (peer None) or on the socket
        inside of ``peer``."""
        now = time.monotonic()
        if peer is None:
            try:
                data, peer = sock.recvfrom(BUFFER)
            except OSError:
                return
            inner = self.peers.get(peer, (None, 0.0))[0]
            if inner is None:
                if len(self.peers) >= MAX_UDP_PEERS:
                    return
                try:
                    inner = _connect(to, socket.SOCK_DGRAM)
                except OSError:
                    return
                inner.setblocking(False)
                self.sel.register(inner, selectors.EVENT_READ, (self, peer))
            self.peers[peer] = (inner, now)
            try:
                inner.send(data)
            except OSError:
                pass
            return
        try:
            self.outer.sendto(sock.recv(BUFFER), peer)
        except OSError:
            pass
        if peer in self.peers:
            self.peers[peer] = (sock, now)

    def expire(self, now: float) -> None:
        for peer, (inner, at) in list(self.peers.items()):
            if now - at > UDP_IDLE:
                self._drop(peer, inner)

    def _drop(self, peer: Addr, inner: socket.socket) -> None:
        del self.peers[peer]
        self.sel.unregister(inner)
        inner.close()

    def close(self) -> None:
        for peer, (inner, _) in list(self.peers.items()):
            self._drop(peer, inner)
        self.sel.unregister(self.outer)
        self.outer.close()


def _receive(ctl: socket.socket) -> tuple[str, list[socket.socket]] | None:
    fds = array.array("i")
    msg, anc, _, _ = ctl.recvmsg(256, socket.CMSG_SPACE(8 * fds.itemsize))
    if not msg:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg.decode(), [socket.socket(fileno=fd) for fd in fds]


def serve(ctl: socket.socket) -> None:
    """Until umld closes the control socket."""
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, None)
    known: dict[Key, set[str]] = {}
    served: dict[Key, list[socket.socket]] = {}
    udp_of: dict[Key, list[_Udp]] = {}
    next_scan = 0.0
    while True:
        now = time.monotonic()
        if now >= next_scan:
            found = listening()
            for key in sorted(found.keys() - known.keys()):
                ctl.send(f"listen {key[0]} {key[1]}".encode())
            for key in sorted(known.keys() - found.keys()):
                ctl.send(f"unlisten {key[0]} {key[1]}".encode())
            known = found
            for udps in udp_of.values():
                for u in udps:
                    u.expire(now)
            next_scan = now + SCAN
        for sel_key, events in sel.select(max(0.0, next_scan - time.monotonic())):
            sock = sel_key.fileobj
            assert isinstance(sock, socket.socket)
            data = sel_key.data
            if data is None:
                got = _receive(ctl)
                if got is None:
                    return
                line, socks = got
                verb, proto, port = line.split()
                key = (proto, int(port))
                for old in udp_of.pop(key, []):
                    old.close()
                for old_sock in served.pop(key, []):
                    sel.unregister(old_sock)
                    old_sock.close()
                if verb != "serve":
                    for s in socks:
                        s.close()
                    continue
                if proto == "tcp":
                    for s in socks:
                        s.setblocking(False)
                        sel.register(s, selectors.EVENT_READ, key)
                    served[key] = socks
                else:
                    udp_of[key] = [_Udp(key, s, sel) for s in socks]
            elif isinstance(data, _Pair):
                data.ready(sock, events)
            elif isinstance(data, tuple) and isinstance(data[0], str):
                to = target(known.get(data, {"127.0.0.1"}), data[1])
                while True:  # every connection waiting
                    try:
                        outer, _ = sock.accept()
                    except OSError:
                        break
                    if _Pair.count >= MAX_CONNECTIONS:
                        outer.close()
                    else:
                        _Pair(outer, to, sel)
            else:
                udp, peer = (data, None) if isinstance(data, _Udp) else data
                addrs = known.get(udp.key, {"127.0.0.1"})
                udp.readable(sock, peer, target(addrs, udp.key[1]))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: forwarder.py CONTROL_FD", file=sys.stderr)
        return 2
    ctl = socket.socket(fileno=int(argv[1]))
    try:
        serve(ctl)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
