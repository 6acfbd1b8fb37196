"""Handlers for the guest's mount table.

The guest's mounts live in its own mount namespace, owned by its own user
namespace, below the machine's mounts, which are locked to it
(mount_namespaces(7)): whatever a guest mounts or unmounts changes only
its own table, and the kernel refuses what would reveal or unlock the
machine's.  So these calls run natively; they stop only so that the
guest kernel can report them.
"""

from __future__ import annotations

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome


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
    """Implements Linux syscall mount(2) in the guest's mount namespace."""
    if ctx.kernel.listeners:
        _report(ctx, f"mount {_path(ctx, 0)} on {_path(ctx, 1)} type {_path(ctx, 2)}")
    return None


def umount2(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall umount2(2) in the guest's mount namespace."""
    if ctx.kernel.listeners:
        _report(ctx, f"umount {_path(ctx, 0)}")
    return None


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
