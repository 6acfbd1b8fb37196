"""Handlers for the SCHED family: the machine's CPU view."""

from __future__ import annotations

import errno

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: sizeof(unsigned long): the unit of a CPU mask (sched_getaffinity(2)),
#: by ABI: compat_sys_sched_getaffinity counts in 32-bit longs.
_LONG = {False: 8, True: 4}


def sched_getaffinity(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sched_getaffinity(2).

    With ``--vcpus N`` every guest thread may run on CPUs 0..N-1 (what
    nproc(1) and os.sched_getaffinity count).  The raw call returns the
    size of the kernel's mask in bytes; EINVAL when the buffer cannot hold
    it or is not a multiple of a long, as kernel/sched/syscalls.c checks.
    Without --vcpus the call runs natively.
    """
    vcpus = ctx.policy.vcpus
    if vcpus is None:
        return None
    size = ctx.args[1] & 0xFFFFFFFF if ctx.compat else ctx.args[1]
    unit = _LONG[ctx.compat]
    bits = unit * 8
    need = max(unit, (vcpus + bits - 1) // bits * unit)
    if size * 8 < vcpus or size & (unit - 1):
        raise GuestError(errno.EINVAL)
    mask = ((1 << vcpus) - 1).to_bytes(need, "little")
    ctx.write(ctx.args[2], mask)
    return need
