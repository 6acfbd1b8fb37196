"""Handlers for a root-run machine's writes to the host: no set-id files,
no file capabilities.

A machine run by host root ("hostroot") writes through ``--bind`` and
``--root`` as root: a file it creates there is root's on the host.  A
guest could leave a set-user-ID-root program, or one with file
capabilities, for a host user to run.  So in such machines:

* a mode with S_ISUID, or with S_ISGID and S_IXGRP (a set-group-ID
  program), is refused with EPERM in chmod(2), fchmod(2), fchmodat(2),
  fchmodat2, open(2)/openat(2)/creat(2) when they create, mknod(2),
  mknodat(2) and openat2(2).  The filter stops these calls only when the
  mode asks for S_ISUID or S_ISGID (and open/openat only when they create:
  O_CREAT or O_TMPFILE), so every other call runs unseen.  What it costs:
  ``chmod g+s`` on a directory that has group execute (the usual
  ``chmod 2775 shared/``) is refused too, as the filter cannot tell a
  directory from a file; a set-group-ID directory is still possible
  with a mode without group execute, and S_ISGID inherited from a
  set-group-ID parent directory is untouched (mkdir(2) does not stop).
* setting the extended attribute ``security.capability`` (file
  capabilities, capabilities(7)) is refused with EPERM in setxattr(2),
  lsetxattr, fsetxattr and setxattrat.  The kernel enforces the same: the
  sandbox drops CAP_SETFCAP from a root-run guest's bounding set, which
  also keeps a nested user namespace from mapping its root to the
  guest's (user_namespaces(7): writing such a map needs CAP_SETFCAP), so
  no race on guest memory can get a capability onto the host.

Modes are arguments in registers: no other guest thread can change them
between the check and the call.  The checks that read guest memory are
made on a copy and then have the kernel use values that copy fixes: an
openat2(2) without resolve flags runs as the openat(2) of its checked
``open_how``; an xattr value whose size is not that of a capability
(20 or 24 bytes, vfs_cap_data v2/v3: the kernel rejects any other size
for ``security.capability`` with EINVAL) cannot become one, and a
setxattrat runs as the setxattr of its checked copy.  What remains open to
a second thread that rewrites memory in the window between the check and
the kernel's copy is nothing that matters: an openat2 with resolve flags
fails with ENOSYS, and an xattr name for a 20- or 24-byte value or a
setxattrat relative to a directory descriptor meets the kernel's own
refusal (CAP_SETFCAP is out of the guest's bounding set).
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from umld.core import procfs
from umld.core.syscalls import _guest
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome, Rewrite
from umld.errors import GuestError

# sys/stat.h, asm-generic/fcntl.h (x86 uses the generic values)
S_ISUID = 0o4000
S_ISGID = 0o2000
S_IXGRP = 0o0010
S_IALLUGO = 0o7777
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE; O_TMPFILE adds O_DIRECTORY
_O_WRONLY, _O_RDWR = 0o1, 0o2
_O_DIRECTORY, _O_NOFOLLOW, _O_CLOEXEC, _O_PATH = 0o200000, 0o400000, 0o2000000, 0o10000000
#: fs/open.c VALID_OPEN_FLAGS (every flag from O_ACCMODE to __O_TMPFILE),
#: O_PATH_FLAGS, O_TMPFILE_MASK.
_VALID_OPEN_FLAGS = 0o37777703
_O_PATH_FLAGS = _O_DIRECTORY | _O_NOFOLLOW | _O_PATH | _O_CLOEXEC
_O_TMPFILE_MASK = O_TMPFILE_BIT | _O_DIRECTORY | O_CREAT
#: linux/openat2.h
_RESOLVE_BENEATH, _RESOLVE_IN_ROOT = 0x08, 0x10
_VALID_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20
_OPEN_HOW_SIZE = 24  # OPEN_HOW_SIZE_VER0: u64 flags, mode, resolve
_PAGE = 4096
#: The syscall openat2 becomes, by ABI.
_NR_OPENAT = {False: 257, True: 295}

XATTR_NAME_CAPS = b"security.capability"
#: XATTR_CAPS_SZ_2, XATTR_CAPS_SZ_3: the only value sizes the kernel
#: accepts for security.capability (security/commoncap.c validheader).
_CAPS_SIZES = (20, 24)
_XATTR_NAME_MAX = 255


def _check_mode(ctx: SyscallContext, mode: int, what: str) -> None:
    mode &= 0xFFFFFFFF
    if mode & S_ISUID or (mode & S_ISGID and mode & S_IXGRP):
        kind = "set-user-ID" if mode & S_ISUID else "set-group-ID"
        ctx.kernel.deny(ctx.task, f"{what} mode {mode & S_IALLUGO:04o}: no {kind} file on the host")
        raise GuestError(errno.EPERM)


def _creates(flags: int) -> bool:
    return bool(flags & (O_CREAT | O_TMPFILE_BIT))


def chmod(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall chmod(2) in a root-run machine: a set-id
    mode is refused with EPERM, any other runs natively."""
    _check_mode(ctx, ctx.args[1], "chmod")
    return None


def fchmod(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall fchmod(2) in a root-run machine (as chmod)."""
    _check_mode(ctx, ctx.args[1], "fchmod")
    return None


def fchmodat(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall fchmodat(2) in a root-run machine (as chmod)."""
    _check_mode(ctx, ctx.args[2], "fchmodat")
    return None


fchmodat2 = fchmodat


def creat(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall creat(2) in a root-run machine (as chmod)."""
    _check_mode(ctx, ctx.args[1], "creat")
    return None


def mknod(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall mknod(2) in a root-run machine: mknod
    makes regular files too, so a set-id mode is refused as in chmod; a
    device node is the machine's (:func:`_device_node`)."""
    _check_mode(ctx, ctx.args[1], "mknod")
    return _device_node(ctx, None, 0, ctx.args[1], ctx.args[2])


def mknodat(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall mknodat(2) in a root-run machine (as mknod)."""
    _check_mode(ctx, ctx.args[2], "mknodat")
    return _device_node(ctx, ctx.arg_int(0), 1, ctx.args[2], ctx.args[3])


#: The character devices the machine's /dev offers (sandbox.c, op_dev):
#: null, zero, full, random, urandom, tty (devices.txt).
MACHINE_DEVICES = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)})
AT_FDCWD = -100


def _device_node(
    ctx: SyscallContext, dirfd: int | None, path_arg: int, mode: int, dev: int
) -> Outcome:
    """A guest root's node of a character or block device: the guest's
    user namespace gives it CAP_MKNOD for nothing (vfs_mknod checks the
    initial namespace's), so umld's helper makes the node as the guest
    (_guest.py, sandbox.c guest_mknod), with its fs ids, groups and umask
    and the directory's permissions as they are for it:

    * a character device the machine's /dev already offers, anywhere
      (those are every user's anyway);
    * any device on the file system of one of the machine's loop devices
      (--devices-loop; always mounted nodev), where it never opens.  Not
      elsewhere: on a host tree, the host's own mount of it is not nodev;
    * anything else, and a caller without CAP_MKNOD, runs natively:
      EPERM.  The whiteout (a character device 0:0) runs natively too.
    """
    kind = mode & 0o170000  # S_IFMT
    if kind not in (stat.S_IFCHR, stat.S_IFBLK):
        return None
    dev &= 0xFFFFFFFF  # an unsigned int; new_decode_dev
    major, minor = (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    tid = ctx.task.tid
    if tid in ctx.kernel.internal:
        return None  # the sandbox building the machine (its /dev's nodes)
    if (kind == stat.S_IFCHR and dev == 0) or not procfs.has_capability(procfs.CAP_MKNOD, tid):
        return None
    if kind == stat.S_IFCHR and (major, minor) in MACHINE_DEVICES:
        where = b"any"
    elif ctx.policy.loops is not None and ctx.policy.loops.leases:
        where = ",".join(str(lease.rdev) for lease in ctx.policy.loops.leases.values()).encode()
    else:
        return None
    fields = procfs.status(tid, ("Uid", "Gid", "Groups", "Umask"))
    try:
        fsuid, fsgid = fields["Uid"].split()[3], fields["Gid"].split()[3]
        umask = int(fields.get("Umask", "0"), 8)
    except (KeyError, IndexError, ValueError):
        return None  # the thread is gone
    path = ctx.read_string(ctx.args[path_arg])
    at = (
        b"cwd"
        if dirfd is None or dirfd == AT_FDCWD or path.startswith(b"/")
        else str(dirfd).encode()
    )
    words = [
        b"mknod", at, path, f"{mode & 0o7777 & ~umask | kind:o}".encode(),
        str(os.makedev(major, minor)).encode(), where, fsuid.encode(), fsgid.encode(),
        ",".join(fields.get("Groups", "").split()).encode(),
    ]  # fmt: skip
    return _guest.by_helper(ctx, words)


def open_(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall open(2) in a root-run machine: a call that
    creates (O_CREAT, O_TMPFILE) with a set-id mode is refused with EPERM;
    without them the mode is ignored, as the kernel ignores it."""
    if _creates(ctx.args[1]):
        _check_mode(ctx, ctx.args[2], "open")
    return None


def openat(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall openat(2) in a root-run machine (as open)."""
    if _creates(ctx.args[2]):
        _check_mode(ctx, ctx.args[3], "openat")
    return None


def openat2(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall openat2(2) in a root-run machine.

    ``struct open_how`` is copied and checked as fs/open.c does (EINVAL,
    E2BIG in its order), then its mode as open(2)'s.  Without resolve
    flags the call runs as the openat(2) of the copy, so the kernel uses
    exactly the checked flags and mode; with them it fails with ENOSYS
    (no copy could carry them).
    """
    size = ctx.args[3]
    if size < _OPEN_HOW_SIZE:
        raise GuestError(errno.EINVAL)
    if size > _PAGE:
        raise GuestError(errno.E2BIG)
    raw = ctx.read(ctx.args[2], size)
    if any(raw[_OPEN_HOW_SIZE:]):
        # copy_struct_from_user: a larger struct must be zero beyond ours.
        raise GuestError(errno.E2BIG)
    flags, mode, resolve = struct.unpack_from("=QQQ", raw)
    if flags & ~_VALID_OPEN_FLAGS or resolve & ~_VALID_RESOLVE:
        raise GuestError(errno.EINVAL)
    if resolve & _RESOLVE_BENEATH and resolve & _RESOLVE_IN_ROOT:
        raise GuestError(errno.EINVAL)
    if _creates(flags):
        if mode & ~S_IALLUGO:
            raise GuestError(errno.EINVAL)
    elif mode:
        raise GuestError(errno.EINVAL)
    if flags & O_TMPFILE_BIT and (
        flags & _O_TMPFILE_MASK != O_TMPFILE_BIT | _O_DIRECTORY or not flags & (_O_WRONLY | _O_RDWR)
    ):
        raise GuestError(errno.EINVAL)
    if flags & _O_PATH and flags & ~_O_PATH_FLAGS:
        raise GuestError(errno.EINVAL)
    if resolve:
        # The kernel would read open_how again from guest memory, which
        # another thread may rewrite after this check (a set-uid mode);
        # openat(2) has no resolve flags to carry.  Programs that use them
        # (systemd's chase) fall back to openat(2) on ENOSYS.
        ctx.kernel.deny(ctx.task, "openat2 with resolve flags: not checkable race-free")
        raise GuestError(errno.ENOSYS)
    if _creates(flags):
        _check_mode(ctx, mode, "openat2")
    return Rewrite(_NR_OPENAT[ctx.compat], (ctx.args[0], ctx.args[1], flags, mode))


def _check_xattr(ctx: SyscallContext, name_arg: int, what: str) -> Outcome:
    try:
        name = ctx.read_string(ctx.args[name_arg], _XATTR_NAME_MAX + 1)
    except GuestError as exc:
        # The kernel's own answer for a bad name: ERANGE for too long
        # (ENAMETOOLONG from the copy), EFAULT for unreadable.
        raise GuestError(errno.ERANGE if exc.errno == errno.ENAMETOOLONG else exc.errno) from None
    if name == XATTR_NAME_CAPS:
        ctx.kernel.deny(ctx.task, f"{what} security.capability: no file capabilities on the host")
        raise GuestError(errno.EPERM)
    return None


def setxattr(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall setxattr(2) in a root-run machine: the
    name ``security.capability`` is refused with EPERM, any other runs
    natively."""
    return _check_xattr(ctx, 1, "setxattr")


def lsetxattr(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall lsetxattr(2) in a root-run machine (as setxattr)."""
    return _check_xattr(ctx, 1, "lsetxattr")


def fsetxattr(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall fsetxattr(2) in a root-run machine (as setxattr)."""
    return _check_xattr(ctx, 1, "fsetxattr")


#: The calls setxattrat becomes, by ABI: setxattr, lsetxattr, fsetxattr.
_NR_XATTR = {False: (188, 189, 190), True: (226, 227, 228)}
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW, _AT_EMPTY_PATH = 0x100, 0x1000
_XATTR_ARGS_SIZE = 16  # XATTR_ARGS_SIZE_VER0: u64 value, u32 size, u32 flags


def setxattrat(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall setxattrat(2) in a root-run machine (as
    setxattr).

    Its value's size is in guest memory (struct xattr_args), where another
    thread could make it a capability's: so the copy is checked (EINVAL,
    E2BIG as fs/xattr.c) and the call runs as the fsetxattr(2) (empty path
    with AT_EMPTY_PATH), setxattr(2) or lsetxattr(2) (absolute path, or
    AT_FDCWD) of the copy, with the size in a register.  A relative path
    from a directory descriptor runs natively.
    """
    _check_xattr(ctx, 3, "setxattrat")
    at_flags, size = ctx.arg_int(2), ctx.args[5]
    if at_flags & ~(_AT_SYMLINK_NOFOLLOW | _AT_EMPTY_PATH):
        raise GuestError(errno.EINVAL)
    if size < _XATTR_ARGS_SIZE:
        raise GuestError(errno.EINVAL)
    if size > _PAGE:
        raise GuestError(errno.E2BIG)
    raw = ctx.read(ctx.args[4], size)
    if any(raw[_XATTR_ARGS_SIZE:]):
        raise GuestError(errno.E2BIG)
    value, value_size, flags = struct.unpack_from("=QII", raw)
    path = ctx.read_string(ctx.args[1]) if ctx.args[1] else b""
    dfd = ctx.arg_int(0)
    nr_set, nr_lset, nr_fset = _NR_XATTR[ctx.compat]
    if not path and at_flags & _AT_EMPTY_PATH:
        return Rewrite(nr_fset, (ctx.args[0], ctx.args[3], value, value_size, flags))
    if path.startswith(b"/") or dfd == _AT_FDCWD:
        nr = nr_lset if at_flags & _AT_SYMLINK_NOFOLLOW else nr_set
        return Rewrite(nr, (ctx.args[1], ctx.args[3], value, value_size, flags))
    return None
