"""Socket calls umld makes for the guest, on a copy the guest cannot change.

A check of guest memory is no check when another guest thread can
rewrite that memory (or the descriptor table) between the check and the
kernel's own read of it.  So under a network policy the guest kernel does
the allowed call itself: it takes the guest's socket with pidfd_getfd(2)
(the same open socket, shared), copies the address, data and control
messages out of guest memory, checks the copy, and makes the call on its
duplicate with the copy.  The guest's call then completes with the
kernel's answer to that call.

The calls run in worker threads that hold no capabilities
(capset(2) is per thread): a control message such as SO_MARK or
IPV6_HOPOPTS that the kernel checks against the caller's capabilities must
fail as it would for the guest, not pass because umld runs as root.  A
worker may block (a blocking socket); the tracer thread never does.

Only IP sockets are done here.  Everything about a Unix socket depends on
its caller (path lookup in the caller's root and mounts, SO_PEERCRED and
SCM_CREDENTIALS name the caller), so those calls run natively, in the
guest; a policy concerns IP destinations only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, final

from umld.core.syscalls.context import SyscallContext
from umld.errors import GuestError, get_logger

log = get_logger("umld.net")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# asm/unistd_64.h
_SYS_CAPSET = 126
_SYS_PIDFD_OPEN = 434
_SYS_PIDFD_GETFD = 438
_PIDFD_THREAD = os.O_EXCL  # linux/pidfd.h: a thread's pidfd (Linux 6.9)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
SOCK_STREAM = 1
MSG_DONTWAIT = 0x40
MSG_NOSIGNAL = 0x4000
#: linux/socket.h, linux/uio.h, include/linux/socket.h
SOCKADDR_STORAGE = 128
UIO_MAXIOV = 1024
#: How much data one call copies.  A stream socket sends at most this
#: much in one call (a short send, as a signal would make one); a larger
#: datagram is refused with EMSGSIZE, which UDP (64 KiB) would anyway.
MAX_DATA = 4 << 20
#: Control data beyond this fails with ENOBUFS, as it does in the kernel
#: past net.core.optmem_max.
MAX_CONTROL = 1 << 20
_INT_MAX = (1 << 31) - 1

_connect = _libc.connect
_connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_sendto = _libc.sendto
_sendto.argtypes = (
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint32,
)
_sendto.restype = ctypes.c_ssize_t
_sendmsg = _libc.sendmsg
_sendmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_sendmsg.restype = ctypes.c_ssize_t


class Socket(NamedTuple):
    """The guest's socket, duplicated into umld (``fd`` is umld's)."""

    fd: int
    family: int
    type: int
    nonblocking: bool

    @property
    def is_ip(self) -> bool:
        return self.family in (AF_INET, AF_INET6)


def take_socket(ctx: SyscallContext, guest_fd: int) -> Socket | None:
    """The guest thread's descriptor ``guest_fd`` duplicated into umld
    (pidfd_getfd(2)), with its real family and type (SO_DOMAIN, SO_TYPE:
    the kernel's, not a field of guest memory); None when it is not a
    socket.  EBADF as the guest's call would fail."""
    pidfd = _syscall(_SYS_PIDFD_OPEN, int(ctx.task.tid), _PIDFD_THREAD)
    if pidfd < 0 and ctypes.get_errno() == errno.EINVAL:
        # Before Linux 6.9 a pidfd names a process: its descriptor table
        # is the thread's unless the thread unshared it.
        pidfd = _syscall(_SYS_PIDFD_OPEN, int(ctx.task.tgid), 0)
    if pidfd < 0:
        raise GuestError(errno.ESRCH if ctypes.get_errno() == errno.ESRCH else errno.EBADF)
    try:
        fd = _syscall(_SYS_PIDFD_GETFD, pidfd, guest_fd & 0xFFFFFFFF, 0)
        if fd < 0:
            err = ctypes.get_errno()
            raise GuestError(err if err in (errno.EBADF, errno.ESRCH) else errno.EBADF)
    finally:
        os.close(pidfd)
    import socket  # only once a policy applies: ~4 ms of every start

    try:
        family = socket.socket(fileno=os.dup(fd))
    except OSError:
        os.close(fd)
        return None
    try:
        return Socket(fd, int(family.family), int(family.type), not os.get_blocking(fd))
    finally:
        family.close()


def read_sockaddr(ctx: SyscallContext, addr: int, length: int, *, clamp: bool) -> bytes:
    """A copy of a sockaddr argument, as move_addr_to_kernel takes it:
    EINVAL for a negative length or one beyond sockaddr_storage (sendmsg(2)
    clamps the latter instead), EFAULT when unreadable."""
    if length < 0:
        raise GuestError(errno.EINVAL)
    if length > SOCKADDR_STORAGE:
        if not clamp:
            raise GuestError(errno.EINVAL)
        length = SOCKADDR_STORAGE
    return ctx.read(addr, length) if addr and length else b""


class Message(NamedTuple):
    """A copied struct msghdr: address, data, native control messages."""

    name: bytes
    data: bytes
    control: bytes


#: struct msghdr and struct iovec, native and compat (i386) layouts.
_MSGHDR = struct.Struct("=Qi4xQQQQi4x")
_MSGHDR32 = struct.Struct("=IiIIIIi")
_IOVEC = struct.Struct("=QQ")
_IOVEC32 = struct.Struct("=II")
MMSGHDR_SIZE = {False: _MSGHDR.size + 8, True: _MSGHDR32.size + 4}


def read_msghdr(ctx: SyscallContext, addr: int, *, stream: bool) -> Message:
    """A copy of the struct msghdr at ``addr`` and everything it points
    to, with the kernel's checks (net/socket.c __copy_msghdr)."""
    layout = _MSGHDR32 if ctx.compat else _MSGHDR
    name, namelen, iov, iovlen, control, controllen, _flags = layout.unpack(
        ctx.read(addr, layout.size)
    )
    sockaddr = read_sockaddr(ctx, name, namelen, clamp=True) if name else b""
    if iovlen > UIO_MAXIOV:
        raise GuestError(errno.EMSGSIZE)
    data = _read_iov(ctx, iov, iovlen, stream=stream)
    if controllen > _INT_MAX:
        raise GuestError(errno.ENOBUFS)
    ctl = b""
    if controllen:
        if controllen > MAX_CONTROL:
            raise GuestError(errno.ENOBUFS)
        raw = ctx.read(control, controllen)
        ctl = _compat_cmsgs(raw) if ctx.compat else raw
    return Message(sockaddr, data, ctl)


def _read_iov(ctx: SyscallContext, iov: int, count: int, *, stream: bool) -> bytes:
    layout = _IOVEC32 if ctx.compat else _IOVEC
    raw = ctx.read(iov, layout.size * count) if count else b""
    parts: list[bytes] = []
    total = 0
    for base, length in layout.iter_unpack(raw):
        if length >= 1 << 63:
            raise GuestError(errno.EINVAL)  # a negative ssize_t
        take = min(length, MAX_DATA - total)
        if take < length and not stream:
            raise GuestError(errno.EMSGSIZE)
        if take:
            parts.append(ctx.read(base, take))
            total += take
        if total >= MAX_DATA:
            break
    return b"".join(parts)


def read_buffer(ctx: SyscallContext, addr: int, length: int, *, stream: bool) -> bytes:
    """send(2)'s buffer, copied (at most MAX_DATA, see there)."""
    length = min(length, _INT_MAX)
    if length > MAX_DATA:
        if not stream:
            raise GuestError(errno.EMSGSIZE)
        length = MAX_DATA
    return ctx.read(addr, length) if length else b""


def _compat_cmsgs(raw: bytes) -> bytes:
    """i386 control messages (4-byte cmsg_len, 4-byte alignment) in the
    native layout (8-byte cmsg_len and alignment), as the kernel's
    cmsghdr_from_user_compat_to_kern converts them: EINVAL for a bogus
    length or an area without any message."""
    out = bytearray()
    off = 0
    while off + 12 <= len(raw):
        length, level, kind = struct.unpack_from("=Iii", raw, off)
        if length < 12 or length > len(raw) - off:
            raise GuestError(errno.EINVAL)
        body = raw[off + 12 : off + length]
        out += struct.pack("=Qii", 16 + len(body), level, kind) + body
        out += bytes(-len(out) % 8)
        off += (length + 3) & ~3
    if not out:
        raise GuestError(errno.EINVAL)
    return bytes(out)


def _result(rc: int) -> int:
    return rc if rc >= 0 else -ctypes.get_errno()


def do_connect(fd: int, addr: bytes) -> int:
    return _result(_connect(fd, addr, len(addr)))


def do_sendto(fd: int, data: bytes, flags: int, addr: bytes) -> int:
    return _result(_sendto(fd, data, len(data), flags, addr or None, len(addr)))


def do_sendmsg(fd: int, msg: Message, flags: int) -> int:
    data = ctypes.create_string_buffer(msg.data, len(msg.data))
    name = ctypes.create_string_buffer(msg.name, len(msg.name))
    ctl = ctypes.create_string_buffer(msg.control, len(msg.control))
    iov = ctypes.create_string_buffer(_IOVEC.pack(ctypes.addressof(data), len(msg.data)))
    hdr = ctypes.create_string_buffer(
        _MSGHDR.pack(
            ctypes.addressof(name) if msg.name else 0,
            len(msg.name),
            ctypes.addressof(iov),
            1,
            ctypes.addressof(ctl) if msg.control else 0,
            len(msg.control),
            0,
        )
    )
    return _result(_sendmsg(fd, ctypes.addressof(hdr), flags))


def do_sendmmsg(fd: int, msgs: list[Message], flags: int, stream: bool) -> list[int] | int:
    """Each message in turn, as __sys_sendmmsg does: the lengths sent, or
    the error of the first when none went out."""
    sent: list[int] = []
    for msg in msgs:
        rc = do_sendmsg(fd, msg, flags)
        if rc < 0:
            return sent if sent else rc
        sent.append(rc)
        if stream and rc < len(msg.data):
            break
    return sent


def _drop_capabilities() -> None:
    """Empty this thread's capability sets (capset(2) acts on the calling
    thread only)."""
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)
    hbuf = ctypes.create_string_buffer(header)
    dbuf = ctypes.create_string_buffer(data)
    if _syscall(_SYS_CAPSET, hbuf, dbuf) < 0:
        raise OSError(ctypes.get_errno(), "capset")


@final
class _Workers:
    """Threads without capabilities that make the guest's calls; one more
    starts whenever none is idle, so a blocking call never delays another."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle == 0:
                threading.Thread(target=self._main, name="umld-net", daemon=True).start()
                self._idle += 1
            self._idle -= 1
        self._jobs.put(job)

    def _main(self) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
        _drop_capabilities()
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                log.exception("a network call for the guest failed")
            with self._lock:
                self._idle += 1


_WORKERS = _Workers()


def offload(
    ctx: SyscallContext,
    sock: Socket,
    work: Callable[[int], Any],
    finish: Callable[[Any], int],
) -> None:
    """Run ``work(fd)`` on a worker, then ``finish(its result)`` on the
    tracer thread, which completes the guest's call with what it returns.
    The guest thread stays stopped in its call meanwhile (Offloaded).
    The duplicate ``sock.fd`` is closed once the work is done."""
    from umld.core.syscalls.table import Offloaded

    kernel, tid = ctx.kernel, ctx.task.tid
    hold = Offloaded()

    def job() -> None:
        try:
            out = work(sock.fd)
        except GuestError as exc:
            out = -exc.errno
        except Exception:
            log.exception("a network call for the guest failed")
            out = -errno.EIO
        finally:
            os.close(sock.fd)

        def done() -> None:
            if kernel.held.get(tid) is not hold:
                return  # the thread is gone (killed, exited)
            try:
                result = finish(out)
            except GuestError as exc:
                result = -exc.errno
            kernel.finish(tid, hold, result)

        kernel.post(done)

    try:
        _WORKERS.submit(job)
    except BaseException:
        os.close(sock.fd)
        raise
    raise hold
