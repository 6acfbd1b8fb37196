"""Handlers for the NETWORK family: the machine's network policy.

``net/accept`` closed holds every accept(2) in the guest until it opens
again: the kernel keeps completing handshakes into the listen backlog
(listen(2)), so clients wait and are not refused, and connections already
accepted carry on.  ``net/connect`` limits where guest sockets may
connect.  Both are read at each call, so a change applies to the next
call.
"""

from __future__ import annotations

import errno
import struct

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Hold, Outcome
from umld.errors import GuestError


def accept(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall accept(2).

    Runs natively while ``net/accept`` is open; while it is closed the
    calling thread waits at the call.
    """
    if ctx.kernel.net_accept_open:
        return None
    raise Hold


accept4 = accept


def _destination(ctx: SyscallContext) -> tuple[int, str] | None:
    """(family, address) of connect(2)'s sockaddr, for AF_INET/AF_INET6."""
    import socket  # only once a policy applies: ~4 ms of every start

    addr, length = ctx.args[1], ctx.arg_int(2)
    if length < 2:
        return None
    family = struct.unpack("<H", ctx.read(addr, 2))[0]
    if family == socket.AF_INET and length >= 8:
        raw = ctx.read(addr, 8)
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and length >= 24:
        raw = ctx.read(addr, 24)
        return family, socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def connect(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall connect(2).

    ``net/connect``: ``allow`` runs every call natively; ``loopback``
    refuses IP destinations other than the loopback addresses with
    ENETUNREACH, as a host without a route there would; ``deny`` refuses
    every IP destination.  Unix sockets are always allowed (they are
    files, inside the guest's mounts).  AF_UNSPEC (disconnect) passes.
    """
    policy = ctx.kernel.net_connect
    if policy == "allow":
        return None
    dest = _destination(ctx)
    if dest is None:
        return None
    import ipaddress  # rarely needed; ~2 ms of every start otherwise

    _family, host = dest
    ip = ipaddress.ip_address(host)
    if policy == "loopback" and (
        ip.is_loopback
        or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
    ):
        return None
    ctx.kernel.emit("denied", ctx.task.tgid, f"connect to {host} (net/connect={policy})")
    ctx.kernel.counters["denied"] += 1
    raise GuestError(errno.ENETUNREACH)
