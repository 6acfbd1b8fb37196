"""The ioctl(2) requests that stop: a terminal's input (sys_tty.py), the
loop devices a machine leases (umld/core/loopdev.py), and the inode
flags of files on their file systems (:func:`file_flags`).

The filter stops ioctl(2) only for these request numbers, whatever the
descriptor; a request on a descriptor it does not concern (another
driver's request with the same number) runs natively.
"""

from __future__ import annotations

import errno

from umld.core import loopdev, procfs
from umld.core.syscalls import sys_tty
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: The loop requests that stop (loopdev.py says why each).
LOOP_REQUESTS = loopdev.CONTROL_REQUESTS + loopdev.DEVICE_REQUESTS
#: linux/fs.h: FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS (chattr(1)'s), and
#: FS_IOC_FSSETXATTR (struct fsxattr, 28 bytes).
FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR = 0x40086602, 0x40046602, 0x401C5820
FLAG_REQUESTS = (FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR)
_FLAG_ARG_SIZE = {FS_IOC_SETFLAGS: 4, FS_IOC32_SETFLAGS: 4, FS_IOC_FSSETXATTR: 28}


def ioctl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall ioctl(2) for the requests that stop."""
    cmd = ctx.args[1] & 0xFFFFFFFF
    if cmd in LOOP_REQUESTS:
        return loop_ioctl(ctx, cmd)
    if cmd in FLAG_REQUESTS:
        return file_flags(ctx, cmd)
    return sys_tty.ioctl(ctx)


def loop_ioctl(ctx: SyscallContext, cmd: int) -> Outcome:
    """Implements loop(4)'s requests for the machine's leased devices.

    On the machine's loop-control: LOOP_CTL_GET_FREE leases a device;
    LOOP_CTL_ADD and LOOP_CTL_REMOVE are EPERM (they would make and
    destroy the host's devices).  On a leased device: LOOP_SET_FD and
    LOOP_CONFIGURE are made through umld's claim; LOOP_CLR_FD runs
    natively and ends the lease.  Anything else runs natively.
    """
    loops = ctx.policy.loops
    tid, fd = ctx.task.tid, ctx.arg_int(0)
    if loops is None:
        return None
    if cmd in loopdev.CONTROL_REQUESTS:
        if not loops.is_control(tid, fd):
            return None
        if cmd != loopdev.LOOP_CTL_GET_FREE:
            ctx.kernel.deny(ctx.task, "loop-control: the host's loop devices stay the host's")
            raise GuestError(errno.EPERM)
        try:
            index = loops.lease(tid)
        except OSError as exc:
            raise GuestError(exc.errno or errno.EIO) from None
        if ctx.kernel.listeners:
            ctx.kernel.emit("device", ctx.task.tgid, f"loop{index} leased to the machine")
        return index
    lease = loops.lease_of(tid, fd)
    if lease is None:
        return None
    if cmd == loopdev.LOOP_CLR_FD:
        loops.detached(tid, lease)
        return None
    if cmd == loopdev.LOOP_SET_FD:
        config = ctx.arg_int(2).to_bytes(4, "little", signed=True) + bytes(
            loopdev.LOOP_CONFIG_SIZE - 4
        )
    else:
        config = ctx.read(ctx.args[2], loopdev.LOOP_CONFIG_SIZE)
    loops.attach(tid, lease, fd, config)
    return 0


def file_flags(ctx: SyscallContext, cmd: int) -> Outcome:
    """Implements FS_IOC_SETFLAGS and FS_IOC_FSSETXATTR (ioctl_iflags(2))
    for a file on a file system of the guest's own: one of its loop
    devices', or one it mounted itself (a tmpfs) in a machine with loop
    devices (whose mount(2) stops).

    Changing the immutable or append-only flag needs CAP_LINUX_IMMUTABLE
    of the initial namespace (fileattr_set_prepare), which a guest root
    never has; on a file system of its own, umld sets the flags for it
    when it holds that capability in its namespace and owns the file (or
    holds CAP_FOWNER), as the kernel asks of the caller.  Everywhere else,
    and for anyone else, the call runs natively.
    """
    loops = ctx.policy.loops
    tid, fd = ctx.task.tid, ctx.arg_int(0)
    if loops is None:
        return None
    st = loops.file_on_own(tid, fd)
    if st is None or not procfs.has_capability(procfs.CAP_LINUX_IMMUTABLE, tid):
        return None
    ids = procfs.status(tid, ("Uid",)).get("Uid", "").split()
    owner = len(ids) == 4 and int(ids[3]) == st.st_uid
    if not owner and not procfs.has_capability(procfs.CAP_FOWNER, tid):
        return None
    arg = ctx.read(ctx.args[2], _FLAG_ARG_SIZE[cmd])
    try:
        loops.set_file_flags(tid, fd, cmd, arg)
    except OSError as exc:
        raise GuestError(exc.errno or errno.EIO) from None
    return 0
