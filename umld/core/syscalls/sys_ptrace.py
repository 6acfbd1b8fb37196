"""ptrace(2) and the wait calls of the guest's own tracers (core/guest_ptrace.py).

Requests reach the tracee through the tracer platform; the tracee is in a
real ptrace stop whenever the guest tracer may touch it, so registers,
memory, siginfo, the signal mask and the user area are the host kernel's
own answers.  Results follow the raw system call (ptrace(2), "C
library/kernel differences"): PEEK* store the word at ``data``.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from umld.core import guest_ptrace as gp
from umld.core.debugger import StopKind
from umld.core.syscalls.table import AtExit, Hold, Inject, Outcome
from umld.errors import GuestError
from umld.tracer.platform import NREGS, NT_PRFPREG, SIGINFO_SIZE, TracerError

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.syscalls.context import SyscallContext
    from umld.core.task import Task

_REGS = struct.Struct(f"={NREGS}Q")
_U64 = 1 << 64
#: An iovec (x86_64): base, length.
_IOVEC = struct.Struct("=QQ")


def ptrace(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall ptrace(2) for tracers and tracees inside
    the machine (core/guest_ptrace.py)."""
    if ctx.compat:
        # The i386 structures (user_regs_struct, iovec) differ: not yet.
        return -errno.EPERM
    kernel = ctx.kernel
    tracing = kernel.guest_ptrace
    task = ctx.task
    request = ctx.args[0] & 0xFFFFFFFF
    pid = ctx.arg_int(1)
    addr, data = ctx.args[2], ctx.args[3]
    if request == gp.TRACEME:
        return tracing.traceme(task)
    if task.tgid not in tracing.filtered and request in (gp.ATTACH, gp.SEIZE):
        # First use as a tracer: its wait calls must stop here from now
        # on.  The call is made again once the filter is in.
        return Inject(*_filter_call(tracing, task))
    if request in (gp.ATTACH, gp.SEIZE):
        result = tracing.attach(task, pid, seize=request == gp.SEIZE, options=data & 0xFFFFFFFF)
        if result == gp.ATTACH_PENDING:
            raise Hold()  # completed when the tracee is in its stop
        return result
    try:
        link = tracing.link_of(task, pid)
    except OSError as exc:
        return -(exc.errno or errno.ESRCH)
    try:
        return _request(ctx, tracing, link, request, addr, data)
    except TracerError as exc:
        # The host's answer (EINVAL for a register set it refuses...); a
        # tracee that vanished meanwhile: ESRCH, as for one not stopped.
        return -(exc.errno or errno.EIO)


def _filter_call(tracing: gp.GuestPtrace, task: Task) -> tuple[int, tuple[int, ...]]:
    prog = tracing.place_filter(task)
    tracing.filtered.add(task.tgid)
    return gp.NR_SECCOMP, (gp.SECCOMP_SET_MODE_FILTER, 0, prog)


def _request(
    ctx: SyscallContext, tracing: gp.GuestPtrace, link: gp.Link, request: int, addr: int, data: int
) -> Outcome:
    tracer = ctx.kernel.tracer
    tid = link.tracee.tid
    if request == gp.KILL:
        tracer.kill(tid, 9)
        return 0
    if request == gp.INTERRUPT:
        if not link.seized:
            return -errno.EIO
        if link.stop is None:
            link.interrupt = True
            tracer.interrupt(tid)
        return 0
    stop = link.stop
    if stop is None:
        return -errno.ESRCH  # not stopped (ptrace_check_attach)
    if request in (gp.CONT, gp.SYSCALL, gp.SINGLESTEP, gp.SYSEMU, gp.SYSEMU_SINGLESTEP):
        return tracing.resume(link, request, data & 0xFFFFFFFF)
    if request == gp.DETACH:
        if not 0 <= data <= 64:
            return -errno.EIO
        tracing.detach(link, data)
        return 0
    if request == gp.LISTEN:
        return tracing.listen(link)
    if request == gp.SETOPTIONS:
        return tracing.set_options(link, data & 0xFFFFFFFF)
    if request == gp.GETEVENTMSG:
        ctx.write(data, struct.pack("=Q", link.message % _U64))
        return 0
    if request in (gp.PEEKTEXT, gp.PEEKDATA):
        try:
            word = tracer.read_memory(tid, addr, 8)
        except TracerError:
            return -errno.EIO
        if len(word) != 8:
            return -errno.EIO
        ctx.write(data, word)
        return 0
    if request in (gp.POKETEXT, gp.POKEDATA):
        try:
            tracer.write_memory(tid, addr, struct.pack("=Q", data % _U64), force=True)
        except TracerError:
            return -errno.EIO
        return 0
    if request == gp.PEEKUSER:
        value = _peek_user(ctx.kernel, tid, addr)
        ctx.write(data, struct.pack("=Q", value % _U64))
        return 0
    if request == gp.POKEUSER:
        return _poke_user(ctx.kernel, tid, addr, data)
    if request == gp.GETREGS:
        ctx.write(data, _REGS.pack(*(v % _U64 for v in tracer.get_regs(tid))))
        return 0
    if request == gp.SETREGS:
        values = _REGS.unpack(ctx.read(data, _REGS.size))
        from umld.tracer.platform import Regs

        tracer.set_regs(tid, Regs._make(values))
        return 0
    if request == gp.GETFPREGS:
        ctx.write(data, tracer.get_regset(tid, NT_PRFPREG, 512))
        return 0
    if request == gp.SETFPREGS:
        tracer.set_regset(tid, NT_PRFPREG, ctx.read(data, 512))
        return 0
    if request in (gp.GETREGSET, gp.SETREGSET):
        base, length = _IOVEC.unpack(ctx.read(data, _IOVEC.size))
        if request == gp.GETREGSET:
            got = tracer.get_regset(tid, addr, min(length, 1 << 20))
            ctx.write(base, got)
            ctx.write(data, _IOVEC.pack(base, len(got)))
        else:
            tracer.set_regset(tid, addr, ctx.read(base, min(length, 1 << 20)))
        return 0
    if request == gp.GETSIGINFO:
        ctx.write(data, _siginfo(tracing, link))
        return 0
    if request == gp.SETSIGINFO:
        raw = ctx.read(data, SIGINFO_SIZE)
        if stop.kind is StopKind.SIGNAL:
            tracer.set_siginfo(tid, raw)
        return 0
    if request in (gp.GETSIGMASK, gp.SETSIGMASK):
        if addr != 8:
            return -errno.EINVAL
        if request == gp.GETSIGMASK:
            ctx.write(data, struct.pack("=Q", tracer.get_sigmask(tid)))
        else:
            (mask,) = struct.unpack("=Q", ctx.read(data, 8))
            tracer.set_sigmask(tid, mask)
        return 0
    if request == gp.GET_SYSCALL_INFO:
        info = tracer.get_syscall_info(tid)
        size = min(addr, len(info))
        if size:
            ctx.write(data, info[:size])
        return len(info)
    return -errno.EIO


def _peek_user(kernel: GuestKernel, tid: int, offset: int) -> int:
    """A word of struct user: the host kernel's own (PTRACE_PEEKUSER on the
    real tracee), EIO for an unaligned or out-of-range offset."""
    from umld.tracer.events import Tid

    try:
        return kernel.tracer.peek_user(Tid(tid), offset)
    except TracerError as exc:
        raise GuestError(exc.errno or errno.EIO) from exc


def _poke_user(kernel: GuestKernel, tid: int, offset: int, value: int) -> int:
    from umld.tracer.events import Tid

    try:
        kernel.tracer.poke_user(Tid(tid), offset, value)
    except TracerError as exc:
        return -(exc.errno or errno.EIO)
    return 0


def _siginfo(tracing: gp.GuestPtrace, link: gp.Link) -> bytes:
    """PTRACE_GETSIGINFO: the signal's at a signal-delivery-stop; at other
    stops what Linux fills in (ptrace_do_notify: si_signo SIGTRAP, si_code
    the stop's exit code, si_pid and si_uid the tracee's)."""
    stop = link.stop
    tracer = tracing.kernel.tracer
    if stop is not None and stop.kind is StopKind.SIGNAL:
        return tracer.get_siginfo(link.tracee.tid).raw
    from umld.core import procfs

    raw = bytearray(SIGINFO_SIZE)
    code = (link.status >> 8) & 0xFFFF
    struct.pack_into(
        "=iiiiiI",
        raw,
        0,
        5,  # SIGTRAP
        0,
        code,
        0,
        tracing.guest_tid(link.tracee.tid),
        procfs.guest_uid(link.tracee.tid),
    )
    return bytes(raw)


# -- wait4, waitid, waitpid ------------------------------------------------------


def wait4(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall wait4(2) in a guest tracer: the stops and
    exits of its tracees, and its children's natively."""
    pid = ctx.arg_int(0)
    options = ctx.args[2] & 0xFFFFFFFF
    which, ident = _selector(pid)
    return _wait(
        ctx, which, ident, options | gp.WEXITED, status=ctx.args[1], info=0, rusage=ctx.args[3]
    )


def waitpid(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall waitpid(2) (i386) in a guest tracer."""
    which, ident = _selector(ctx.arg_int(0))
    return _wait(
        ctx,
        which,
        ident,
        (ctx.args[2] & 0xFFFFFFFF) | gp.WEXITED,
        status=ctx.args[1],
        info=0,
        rusage=0,
    )


def waitid(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall waitid(2) in a guest tracer."""
    which = ctx.arg_int(0)
    if which not in (gp.P_ALL, gp.P_PID, gp.P_PGID):
        return None  # P_PIDFD and the invalid: natively
    return _wait(
        ctx,
        which,
        ctx.arg_int(1),
        ctx.args[3] & 0xFFFFFFFF,
        status=0,
        info=ctx.args[2],
        rusage=ctx.args[4],
        waitid=True,
    )


def _selector(pid: int) -> tuple[int, int]:
    if pid == -1:
        return gp.P_ALL, 0
    if pid == 0:
        return gp.P_PGID, 0
    if pid < -1:
        return gp.P_PGID, -pid
    return gp.P_PID, pid


def _wait(
    ctx: SyscallContext,
    which: int,
    ident: int,
    options: int,
    *,
    status: int,
    info: int,
    rusage: int,
    waitid: bool = False,
) -> Outcome:
    tracing = ctx.kernel.guest_ptrace
    task = ctx.task
    if task.tgid not in tracing.filtered and not tracing.is_tracer(task.tgid):
        return None
    # A process with the wait filter may become a tracer while it waits
    # (its child's PTRACE_TRACEME): its native waits are known, to be woken.
    found = tracing.find_report(
        task, which, ident, options, consume=not (waitid and options & gp.WNOWAIT)
    )
    if found is not None:
        return _report(ctx, found, status=status, info=info, rusage=rusage, waitid=waitid)
    native = _native_can_answer(tracing, task, which, ident)
    if options & gp.WNOHANG:
        if native:
            # A child the host can report on: natively, with no exit stop
            # (with a child there is no ECHILD to mend; a tracer polls
            # this after every report).
            return None
        if tracing.expects_report(task, which, ident, options):
            if waitid and info:
                ctx.write(info, bytes(SIGINFO_SIZE))
            return 0
        return None
    if native:
        # Natively, with a wake-up by interrupt when a stop is kept.
        tracing.native_waits[task.tid] = task.tgid

        def done(result: int) -> None:
            tracing.native_waits.pop(task.tid, None)

        return AtExit(done)
    if tracing.expects_report(task, which, ident, options):
        tracing.held_waits[task.tid] = gp.WaitCall(
            task, ctx.nr, (which, ident, options, status, info, rusage, int(waitid))
        )
        raise Hold()
    return None


def wait_again(kernel: GuestKernel, call: gp.WaitCall) -> int | None:
    """A held wait's result once a report is there (None: still none)."""
    from umld.core.syscalls.context import SyscallContext

    which, ident, options, status, info, rusage, waitid = call.args
    tracing = kernel.guest_ptrace
    found = tracing.find_report(
        call.task, which, ident, options, consume=not (waitid and options & gp.WNOWAIT)
    )
    if found is None:
        if not tracing.expects_report(call.task, which, ident, options):
            return -errno.ECHILD
        return None
    ctx = SyscallContext(kernel, call.task, call.nr, (0, 0, 0, 0, 0, 0))
    try:
        return _report(ctx, found, status=status, info=info, rusage=rusage, waitid=bool(waitid))
    except GuestError as exc:
        return -exc.errno


def _report(
    ctx: SyscallContext,
    found: tuple[int, int, int, int],
    *,
    status: int,
    info: int,
    rusage: int,
    waitid: bool,
) -> int:
    guest, wstatus, code, si_status = found
    from umld.core import procfs

    if rusage:
        ctx.write(rusage, bytes(gp.RUSAGE_SIZE_32 if ctx.compat else gp.RUSAGE_SIZE))
    if waitid:
        if info:
            raw = bytearray(SIGINFO_SIZE)
            struct.pack_into(
                "=iiiiiIi", raw, 0, 17, 0, code, 0, guest, procfs.guest_uid(ctx.task.tid), si_status
            )
            ctx.write(info, bytes(raw))
        return 0
    if status:
        ctx.write(status, struct.pack("=i", wstatus - (1 << 32) if wstatus >> 31 else wstatus))
    return guest


def _native_can_answer(tracing: gp.GuestPtrace, task: Task, which: int, ident: int) -> bool:
    """Whether the host kernel has something this wait may collect: a
    child of the caller it selects (a tracee that is not its child, a
    traced thread among them, only the guest kernel can report)."""
    if which == gp.P_PID:
        target = tracing.host_task(ident)
        if target is None:
            return True  # natively ECHILD, or a child the guest kernel never saw
        return int(target.tid) == target.tgid and _parent(target.tgid) == task.tgid
    return _has_children(task.tgid)


def _parent(pid: int) -> int:
    from umld.core import procfs

    return int(procfs.status(pid, ("PPid",)).get("PPid", "0") or 0)


def _has_children(tgid: int) -> bool:
    """Whether the process has a child (its threads' /proc children lists)."""
    import os

    try:
        for tid in os.listdir(f"/proc/{tgid}/task"):
            with open(f"/proc/{tgid}/task/{tid}/children", "rb") as f:
                if f.read().strip():
                    return True
    except OSError:
        return False
    return False


# -- the guest's own seccomp filters ----------------------------------------------

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_FILTER_FLAG_TSYNC = 1
#: The longest filter the kernel takes (BPF_MAXINSNS).
_MAX_INSNS = 4096
_WAIT_FILTER = gp.wait_filter()


def seccomp(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall seccomp(2): the host installs the filter;
    the guest kernel keeps a copy (Task.seccomp) to know when the filter
    asks for a tracer's stop (PTRACE_O_TRACESECCOMP)."""
    if ctx.args[0] != gp.SECCOMP_SET_MODE_FILTER:
        return None
    return _note_filter(ctx, ctx.args[2], tsync=bool(ctx.args[1] & SECCOMP_FILTER_FLAG_TSYNC))


def prctl(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall prctl(2) for PR_SET_SECCOMP (the filter is
    noted as for seccomp(2)); other options never stop."""
    if ctx.arg_int(0) != PR_SET_SECCOMP or ctx.arg_int(1) != SECCOMP_MODE_FILTER:
        return None
    return _note_filter(ctx, ctx.args[2], tsync=False)


def _note_filter(ctx: SyscallContext, fprog: int, *, tsync: bool) -> Outcome:
    try:
        if ctx.compat:
            length, ptr = struct.unpack("=HxxI", ctx.read(fprog, 8))
        else:
            length, ptr = struct.unpack("=HxxxxxxQ", ctx.read(fprog, 16))
        program = ctx.read(ptr, 8 * length) if 0 < length <= _MAX_INSNS else None
    except GuestError:
        program = None
    if program is None or program == _WAIT_FILTER:
        # Refused by the host (EFAULT, EINVAL) as it would be; or umld's
        # own wait filter, put in a guest tracer (guest_ptrace.py).
        return None
    task = ctx.task
    kernel = ctx.kernel

    def installed(result: int) -> None:
        if result < 0:
            return
        tasks = [task]
        if tsync:
            group = kernel.processes.get(task.tgid)
            tasks = list(group.threads.values()) if group is not None else tasks
        for t in tasks:
            t.seccomp = (program, *t.seccomp)

    return AtExit(installed)
