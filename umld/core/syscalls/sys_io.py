"""Handlers for the guest's I/O-port rights: ioperm(2) and iopl(2); and
arch_prctl(2) for CPUID faulting.

Both are emulated and never reach the host: they change the calling
thread's *virtual* rights (``Task.io``, umld/core/privileged.py), which
only open the machine's own I/O-port bus.  The host never grants a guest
a port, so every port access of the guest faults and is emulated (or
delivered as the SIGSEGV it natively is, without the right).

Argument checks and errors follow arch/x86/kernel/ioport.c (Linux >= 5.5)
and the man pages: EINVAL for a range past port 0xffff or an empty one,
for a level above 3; EPERM for turning ports on, or raising the level,
without CAP_SYS_RAWIO in the caller's effective set (a guest's root has it
in the machine's user namespace, an ordinary guest user does not).
Rights are the thread's, inherited by its clones, kept across execve.
"""

from __future__ import annotations

import errno

from umld.core.privileged import cpuid_arch_prctl, thread_io
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: capabilities(7): "perform I/O port operations (iopl(2) and ioperm(2))".
CAP_SYS_RAWIO = 17
#: I/O ports 0 to 0xffff (IO_BITMAP_BITS).
IO_PORTS = 0x10000


def ioperm(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall ioperm(2).

    ``from``, ``num`` (unsigned long) and ``turn_on`` (int): EINVAL when
    ``from + num`` wraps, is ``from`` itself (num 0) or passes 65536
    (ksys_ioperm); EPERM to turn ports on without CAP_SYS_RAWIO.  Turning
    ports off needs no right."""
    wrap = 1 << 32 if ctx.compat else 1 << 64
    first = ctx.args[0] % wrap
    num = ctx.args[1] % wrap
    turn_on = ctx.arg_int(2) != 0
    end = first + num
    if end >= wrap or end <= first or end > IO_PORTS:
        raise GuestError(errno.EINVAL)
    if turn_on and not ctx.task.has_capability(CAP_SYS_RAWIO):
        raise GuestError(errno.EPERM)
    io = thread_io(ctx.task)
    bits = ((1 << num) - 1) << first
    io.ports = io.ports | bits if turn_on else io.ports & ~bits
    return 0


def iopl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall iopl(2).

    ``level`` (unsigned int): EINVAL above 3; raising the level needs
    CAP_SYS_RAWIO (EPERM), lowering it does not.  Level 3 grants every
    port and the virtual cli/sti/hlt (privileged.py); 1 and 2 grant
    nothing, as since Linux 5.5."""
    level = ctx.args[0] & 0xFFFFFFFF
    if level > 3:
        raise GuestError(errno.EINVAL)
    current = ctx.task.io.iopl if ctx.task.io is not None else 0
    if level > current and not ctx.task.has_capability(CAP_SYS_RAWIO):
        raise GuestError(errno.EPERM)
    thread_io(ctx.task).iopl = level
    return 0


def arch_prctl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall arch_prctl(2), trapped only with the
    ``cpuid`` setting ``own`` (core/privileged.py): it runs natively, and
    after an exec the first one brings arch_prctl(ARCH_SET_CPUID, 0)
    along; ARCH_SET_CPUID and ARCH_GET_CPUID of the guest itself change
    and read a virtual flag (its CPUID, emulated, then faults for it)."""
    return cpuid_arch_prctl(ctx.kernel, ctx.task, ctx.args[0], ctx.args[1])
