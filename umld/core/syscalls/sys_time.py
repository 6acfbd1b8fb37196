"""Handlers for the time family."""

from __future__ import annotations

import errno
import struct
from typing import Final, NamedTuple

from umld.core import procfs
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

# struct timex's modes (linux/timex.h).  The kernel's ADJ_OFFSET_SINGLESHOT
# is 0x0001 under ADJ_ADJTIME; glibc's is the two together (0x8001).
ADJ_FREQUENCY: Final = 0x0002
ADJ_SETOFFSET: Final = 0x0100
ADJ_NANO: Final = 0x2000
ADJ_TICK: Final = 0x4000
ADJ_ADJTIME: Final = 0x8000
ADJ_OFFSET_SINGLESHOT: Final = 0x0001
ADJ_OFFSET_READONLY: Final = 0x2000

CLOCK_REALTIME: Final = 0
#: x86's USER_HZ: the tick (µs per clock tick) may be off by 10% at most.
_USER_HZ: Final = 100
#: The kernel's PPM_SCALE: a frequency (ppm << 16) times this must fit in
#: 64 bits (kernel/time/timekeeping.c).
_PPM_SCALE: Final = 1000 << 16
#: i386 calls whose struct is the 32-bit old_timex32 (clock_adjtime64,
#: 405, takes the 64-bit __kernel_timex).
_OLD_TIMEX32_CALLS: Final = frozenset({124, 343})


class _Timex(NamedTuple):
    """What timekeeping_validate_timex() looks at (read from the whole
    struct, which the kernel copies first: EFAULT when any of it is not
    readable)."""

    modes: int
    freq: int
    time_sec: int
    time_usec: int
    tick: int


def _read_timex(ctx: SyscallContext, addr: int) -> _Timex:
    if ctx.compat and ctx.nr in _OLD_TIMEX32_CALLS:
        raw = ctx.read(addr, 128)  # struct old_timex32
        modes, _offset, freq = struct.unpack_from("=Iii", raw, 0)
        sec, usec, tick = struct.unpack_from("=iii", raw, 36)
    else:
        raw = ctx.read(addr, 208)  # struct __kernel_timex
        (modes,) = struct.unpack_from("=I", raw, 0)
        (freq,) = struct.unpack_from("=q", raw, 16)
        sec, usec, tick = struct.unpack_from("=qqq", raw, 72)
    return _Timex(modes, freq, sec, usec, tick)


def _capable_sys_time(ctx: SyscallContext) -> bool:
    """capable(CAP_SYS_TIME) as the guest sees it: in its effective set
    (the guest's root holds it in the machine's user namespace)."""
    return procfs.has_capability(procfs.CAP_SYS_TIME, ctx.task.tid)


def _validate(ctx: SyscallContext, addr: int) -> Outcome:
    """timekeeping_validate_timex(), in its order: what is invalid fails
    with EINVAL for a caller that may set the clock, and EPERM comes first
    for one that may not.  A read (modes 0, or ADJ_OFFSET_SS_READ) runs
    natively.  A valid change of a guest that holds CAP_SYS_TIME fails with
    EPERM: the clock is the host's (the table's note)."""
    tx = _read_timex(ctx, addr)
    modes = tx.modes
    if modes & ADJ_ADJTIME:
        if not modes & ADJ_OFFSET_SINGLESHOT:
            raise GuestError(errno.EINVAL)
        if modes & ADJ_OFFSET_READONLY:
            return None
        raise GuestError(errno.EPERM, "the host clock belongs to the host")
    if modes == 0:
        return None
    if not _capable_sys_time(ctx):
        raise GuestError(errno.EPERM)
    if modes & ADJ_TICK and not 900000 // _USER_HZ <= tx.tick <= 1100000 // _USER_HZ:
        raise GuestError(errno.EINVAL)
    if modes & ADJ_SETOFFSET:
        limit = 1_000_000_000 if modes & ADJ_NANO else 1_000_000
        if not 0 <= tx.time_usec < limit:
            raise GuestError(errno.EINVAL)
    if modes & ADJ_FREQUENCY and not ctx.compat:
        low, high = -(1 << 63), (1 << 63) - 1
        # C's division truncates toward zero.
        if -(-low // _PPM_SCALE) > tx.freq or high // _PPM_SCALE < tx.freq:
            raise GuestError(errno.EINVAL)
    raise GuestError(errno.EPERM, "the host clock belongs to the host")


def adjtimex(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall adjtimex(2).

    Validated as Linux does (EFAULT, then EINVAL or EPERM in the kernel's
    order); reads (modes 0, ADJ_OFFSET_SS_READ) run natively; a valid
    change of the host clock fails with EPERM, as without CAP_SYS_TIME.
    """
    return _validate(ctx, ctx.args[0])


def clock_adjtime(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall clock_adjtime(2).

    CLOCK_REALTIME as adjtimex(2); other clocks run natively (the kernel
    answers EINVAL for an invalid one and EOPNOTSUPP for one it cannot
    adjust).
    """
    if ctx.arg_int(0) != CLOCK_REALTIME:
        return None
    return _validate(ctx, ctx.args[1])
