"""reboot(2): the machine's, not the host's.

The guest's pid namespace is owned by the machine's outer user namespace
(the host's, for a machine run by root), so its root never holds the
CAP_SYS_BOOT reboot(2) asks for (kernel/reboot.c), and in a child pid
namespace even a capable caller gets EINVAL for Ctrl-Alt-Del.  A guest
kernel owns its machine's reboot as Linux owns the host's:

* the capability is the caller's own (its effective set, in the guest's
  namespaces), checked first: EPERM without it;
* then the magic numbers (EINVAL);
* LINUX_REBOOT_CMD_CAD_ON and CAD_OFF succeed and change nothing: the
  flag says what Ctrl-Alt-Del does, and nothing sends a machine
  Ctrl-Alt-Del (no state is kept for it);
* RESTART and RESTART2 end the machine as a reboot ends a pid namespace
  (reboot_pid_ns, pid_namespaces(7)): every guest process is killed and
  the machine's first process counts as killed by SIGHUP; HALT and
  POWER_OFF the same with SIGINT.  ``umld run`` then exits with 129 or
  130, what a container's parent sees of its init;
* anything else (KEXEC, SW_SUSPEND, an unknown command) is EINVAL, as in
  a child pid namespace.
"""

from __future__ import annotations

import errno
import signal

from umld.core import procfs
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

# linux/reboot.h
MAGIC1 = 0xFEE1DEAD
MAGIC2 = frozenset({672274793, 85072278, 369367448, 537993216})
CMD_RESTART, CMD_HALT, CMD_CAD_ON, CMD_CAD_OFF = 0x01234567, 0xCDEF0123, 0x89ABCDEF, 0
CMD_POWER_OFF, CMD_RESTART2 = 0x4321FEDC, 0xA1B2C3D4
_ENDS = {
    CMD_RESTART: signal.SIGHUP,
    CMD_RESTART2: signal.SIGHUP,
    CMD_HALT: signal.SIGINT,
    CMD_POWER_OFF: signal.SIGINT,
}


def reboot(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall reboot(2) for the machine."""
    if not procfs.has_capability(procfs.CAP_SYS_BOOT, ctx.task.tid):
        raise GuestError(errno.EPERM)
    magic1, magic2 = ctx.args[0] & 0xFFFFFFFF, ctx.args[1] & 0xFFFFFFFF
    if magic1 != MAGIC1 or magic2 not in MAGIC2:
        raise GuestError(errno.EINVAL)
    cmd = ctx.args[2] & 0xFFFFFFFF
    if cmd in (CMD_CAD_ON, CMD_CAD_OFF):
        return 0
    end = _ENDS.get(cmd)
    if end is None:
        raise GuestError(errno.EINVAL)
    if ctx.kernel.listeners:
        ctx.kernel.emit(
            "machine", ctx.task.tgid, "reboot: restart" if end == signal.SIGHUP else "reboot: halt"
        )
    ctx.kernel.end_machine(end)
    return 0  # not seen: the caller is killed with the rest
