"""System calls Python 3.11's :mod:`os` lacks, called through ctypes.

Each wrapper raises :class:`OSError` like the :mod:`os` functions do, so
callers handle them the same way.  Only what the host tree needs is here:
openat2(2) to resolve one name beneath a directory without following
symlinks, and the ``AT_EMPTY_PATH`` forms of the *at() calls, which act on
an ``O_PATH`` descriptor itself (``os.chmod(fd)`` and friends use the f*()
calls, which refuse ``O_PATH`` descriptors with EBADF).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

_libc = ctypes.CDLL(None, use_errno=True)

# openat2(2): the syscall number is the same on every architecture (it was
# added after the tables were unified).
_SYS_OPENAT2 = 437
# fchmodat2(2), Linux 6.6: the only chmod that takes AT_EMPTY_PATH.
_SYS_FCHMODAT2 = 452

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# <fcntl.h>
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000

# <linux/fs.h> renameat2(2) flags
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _OpenHow(ctypes.Structure):
    # struct open_how, openat2(2)
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_fchownat = _libc.fchownat
_fchownat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
_fchownat.restype = ctypes.c_int

_utimensat = _libc.utimensat
_utimensat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int)
_utimensat.restype = ctypes.c_int

_renameat2 = _libc.renameat2
_renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_renameat2.restype = ctypes.c_int

_statx = _libc.statx
_statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
_statx.restype = ctypes.c_int

# struct statx is 256 bytes; stx_dev_major and stx_dev_minor are the two
# __u32 at offset 136 (<linux/stat.h>).
_STATX_SIZE = 256
_STX_DEV_OFFSET = 136


# setfsuid(2), setfsgid(2): per thread (glibc does not pass them on to the
# process's other threads, as it does setuid); they answer the old id.
_setfsuid = _libc.setfsuid
_setfsuid.argtypes = (ctypes.c_uint,)
_setfsuid.restype = ctypes.c_int
_setfsgid = _libc.setfsgid
_setfsgid.argtypes = (ctypes.c_uint,)
_setfsgid.restype = ctypes.c_int


@contextmanager
def fs_ids(uid: int, gid: int) -> Iterator[None]:
    """This thread's file system ids are ``uid`` and ``gid`` meanwhile.
    From 0 to another uid the thread's file capabilities go too
    (capabilities(7)): what it makes, it makes as that user would; they
    come back with uid 0."""
    old_gid = _setfsgid(gid)
    old_uid = _setfsuid(uid)
    try:
        yield
    finally:
        _setfsuid(old_uid)
        _setfsgid(old_gid)


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def openat2(dirfd: int, name: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2): open ``name`` relative to ``dirfd`` under ``resolve`` rules."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(name),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        _raise("openat2")
    return int(fd)


def fchmod_path_fd(fd: int, mode: int) -> None:
    """chmod the object an ``O_PATH`` descriptor refers to.

    fchmodat2(2) with AT_EMPTY_PATH where the kernel has it (6.6+); before
    that, chmod(2) through the /proc/self/fd magic link, which resolves to
    the very object of the descriptor (never a path in the tree).
    """
    r = _syscall(
        ctypes.c_long(_SYS_FCHMODAT2),
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(mode),
        ctypes.c_int(AT_EMPTY_PATH),
    )
    if r == 0:
        return
    if ctypes.get_errno() != 38:  # ENOSYS: an older kernel
        _raise("fchmodat2")
    os.chmod(f"/proc/self/fd/{fd}", mode)


def fchown_path_fd(fd: int, uid: int, gid: int) -> None:
    """fchownat(2) with AT_EMPTY_PATH: chown an ``O_PATH`` descriptor's object.

    -1 (as an unsigned 32-bit value) leaves that id unchanged, as in chown(2).
    """
    if _fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        _raise("fchownat")


def futimens_path_fd(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """utimensat(2) with AT_EMPTY_PATH; None leaves that time unchanged (UTIME_OMIT)."""

    def ts(ns: int | None) -> _Timespec:
        if ns is None:
            return _Timespec(0, UTIME_OMIT)
        return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)

    times = (_Timespec * 2)(ts(atime_ns), ts(mtime_ns))
    if _utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        _raise("utimensat")


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    """renameat2(2), for RENAME_NOREPLACE and RENAME_EXCHANGE."""
    if _renameat2(olddirfd, old, newdirfd, new, flags):
        _raise("renameat2")


def cached_device(fd: int) -> int:
    """st_dev of a descriptor's object without asking its filesystem.

    statx(2) with AT_STATX_DONT_SYNC answers from the inode cache: on a FUSE
    inode this sends no request, which is what makes it safe to call on an
    object that may belong to our own mount (a request to ourselves from
    inside a handler would deadlock).
    """
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(fd, b"", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, 0, buf):
        _raise("statx")
    major = ctypes.c_uint32.from_buffer(buf, _STX_DEV_OFFSET).value
    minor = ctypes.c_uint32.from_buffer(buf, _STX_DEV_OFFSET + 4).value
    return os.makedev(major, minor)
