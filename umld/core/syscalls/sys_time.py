"""Handlers for the time family."""

from __future__ import annotations

import errno
import struct

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError


def _read_only_modes(ctx: SyscallContext, timex_addr: int) -> Outcome:
    # struct timex starts with `unsigned int modes` (adjtimex(2)); modes 0
    # only reads the clock state, anything else changes the host clock.
    (modes,) = struct.unpack("=I", ctx.read(timex_addr, 4))
    if modes != 0:
        raise GuestError(errno.EPERM, "the host clock belongs to the host")
    return None


def adjtimex(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall adjtimex(2).

    Reading (modes == 0) runs natively; a change of the host clock fails
    with EPERM, as it would without CAP_SYS_TIME.
    """
    return _read_only_modes(ctx, ctx.args[0])


def clock_adjtime(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall clock_adjtime(2).

    As adjtimex(2): reading runs natively, changing fails with EPERM.
    """
    return _read_only_modes(ctx, ctx.args[1])
