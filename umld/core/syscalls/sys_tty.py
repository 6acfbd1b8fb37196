"""Handlers for terminal requests: a guest never types into a terminal.

A guest that runs in the caller's terminal (``umld run -- bash``) shares
it with the caller's shell: TIOCSTI would push bytes into its input queue
as if typed, to be read by the shell once umld exits (the classic
sandbox escape; ioctl_tty(2) "Faking input").  TIOCLINUX can paste the
console selection the same way.  Both are refused; every other terminal
request runs natively (the filter lets ioctl(2) through unless its
request is one of these, so these are the only ioctl calls that stop).
"""

from __future__ import annotations

import errno

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: asm-generic/ioctls.h (x86 uses the generic numbers).
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
_NAMES = {TIOCSTI: "TIOCSTI", TIOCLINUX: "TIOCLINUX"}


def ioctl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall ioctl(2) for TIOCSTI and TIOCLINUX.

    Refused with EPERM, what Linux answers a process without
    CAP_SYS_ADMIN when dev.tty.legacy_tiocsti is 0, and reported as a
    ``denied`` event.  The request is an ``unsigned int``: only the low
    word of the register counts (the compat and native entries both
    truncate it).
    """
    cmd = ctx.args[1] & 0xFFFFFFFF
    name = _NAMES.get(cmd)
    if name is None:
        return None
    ctx.kernel.deny(ctx.task, f"ioctl {name} on fd {ctx.arg_int(0)}: no input into a terminal")
    raise GuestError(errno.EPERM)
