"""What a syscall handler sees: the call, its task, and guest memory."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, final

from umld.errors import GuestError
from umld.tracer.events import Arch
from umld.tracer.platform import TracerError

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.policy import MachinePolicy
    from umld.core.task import Task


@final
class SyscallContext:
    """One trapped call.

    Preconditions:
        The task is in a seccomp stop; methods are called on the tracer
        thread.
    """

    __slots__ = ("arch", "args", "kernel", "nr", "task")

    def __init__(
        self,
        kernel: GuestKernel,
        task: Task,
        nr: int,
        args: tuple[int, int, int, int, int, int],
        arch: Arch = Arch.X86_64,
    ) -> None:
        self.kernel = kernel
        self.task = task
        self.nr = nr
        self.args = args
        #: The ABI of the call: I386 calls pass 32-bit arguments and
        #: structures in their 32-bit (compat) layout.
        self.arch = arch

    @property
    def compat(self) -> bool:
        """Whether the call is of the i386 ABI (32-bit longs and pointers)."""
        return self.arch is Arch.I386

    @property
    def policy(self) -> MachinePolicy:
        """What the machine's settings say (names, CPUs, network)."""
        return self.kernel.policy

    def arg_int(self, i: int) -> int:
        """Argument ``i`` as a C ``int`` (the low 32 bits, signed)."""
        v = self.args[i] & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v

    def read(self, addr: int, size: int) -> bytes:
        """Exactly ``size`` bytes of guest memory, or EFAULT."""
        try:
            data = self.kernel.tracer.read_memory(self.task.tid, addr, size)
        except TracerError as exc:
            raise GuestError(errno.EFAULT) from exc
        if len(data) != size:
            raise GuestError(errno.EFAULT)
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Copy ``data`` out to the guest, or EFAULT (as copy_to_user)."""
        try:
            self.kernel.tracer.write_memory(self.task.tid, addr, data)
        except TracerError as exc:
            raise GuestError(errno.EFAULT) from exc

    def read_string(self, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated guest string; EFAULT or ENAMETOOLONG."""
        try:
            return self.kernel.tracer.read_string(self.task.tid, addr, limit)
        except TracerError as exc:
            raise GuestError(exc.errno or errno.EFAULT) from exc
