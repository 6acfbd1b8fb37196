"""Handlers for the NETWORK family: the machine's network policy.

``net/accept`` closed holds every accept(2) in the guest until it opens
again: the kernel keeps completing handshakes into the listen backlog
(listen(2)), so clients wait and are not refused, and connections already
accepted carry on.  ``net/connect`` limits where guest sockets may
connect or send: ``allow`` runs every call natively; ``loopback`` refuses
IP destinations other than the loopback addresses with ENETUNREACH, as a
host without a route there would; ``deny`` refuses every IP destination.
Both are read at each call, so a change applies to the next call.

Every way to name a destination stops here in a live machine: connect(2),
sendto(2) with an address or MSG_FASTOPEN (the filter lets the others
through: a connected socket's peer was checked when it connected),
sendmsg(2), sendmmsg(2) and, for the i386 ABI, the same calls through
socketcall(2).  io_uring, which could do them unseen, is refused (see the
table).  Under a policy other than ``allow`` the allowed call is made by
umld on a copy (_netcopy): a second guest thread that rewrites the
address, or swaps the descriptor, after the check changes nothing.  Unix
sockets and other non-IP families run natively, in the guest.
"""

from __future__ import annotations

import errno
import signal
import struct
from typing import TYPE_CHECKING, Any

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Hold, Outcome, Rewrite
from umld.errors import GuestError

if TYPE_CHECKING:
    from umld.core.syscalls import _netcopy as net
else:

    class _Net:
        """_netcopy, imported at the first use: only a restrictive network
        policy needs it (~2 ms of every start otherwise)."""

        def __getattr__(self, name: str) -> Any:
            from umld.core.syscalls import _netcopy

            return getattr(_netcopy, name)

    net = _Net()

if TYPE_CHECKING:
    import ipaddress

#: linux/socket.h
MSG_FASTOPEN = 0x20000000


def accept(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall accept(2).

    Runs natively while ``net/accept`` is open; while it is closed the
    calling thread waits at the call.
    """
    if ctx.policy.net_accept_open:
        return None
    raise Hold


accept4 = accept


def _ip_destination(
    addr: bytes, socket_family: int, *, sending: bool
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a sockaddr names, as the kernel would read it, or
    None when it names none.  AF_UNSPEC disconnects in connect(2), but UDP
    and raw IPv4 sockets send to its address (udp_sendmsg, raw_sendmsg)."""
    import ipaddress  # only once a policy applies: ~2 ms of every start

    if len(addr) < 2:
        return None
    (family,) = struct.unpack_from("<H", addr)
    if family == net.AF_UNSPEC and sending and socket_family == net.AF_INET:
        family = net.AF_INET
    if family == net.AF_INET and len(addr) >= 8:
        return ipaddress.IPv4Address(addr[4:8])
    if family == net.AF_INET6 and len(addr) >= 24:
        return ipaddress.IPv6Address(addr[8:24])
    return None


def _check(ctx: SyscallContext, sock: net.Socket, addr: bytes, what: str, *, sending: bool) -> None:
    """Refuse (ENETUNREACH, a ``denied`` event) a destination the policy
    does not allow."""
    policy = ctx.policy.net_connect
    ip = _ip_destination(addr, sock.family, sending=sending)
    if ip is None:
        return
    if policy == "loopback":
        mapped = getattr(ip, "ipv4_mapped", None)
        if ip.is_loopback or (mapped is not None and mapped.is_loopback):
            return
    ctx.kernel.deny(ctx.task, f"{what} to {ip} (net/connect={policy})")
    raise GuestError(errno.ENETUNREACH)


def _ip_socket(ctx: SyscallContext) -> net.Socket | None:
    """The guest's socket (argument 0) when it is an IP socket under a
    policy; None when the call may run natively."""
    if ctx.policy.net_connect == "allow":
        return None
    sock = net.take_socket(ctx, ctx.args[0])
    if sock is not None and not sock.is_ip:
        import os

        os.close(sock.fd)
        return None
    return sock


def _send_flags(sock: net.Socket, flags: int) -> int:
    # The socket's O_NONBLOCK at the check is the call's (a thread that
    # clears it meanwhile cannot make the copy block); umld never takes
    # SIGPIPE itself: the guest gets it, below.
    flags |= net.MSG_NOSIGNAL
    if sock.nonblocking:
        flags |= net.MSG_DONTWAIT
    return flags


def _sent(ctx: SyscallContext, flags: int, result: int) -> int:
    """A send's result for the guest: EPIPE raises SIGPIPE in the caller
    unless MSG_NOSIGNAL (send(2))."""
    if result == -errno.EPIPE and not flags & net.MSG_NOSIGNAL:
        ctx.kernel.raise_signal(ctx.task, signal.SIGPIPE)
    return result


def _drop(sock: net.Socket) -> None:
    # On any error before the work is handed off, the duplicate goes.
    import os

    os.close(sock.fd)


def connect(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall connect(2) under ``net/connect``.

    ``allow``: native.  Otherwise an IP socket's address is copied and
    checked, and umld connects the socket (its duplicate) to the copy;
    Unix and other sockets connect natively.  AF_UNSPEC (disconnect)
    passes.
    """
    sock = _ip_socket(ctx)
    if sock is None:
        return None
    try:
        addr = net.read_sockaddr(ctx, ctx.args[1], ctx.arg_int(2), clamp=False)
        _check(ctx, sock, addr, "connect", sending=False)
    except BaseException:
        _drop(sock)
        raise
    net.offload(ctx, sock, lambda fd: net.do_connect(fd, addr), lambda r: int(r))
    return None  # not reached: offload raises Offloaded


def sendto(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sendto(2) under ``net/connect``.

    Stops only with a destination or MSG_FASTOPEN.  Without a destination
    (NULL, in a register no other thread can change) the call runs
    natively; with one, as connect(2): an IP socket's address and data are
    copied, checked and sent by umld.
    """
    dest = ctx.args[4]
    if not dest:
        return None
    sock = _ip_socket(ctx)
    if sock is None:
        return None
    flags = ctx.arg_int(3)
    try:
        addr = net.read_sockaddr(ctx, dest, ctx.arg_int(5), clamp=False)
        _check(ctx, sock, addr, "sendto", sending=True)
        data = net.read_buffer(ctx, ctx.args[1], ctx.args[2], stream=sock.type == net.SOCK_STREAM)
    except BaseException:
        _drop(sock)
        raise
    call_flags = _send_flags(sock, flags)
    net.offload(
        ctx,
        sock,
        lambda fd: net.do_sendto(fd, data, call_flags, addr),
        lambda r: _sent(ctx, flags, int(r)),
    )
    return None


def sendmsg(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sendmsg(2) under ``net/connect``.

    On an IP socket the whole message (address, data, control messages,
    in the 32-bit layout for an i386 caller) is copied, its address
    checked, and umld sends the copy.
    """
    sock = _ip_socket(ctx)
    if sock is None:
        return None
    flags = ctx.arg_int(2)
    try:
        msg = net.read_msghdr(ctx, ctx.args[1], stream=sock.type == net.SOCK_STREAM)
        if msg.name:
            _check(ctx, sock, msg.name, "sendmsg", sending=True)
    except BaseException:
        _drop(sock)
        raise
    call_flags = _send_flags(sock, flags)
    net.offload(
        ctx,
        sock,
        lambda fd: net.do_sendmsg(fd, msg, call_flags),
        lambda r: _sent(ctx, flags, int(r)),
    )
    return None


def sendmmsg(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sendmmsg(2) under ``net/connect``.

    As sendmsg(2) for each message, in order; the messages before the
    first refused or unreadable one are sent, and their msg_len set
    (__sys_sendmmsg: an error counts only when nothing was sent).
    """
    sock = _ip_socket(ctx)
    if sock is None:
        return None
    base, flags = ctx.args[1], ctx.arg_int(3)
    vlen = min(ctx.args[2] & 0xFFFFFFFF, net.UIO_MAXIOV)
    stride = net.MMSGHDR_SIZE[ctx.compat]
    stream = sock.type == net.SOCK_STREAM
    msgs: list[net.Message] = []
    try:
        for i in range(vlen):
            try:
                msg = net.read_msghdr(ctx, base + i * stride, stream=stream)
                if msg.name:
                    _check(ctx, sock, msg.name, "sendmmsg", sending=True)
            except GuestError:
                if not msgs:
                    raise
                break
            msgs.append(msg)
    except BaseException:
        _drop(sock)
        raise
    call_flags = _send_flags(sock, flags)
    # msg_len follows the struct msghdr in struct mmsghdr.
    len_at = stride - (8 if not ctx.compat else 4)

    def finish(out: Any) -> int:
        if isinstance(out, int):
            return _sent(ctx, flags, out)
        for i, n in enumerate(out):
            ctx.write(base + i * stride + len_at, struct.pack("=I", n))
        return len(out)

    net.offload(ctx, sock, lambda fd: net.do_sendmmsg(fd, msgs, call_flags, stream), finish)
    return None


#: socketcall(2): its calls that meet the policy (linux/net.h SYS_*), how
#: many arguments each takes (net/socket.c nargs), their handler, and the
#: direct i386 call that does the same with register arguments.
#: linux/in.h, linux/net.h, bits/socket.h
IPPROTO_SCTP = 132
SOCK_SEQPACKET = 5
_SOCK_TYPE_MASK = 0xF
_AF_INET, _AF_INET6 = 2, 10
AF_UNIX = 1


class NetworkHold(Hold):
    """A socket(2) waiting for the machine's network to come up."""


def socket(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall socket(2): the first socket of a family
    that reaches a network waits for the machine's network, which comes
    up at its first use (net.py, "lazy"); in a live machine, SCTP sockets
    are refused with EPROTONOSUPPORT, as by a kernel without SCTP.

    SCTP connects through setsockopt(2) (SCTP_SOCKOPT_CONNECTX) and sends
    to addresses given in control messages, ways around ``net/connect``
    that the policy does not follow; a live machine's policy may become
    restrictive after a socket exists, so SCTP is refused in every live
    machine.  The filter stops socket(2) only for IPPROTO_SCTP or a
    SOCK_SEQPACKET/SOCK_RDM type (an IP SOCK_SEQPACKET socket with
    protocol 0 is SCTP), and, while a lazy network may be down, for every
    family but AF_UNIX; everything else here runs natively.
    """
    domain, kind, proto = ctx.arg_int(0), ctx.arg_int(1) & _SOCK_TYPE_MASK, ctx.arg_int(2)
    if domain in (_AF_INET, _AF_INET6) and (
        proto == IPPROTO_SCTP or (kind == SOCK_SEQPACKET and proto == 0)
    ):
        features = ctx.kernel.features
        if features is None or "live" in features:
            ctx.kernel.deny(ctx.task, "socket: SCTP (its connects and sends escape net/connect)")
            raise GuestError(errno.EPROTONOSUPPORT)
    network = ctx.policy.network
    if network is None or domain == AF_UNIX or network.is_up:
        return None
    kernel, tid = ctx.kernel, ctx.task.tid

    def release() -> None:
        kernel.release(tid, NetworkHold)

    def up() -> None:
        kernel.post(release)

    why = f"socket(2) by pid {kernel.guest_pid(ctx.task.tgid)}"
    if network.bring_up(up, ctx.task.tgid, why=why):
        return None
    raise NetworkHold()


_SOCKETCALLS = {
    1: (3, socket, 359),  # SYS_SOCKET -> socket
    3: (3, connect, 362),  # SYS_CONNECT -> connect
    5: (3, accept, 364),  # SYS_ACCEPT -> accept4(..., 0)
    11: (6, sendto, 369),  # SYS_SENDTO -> sendto
    16: (3, sendmsg, 370),  # SYS_SENDMSG -> sendmsg
    18: (4, accept4, 364),  # SYS_ACCEPT4 -> accept4
    20: (4, sendmmsg, 345),  # SYS_SENDMMSG -> sendmmsg
}


def socketcall(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall socketcall(2) (i386) for the calls that
    meet the network policy.

    Its arguments are an array of 32-bit values in guest memory: they are
    copied once and go to the same handler as the direct call.  A call
    that may then run natively runs as the direct i386 call with the
    copied arguments in registers, so that no other thread can change
    them before the kernel reads them.
    """
    found = _SOCKETCALLS.get(ctx.arg_int(0))
    if found is None:
        return None
    count, handler, direct = found
    values = struct.unpack(f"={count}I", ctx.read(ctx.args[1], 4 * count))
    padded = (*values, 0, 0, 0, 0, 0, 0)
    args = (padded[0], padded[1], padded[2], padded[3], padded[4], padded[5])
    sub = SyscallContext(ctx.kernel, ctx.task, direct, args, ctx.arch)
    out = handler(sub)
    if out is None:
        return Rewrite(direct, args)
    return out
