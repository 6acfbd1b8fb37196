"""Handlers for the UTS family: the guest's host and domain names."""

from __future__ import annotations

import errno

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: __NEW_UTS_LEN in include/uapi/linux/utsname.h; each field is one more.
UTS_LEN = 64
_FIELD = UTS_LEN + 1
CAP_SYS_ADMIN = 21


def uname(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall uname(2).

    The six fields of struct new_utsname, 65 bytes each, with nodename and
    domainname taken from the guest.  A bad buffer gives EFAULT, as
    copy_to_user would.
    """
    uts = ctx.policy.uts
    fields = (uts.sysname, uts.nodename, uts.release, uts.version, uts.machine, uts.domainname)
    ctx.write(ctx.args[0], b"".join(f[:UTS_LEN].ljust(_FIELD, b"\0") for f in fields))
    return 0


def _read_name(ctx: SyscallContext) -> bytes:
    """Argument checks shared by sethostname(2) and setdomainname(2), in
    the kernel's order (kernel/sys.c): capability, then length, then the
    copy from user memory."""
    if not ctx.task.has_capability(CAP_SYS_ADMIN):
        raise GuestError(errno.EPERM)
    length = ctx.arg_int(1)
    if length < 0 or length > UTS_LEN:
        raise GuestError(errno.EINVAL)
    return ctx.read(ctx.args[0], length) if length else b""


def sethostname(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sethostname(2).

    Changes the guest's nodename only; the host's is untouched.  The call
    then runs natively too, in the guest's own UTS namespace, so that
    /proc/sys/kernel/hostname agrees.
    """
    if not ctx.kernel.up.is_set():
        # The sandbox naming the guest's UTS namespace before the guest
        # runs: the kernel already holds that name (or a newer one).
        return None
    name = _read_name(ctx)
    ctx.policy.uts.nodename = name
    ctx.kernel.emit("config", 0, f"hostname={name.decode(errors='replace')} by pid {ctx.task.tgid}")
    return None


def setdomainname(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall setdomainname(2).

    Changes the guest's NIS domain name only (and natively, in the
    guest's own UTS namespace).
    """
    if not ctx.kernel.up.is_set():
        return None
    name = _read_name(ctx)
    ctx.policy.uts.domainname = name
    return None


#: __OLD_UTS_LEN: struct oldold_utsname's fields are 9 bytes.
_OLD_LEN = 8


def olduname(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall olduname (i386 109, struct old_utsname).

    The first five fields of uname(2), 65 bytes each (no domainname).
    """
    uts = ctx.policy.uts
    fields = (uts.sysname, uts.nodename, uts.release, uts.version, uts.machine)
    ctx.write(ctx.args[0], b"".join(f[:UTS_LEN].ljust(_FIELD, b"\0") for f in fields))
    return 0


def oldolduname(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall oldolduname (i386 59, struct
    oldold_utsname): five fields of 9 bytes, each cut to 8 and
    NUL-terminated, as kernel/sys.c copies them."""
    uts = ctx.policy.uts
    fields = (uts.sysname, uts.nodename, uts.release, uts.version, uts.machine)
    ctx.write(ctx.args[0], b"".join(f[:_OLD_LEN].ljust(_OLD_LEN + 1, b"\0") for f in fields))
    return 0
