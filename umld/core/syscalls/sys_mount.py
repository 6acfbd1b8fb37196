"""Handlers for the guest's mount table.

The guest's mounts live in its own mount namespace, owned by its own user
namespace, below the machine's mounts, which are locked to it
(mount_namespaces(7)): whatever a guest mounts or unmounts changes only
its own table, and the kernel refuses what would reveal or unlock the
machine's.  So these calls run natively; they stop only so that the
guest kernel can report them.  The one exception: a guest root's mount of
one of its machine's leased loop devices, which umld mounts for it
(umld/core/loopdev.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from umld.core import loopdev, procfs
from umld.core.syscalls import _guest
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import AtExit, Outcome
from umld.errors import GuestError

#: umount2(2) flags (linux/fs.h).
MNT_FORCE, MNT_EXPIRE = 1, 4


def _path(ctx: SyscallContext, i: int) -> str:
    if not ctx.args[i]:
        return "NULL"
    try:
        return ctx.read_string(ctx.args[i]).decode(errors="replace")
    except Exception:  # an unreadable argument fails natively with EFAULT
        return "?"


def _report(ctx: SyscallContext, text: str) -> None:
    if ctx.kernel.listeners and ctx.task.tid not in ctx.kernel.internal:
        ctx.kernel.emit("mount", ctx.task.tgid, text)


def mount(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall mount(2) in the guest's mount namespace;
    a new mount of a loop device of the machine's, and a remount of one,
    umld makes for the guest (loopdev.py), which waits in its call."""
    if ctx.kernel.listeners:
        _report(ctx, f"mount {_path(ctx, 0)} on {_path(ctx, 1)} type {_path(ctx, 2)}")
    loops = ctx.policy.loops
    if loops is None or not ctx.args[1]:
        return None
    tid = ctx.task.tid
    flags = ctx.args[3] & 0xFFFFFFFFFFFFFFFF
    target = ctx.read_string(ctx.args[1])
    data = ctx.read_string(ctx.args[4]) if ctx.args[4] else b""
    if flags & loopdev.MS_REMOUNT:
        lease = loops.mounted_lease(tid, target)
        if lease is None:
            return None
        words = loops.remount_words(lease, target, flags, data)
    else:
        if not ctx.args[0] or not ctx.args[2]:
            return None
        source = ctx.read_string(ctx.args[0])
        fstype = ctx.read_string(ctx.args[2])
        lease = loops.mount_request(tid, source, fstype, flags)
        if lease is None:
            if flags & loopdev.NOT_NEW:
                return None
            # A file system the guest mounts itself (a tmpfs) is its own.
            return AtExit(lambda result: loops.mounted(tid, target) if result == 0 else None)
        words = loops.mount_words(lease, target, fstype, flags, data)
    return _by_helper(ctx, words)


def umount2(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall umount2(2) in the guest's mount namespace;
    with MNT_FORCE, of a loop device's mount, made by umld (loopdev.py)."""
    if ctx.kernel.listeners:
        _report(ctx, f"umount {_path(ctx, 0)}")
    loops = ctx.policy.loops
    flags = ctx.arg_int(1)
    if loops is None or not ctx.args[0] or flags & (MNT_EXPIRE | MNT_FORCE) == MNT_EXPIRE:
        # MNT_EXPIRE alone: our stat(2) of the target would be the access
        # that clears the mount's expiry mark (the guest's second call
        # would fail with EAGAIN again).
        return None
    target = ctx.read_string(ctx.args[0])
    tid = ctx.task.tid
    lease = loops.mounted_lease(tid, target)

    def unmounted(result: int) -> None:
        if result == 0:
            # A device attached with autoclear may be free now.
            loops.unmounted(tid, [int(pid) for pid in ctx.kernel.processes])

    if lease is None or not flags & MNT_FORCE:
        dev = loops.own_fs(tid, target)
        if dev is None:
            return None if lease is None else AtExit(unmounted)
        return AtExit(lambda result: loops.own_devs.discard(dev) if result == 0 else None)
    return _by_helper(ctx, loops.umount_words(lease, target, flags), unmounted)


def _by_helper(
    ctx: SyscallContext, words: list[bytes], then: Callable[[int], None] | None = None
) -> Outcome:
    """Have umld's helper make the call (_guest.py): a guest root's (with
    CAP_SYS_ADMIN in its own namespaces, as the call needs natively)."""
    if not procfs.has_capability(procfs.CAP_SYS_ADMIN, ctx.task.tid):
        raise GuestError(errno.EPERM)
    return _guest.by_helper(ctx, words, then)


def pivot_root(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall pivot_root(2) in the guest's mount namespace."""
    if ctx.kernel.listeners:
        _report(ctx, f"pivot_root {_path(ctx, 0)} {_path(ctx, 1)}")
    return None


def move_mount(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall move_mount(2) in the guest's mount namespace."""
    if ctx.kernel.listeners:
        _report(ctx, f"move_mount to {_path(ctx, 3)}")
    return None


def mount_setattr(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall mount_setattr(2) in the guest's mount
    namespace (the machine's read-only binds stay locked read-only)."""
    if ctx.kernel.listeners:
        _report(ctx, f"mount_setattr {_path(ctx, 1)}")
    return None
