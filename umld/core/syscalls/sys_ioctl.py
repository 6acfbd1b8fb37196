"""The ioctl(2) requests that stop: a terminal's input (sys_tty.py) and
the loop devices a machine leases (umld/core/loopdev.py).

The filter stops ioctl(2) only for these request numbers, whatever the
descriptor; a request on a descriptor it does not concern (another
driver's request with the same number) runs natively.
"""

from __future__ import annotations

import errno

from umld.core import loopdev
from umld.core.syscalls import sys_tty
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: The loop requests that stop (loopdev.py says why each).
LOOP_REQUESTS = loopdev.CONTROL_REQUESTS + loopdev.DEVICE_REQUESTS


def ioctl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall ioctl(2) for the requests that stop."""
    cmd = ctx.args[1] & 0xFFFFFFFF
    if cmd in LOOP_REQUESTS:
        return loop_ioctl(ctx, cmd)
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
