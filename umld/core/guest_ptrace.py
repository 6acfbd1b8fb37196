"""ptrace(2) of the guest's own: one guest process traces another.

Every guest thread is already traced by umld, and Linux lets a thread have
one tracer, so a guest's own PTRACE_TRACEME, ATTACH or SEIZE would fail
(EPERM).  The guest kernel therefore implements ptrace itself, as gVisor
and PRoot do, on top of the tracer platform: umld stays the host tracer of
every thread, and a guest tracer's requests are done by umld's tracer
thread on the guest tracee's behalf.

How it fits together:

* **The link.**  ``ptrace(PTRACE_TRACEME/ATTACH/SEIZE)`` is a trapped call
  (sys_ptrace.py).  It makes a :class:`Link` from the tracee thread to the
  tracer thread and makes this module the tracee's debugger
  (debugger.py): every stop the guest kernel does not consume itself
  comes here.
* **Stops.**  A stop the guest tracer asked for (a signal about to be
  delivered; with PTRACE_SYSCALL the syscall-enter and -exit stops, got
  by putting the thread in resume mode SYSCALL; PTRACE_EVENT_* stops the
  options ask for, got with ``set_event_stops``; an interrupt) is *kept*:
  the host thread stays in its real ptrace stop, and the guest tracer is
  told as Linux tells a tracer: a wait status, SIGCHLD with CLD_TRAPPED.
  Since the host thread really is in that stop, the guest tracer's
  GETREGS, PEEKDATA, GETSIGINFO, debug registers, single-steps and signal
  injection are the host kernel's own, done by umld's tracer thread.
* **wait.**  The guest tracer learns of stops through wait4/waitid/
  waitpid, which the host kernel cannot answer for stops it never saw.
  Those calls must stop in the guest kernel, but only in the processes
  that trace: a guest tracer process gets a second seccomp filter of its
  own that traps its wait calls (:func:`wait_filter`; filters stack,
  seccomp(2)), put in by running seccomp(2) in it once, the first time it
  uses ptrace (or, for PTRACE_TRACEME, when its child asks).  No other
  process pays a stop for wait.  A wait that finds a kept stop reports it;
  one that finds none runs natively (real children: exits, group-stops);
  when it would block and a stop is kept meanwhile, the waiting thread is
  interrupted (PTRACE_INTERRUPT) out of its wait, which the kernel then
  restarts (ERESTARTSYS), this time finding the stop.  A tracer with no
  real child to wait for is held in its wait instead, and checked for
  signals every HOLD_POLL seconds.

Pids: the guest sees its own pid namespace; links are kept by host tid,
and every pid that crosses to the guest (wait's result, GETEVENTMSG,
siginfo) is translated (GuestKernel.guest_pid).

What is not done (each documented in the syscall table's notes):
seccomp stops of filters the guest installs itself (PTRACE_O_TRACESECCOMP
is accepted, its stops never come), PTRACE_LISTEN and group-stops of a
seized tracee beyond reporting them, /proc/PID/status TracerPid (the
host's view: 0), ptrace of a 32-bit tracer's wait calls.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, final

from umld.core import procfs
from umld.core.debugger import DebugStop, StopKind
from umld.tracer.events import (
    EVENT_CLONE,
    EVENT_EXEC,
    EVENT_EXIT,
    EVENT_FORK,
    EVENT_VFORK,
    EVENT_VFORK_DONE,
    Arch,
    CloneKind,
    ResumeMode,
    Tid,
)
from umld.tracer.platform import SIGINFO_SIZE, TracerError
from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_TRACE,
    build_filter,
    run_bpf,
    seccomp_data,
)

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.task import Task
    from umld.tracer.events import SyscallStop

# ptrace(2) requests (linux/ptrace.h, asm/ptrace-abi.h).
TRACEME, PEEKTEXT, PEEKDATA, PEEKUSER = 0, 1, 2, 3
POKETEXT, POKEDATA, POKEUSER, CONT, KILL, SINGLESTEP = 4, 5, 6, 7, 8, 9
GETREGS, SETREGS, GETFPREGS, SETFPREGS, ATTACH, DETACH = 12, 13, 14, 15, 16, 17
SYSCALL, SYSEMU, SYSEMU_SINGLESTEP = 24, 31, 32
SETOPTIONS, GETEVENTMSG, GETSIGINFO, SETSIGINFO = 0x4200, 0x4201, 0x4202, 0x4203
GETREGSET, SETREGSET, SEIZE, INTERRUPT, LISTEN = 0x4204, 0x4205, 0x4206, 0x4207, 0x4208
PEEKSIGINFO, GETSIGMASK, SETSIGMASK, GET_SYSCALL_INFO = 0x4209, 0x420A, 0x420B, 0x420E
ARCH_PRCTL = 30

#: PTRACE_O_* options and the events they ask for.
O_TRACESYSGOOD = 0x01
O_EXITKILL = 1 << 20
O_SUSPEND_SECCOMP = 1 << 21
O_TRACESECCOMP = 0x80
_OPTION_EVENTS = {
    0x02: EVENT_FORK,
    0x04: EVENT_VFORK,
    0x08: EVENT_CLONE,
    0x10: EVENT_EXEC,
    0x20: EVENT_VFORK_DONE,
    0x40: EVENT_EXIT,
}
O_MASK = O_TRACESYSGOOD | O_EXITKILL | O_SUSPEND_SECCOMP | O_TRACESECCOMP | sum(_OPTION_EVENTS)
EVENT_STOP = 128
EVENT_SECCOMP = 7
#: seccomp(2) actions: the high 16 bits of a filter's value (the kernel
#: compares them as signed numbers: the lowest wins), the data the low 16.
_ACTION_FULL = 0xFFFF0000
_DATA = 0xFFFF

# wait(2) options (linux/wait.h).
WNOHANG, WUNTRACED, WEXITED, WCONTINUED, WNOWAIT = 1, 2, 4, 8, 0x01000000
WNOTHREAD, WALL, WCLONE = 0x20000000, 0x40000000, 0x80000000
# waitid(2) id types and CLD_* codes (asm-generic/siginfo.h).
P_ALL, P_PID, P_PGID, P_PIDFD = 0, 1, 2, 3
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED = 1, 2, 3, 4, 5

#: The resume mode of each resuming request.
_MODES = {
    CONT: ResumeMode.CONT,
    SYSCALL: ResumeMode.SYSCALL,
    SINGLESTEP: ResumeMode.SINGLESTEP,
    SYSEMU: ResumeMode.SYSEMU,
    SYSEMU_SINGLESTEP: ResumeMode.SYSEMU_SINGLESTEP,
    DETACH: ResumeMode.CONT,
}
#: Resume modes with syscall stops.
_SYSCALL_MODES = (ResumeMode.SYSCALL, ResumeMode.SYSEMU, ResumeMode.SYSEMU_SINGLESTEP)
#: attach()'s answer when the caller must wait (sys_ptrace holds it).
ATTACH_PENDING = 1 << 40
#: Seconds between looks for a signal at a wait held here.
HOLD_POLL = 0.005
#: seccomp(2) on x86_64, and its SECCOMP_SET_MODE_FILTER.
NR_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
NR_WAIT4, NR_WAITID = 61, 247
NR_I386_WAITPID, NR_I386_WAIT4, NR_I386_WAITID = 7, 114, 284
#: -ERESTARTSYS & co: a call the kernel restarts (linux/errno.h).
ERESTARTSYS = 512
_RESTARTS = frozenset({ERESTARTSYS, 513, 514})
NR_GETPID = 39
ERESTART_RESTARTBLOCK = 516
NR_RESTART_SYSCALL = 219
#: Size of struct rusage (x86_64 and i386).
RUSAGE_SIZE, RUSAGE_SIZE_32 = 144, 72


#: What makes this umld's wait filter its own (wait_filter).
_WAIT_FILTER_MARK = int.from_bytes(os.urandom(4), "little")


def wait_filter() -> bytes:
    """The seccomp filter a guest tracer process gets: its wait calls stop
    (SECCOMP_RET_TRACE), everything else is for umld's own filter to
    decide (SECCOMP_RET_ALLOW: filters stack and the strictest wins).

    It starts with a load of a number of this umld's own (``ld #k``, which
    the next instruction overwrites): the guest kernel leaves its own wait
    filter out of the guest's filters (sys_ptrace._note_filter), and an
    umld inside the machine (nesting) puts the same filter in its own
    tracers, which must count as the guest's, or their waits would never
    reach it."""
    mark = struct.pack("=HBBI", 0x00, 0, 0, _WAIT_FILTER_MARK)  # BPF_LD|BPF_W|BPF_IMM
    return mark + build_filter(
        {NR_WAIT4: (), NR_WAITID: ()},
        i386={NR_I386_WAITPID: (), NR_I386_WAIT4: (), NR_I386_WAITID: ()},
    )


@final
class Link:
    """A guest tracee thread and its guest tracer thread (host ids)."""

    __slots__ = (
        "applied",
        "arch",
        "attach_stop",
        "attach_wait",
        "auto_sigstop",
        "child_of_tracer",
        "group_interrupt",
        "internal_interrupt",
        "interrupt",
        "message",
        "mode",
        "options",
        "reported",
        "seized",
        "status",
        "stop",
        "tracee",
        "tracer_tgid",
        "tracer_tid",
    )

    def __init__(self, tracee: Task, tracer: Task, *, seized: bool, options: int = 0) -> None:
        self.tracee = tracee
        self.tracer_tid = tracer.tid
        self.tracer_tgid = tracer.tgid
        self.seized = seized
        self.options = options
        #: The kept stop the tracee sits in (None: it runs).
        self.stop: DebugStop | None = None
        #: Its wait status, and whether a wait has reported it.
        self.status = 0
        self.reported = False
        #: PTRACE_GETEVENTMSG's value at the current stop.
        self.message = 0
        #: The resume mode the guest tracer asked for last.
        self.mode = ResumeMode.CONT
        #: An interrupt (PTRACE_INTERRUPT, the seized initial stop) is due.
        self.interrupt = False
        #: PTRACE_ATTACH sent SIGSTOP: its delivery stop is the first stop.
        self.attach_stop = False
        #: An interrupt umld asked only to set the event stops.
        self.internal_interrupt = False
        #: An auto-attached child of a non-seized tracee: SIGSTOP at its
        #: first (interrupt) stop.
        self.auto_sigstop = False
        #: The ABI of the call at a SECCOMP stop.
        self.arch = Arch.X86_64
        #: The tracer thread held in its PTRACE_ATTACH/SEIZE of a thread in
        #: group-stop, until that thread is in a stop of ours (0: none).
        self.attach_wait = 0
        #: The tracee entered a group-stop: its interrupt is that report.
        self.group_interrupt = False
        #: The event stops the platform has for the thread.
        self.applied: frozenset[int] = frozenset()
        #: Whether the tracer is the tracee's parent (then wait reports
        #: its exit natively; otherwise the guest kernel does).
        self.child_of_tracer = int(tracee.tid) == tracee.tgid and (
            int(procfs.status(tracee.tid, ("PPid",)).get("PPid", "0") or 0) == tracer.tgid
        )

    def events(self) -> frozenset[int]:
        """The PTRACE_EVENT_* stops the guest tracer asked for."""
        return frozenset(e for bit, e in _OPTION_EVENTS.items() if self.options & bit)

    def kept_events(self) -> frozenset[int]:
        """The event stops the platform keeps: the asked ones, and exec
        for a tracee not seized, whose execve must stop it with SIGTRAP
        before its first instruction (see GuestPtrace.stopped)."""
        events = self.events()
        return events if self.seized else events | {EVENT_EXEC}


@final
class WaitCall:
    """A guest tracer's wait held here (no real child to wait for)."""

    __slots__ = ("args", "nr", "task")

    def __init__(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        self.task = task
        self.nr = nr
        self.args = args


class GuestPtrace:
    """The machine's ptrace: every link, the Debugger of every tracee."""

    def __init__(self, kernel: GuestKernel) -> None:
        self.kernel = kernel
        #: tracee host tid -> its link
        self.links: dict[Tid, Link] = {}
        #: Exits of tracees to report to a tracer that is not their parent
        #: (tracer tgid -> [(tracee tid, its guest tid, wait status)]).
        self.exits: dict[int, list[tuple[Tid, int, int]]] = {}
        #: Tracer threads in a native wait (to interrupt when a stop is kept).
        self.native_waits: dict[Tid, int] = {}
        #: Tracer threads whose wait is held here.
        self.held_waits: dict[Tid, WaitCall] = {}
        #: Tracer processes that have the wait filter.
        self.filtered: set[int] = set()
        #: Host tid -> guest tid, for the links' threads.
        self._guest: dict[Tid, int] = {}
        #: Guest threads in a group-stop now (the kernel keeps this).
        self.group_stops: set[Tid] = set()

    # -- pids ------------------------------------------------------------------

    def guest_tid(self, tid: int) -> int:
        got = self._guest.get(Tid(tid))
        if got is None:
            got = procfs.guest_pid(tid)
            if got:
                self._guest[Tid(tid)] = got
        return got

    def host_task(self, guest_tid: int) -> Task | None:
        """The guest thread whose tid the guest sees as ``guest_tid``."""
        if guest_tid <= 0:
            return None
        for task in self.kernel.tasks.values():
            if task.tid in self.kernel.internal:
                continue
            if self.guest_tid(task.tid) == guest_tid:
                return task
        return None

    def _internal_guest_tid(self, guest_tid: int) -> bool:
        kernel = self.kernel
        return any(
            self.guest_tid(tid) == guest_tid for tid in kernel.internal if tid in kernel.tasks
        )

    # -- the tracer's side: ptrace(2) ---------------------------------------

    def is_tracer(self, tgid: int) -> bool:
        return any(link.tracer_tgid == tgid for link in self.links.values()) or tgid in self.exits

    def link_of(self, caller: Task, guest_tid: int) -> Link:
        """The link of the tracee ``guest_tid`` traced by ``caller``
        (ESRCH otherwise, as ptrace_check_attach answers)."""
        task = self.host_task(guest_tid)
        link = self.links.get(task.tid) if task is not None else None
        if link is None or link.tracer_tid != caller.tid:
            raise OSError(errno.ESRCH, "not traced by the caller")
        return link

    def may_trace(self, tracer: Task, tracee: Task) -> bool:
        """ptrace_may_access(PTRACE_MODE_ATTACH_REALCREDS), as far as the
        guest kernel can see: the same real, effective and saved ids, or
        CAP_SYS_PTRACE; the host's Yama scope (ptrace(2), "Ptrace access
        mode checking")."""
        scope = _yama_scope()
        if scope == 3:
            return False
        capable = tracer.has_capability(19)  # CAP_SYS_PTRACE
        if scope == 2 and not capable:
            return False
        if scope == 1 and not capable and not _is_ancestor(tracer.tgid, tracee.tgid):
            return False
        if capable:
            return True
        mine = procfs.status(tracer.tid, ("Uid", "Gid"))
        theirs = procfs.status(tracee.tid, ("Uid", "Gid"))
        if not mine or not theirs:
            return False
        ruid = mine["Uid"].split()[0]
        rgid = mine["Gid"].split()[0]
        return all(u == ruid for u in theirs["Uid"].split()[:3]) and all(
            g == rgid for g in theirs["Gid"].split()[:3]
        )

    def traceme(self, task: Task) -> int:
        """PTRACE_TRACEME: the caller's parent traces it."""
        if task.tid in self.links or task.debugger is not None:
            return -errno.EPERM
        ppid = int(procfs.status(task.tid, ("PPid",)).get("PPid", "0") or 0)
        parent = self.kernel.tasks.get(Tid(ppid))
        if parent is None or parent.tid in self.kernel.internal or _yama_scope() == 3:
            return -errno.EPERM
        link = self._link(task, parent, seized=False)
        # The caller sits in its ptrace call: the exec stop is kept from now.
        self.kernel.tracer.set_event_stops(task.tid, link.kept_events())
        link.applied = link.kept_events()
        if parent.tgid not in self.filtered:
            self.filter_elsewhere(parent)
        return 0

    def attach(self, caller: Task, guest_tid: int, *, seize: bool, options: int) -> int:
        """PTRACE_ATTACH, PTRACE_SEIZE."""
        if seize and options & ~O_MASK:
            return -errno.EIO
        if options & O_SUSPEND_SECCOMP:
            return -errno.EPERM  # CAP_SYS_ADMIN of the host's first namespace
        target = self.host_task(guest_tid)
        if target is None:
            # The machine's own init and sandbox stage are not the guest's
            # to trace: EPERM, as the host answered before (they are not
            # dumpable to it); no such thread: ESRCH.
            return -errno.EPERM if self._internal_guest_tid(guest_tid) else -errno.ESRCH
        if target.tgid == caller.tgid:
            return -errno.EPERM  # its own thread group (ptrace_attach)
        if target.tid in self.links or target.debugger is not None:
            return -errno.EPERM
        if not self.may_trace(caller, target):
            return -errno.EPERM
        link = self._link(target, caller, seized=seize, options=options if seize else 0)
        if not seize:
            # ptrace(2): "PTRACE_ATTACH sends SIGSTOP to this thread".
            link.attach_stop = True
            self.kernel.tracer.kill(target.tid, signal.SIGSTOP)
        if target.tid in self.group_stops:
            # Linux traps a stopped tracee before the attach returns
            # (ptrace_attach, JOBCTL_TRAPPING): requests work at once.  The
            # caller waits in its call until the tracee is in a stop here.
            link.attach_wait = caller.tid
            self.kernel.tracer.interrupt(target.tid)
            return ATTACH_PENDING
        if seize:
            self._apply_options(link)
        return 0

    def _link(self, tracee: Task, tracer: Task, *, seized: bool, options: int = 0) -> Link:
        link = Link(tracee, tracer, seized=seized, options=options)
        self.links[tracee.tid] = link
        tracee.debugger = self
        return link

    def _apply_options(self, link: Link) -> None:
        """The platform's event stops for the options: now if the tracee is
        in a kept stop, else at a stop asked for that (an interrupt the
        guest tracer never sees)."""
        if link.stop is not None:
            self._set_events(link)
        elif link.kept_events() != link.applied and not link.internal_interrupt:
            link.internal_interrupt = True
            self.kernel.tracer.interrupt(link.tracee.tid)

    def _set_events(self, link: Link) -> None:
        events = link.kept_events()
        if events != link.applied:
            self.kernel.tracer.set_event_stops(link.tracee.tid, events)
            link.applied = events

    def set_options(self, link: Link, options: int) -> int:
        """PTRACE_SETOPTIONS (the tracee is in a kept stop)."""
        if options & ~O_MASK:
            return -errno.EINVAL
        if options & O_SUSPEND_SECCOMP:
            return -errno.EPERM  # CAP_SYS_ADMIN of the host's first namespace
        link.options = options
        self._apply_options(link)
        return 0

    def detach(self, link: Link, signo: int = 0) -> None:
        """The link ends; the tracee runs on (with ``signo`` if it sits in
        a signal stop)."""
        tracee = link.tracee
        del self.links[tracee.tid]
        tracee.debugger = None
        tracer = self.kernel.tracer
        try:
            tracer.set_resume_mode(tracee.tid, ResumeMode.CONT)
            if link.stop is not None:
                tracer.set_event_stops(tracee.tid, frozenset())
                if link.stop.kind is StopKind.INTERRUPT and link.stop.signo:
                    # Detached in a group-stop: it stays stopped (Linux
                    # puts it back into TASK_STOPPED, __ptrace_unlink).
                    tracer.listen(tracee.tid)
                    return
                sig = signo if link.stop.kind is StopKind.SIGNAL else 0
                tracer.resume(tracee.tid, sig)
        except TracerError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def resume(self, link: Link, request: int, signo: int) -> int:
        """PTRACE_CONT, SYSCALL, SINGLESTEP, SYSEMU*: the kept stop ends."""
        if not 0 <= signo <= 64:
            return -errno.EIO
        mode = _MODES[request]
        link.mode = mode
        tracer = self.kernel.tracer
        tid = link.tracee.tid
        stop = link.stop
        assert stop is not None
        link.stop = None
        link.reported = False
        tracer.set_resume_mode(tid, mode)
        if stop.kind is StopKind.SECCOMP:
            # The call goes on to the guest kernel, as the tracer left it.
            self.kernel.redispatch(link.tracee, link.arch)
            return 0
        # The signal goes as Linux sends it: injected at a signal-delivery
        # stop, sent at a syscall stop (ptrace_report_syscall), dropped at
        # an event or interrupt stop; the host does the same with it.
        tracer.resume(tid, signo)
        return 0

    # -- the tracee's side: Debugger ----------------------------------------

    def stopped(self, kernel: GuestKernel, task: Task, stop: DebugStop) -> bool:
        link = self.links.get(task.tid)
        if link is None:
            return False
        if (
            stop.kind is StopKind.EVENT
            and stop.event == EVENT_EXEC
            and EVENT_EXEC not in link.events()
            and not link.seized
        ):
            # ptrace(2): without PTRACE_O_TRACEEXEC, "all successful calls
            # to execve(2) by the traced process will cause it to be sent a
            # SIGTRAP signal": sent here, at the exec's own stop, so that
            # it is taken before the new program's first instruction.
            kernel.raise_signal(task, signal.SIGTRAP)
            return False
        status = self._status_of(link, stop)
        if status is None:
            return False
        if stop.kind is StopKind.SIGNAL and link.attach_stop and stop.signo == signal.SIGSTOP:
            link.attach_stop = False
        link.stop = stop
        self._set_events(link)
        link.status = status
        link.reported = False
        if stop.kind is StopKind.EVENT:
            link.message = self._event_message(stop)
        elif stop.kind is StopKind.SECCOMP:
            link.message = stop.value
        else:
            link.message = 0
        self._notify(link)
        return True

    def seccomp_stop(self, task: Task, ev: SyscallStop) -> bool:
        """At a seccomp stop of a thread with filters of the guest's own:
        when they (not umld's) asked for a tracer (SECCOMP_RET_TRACE wins
        among their actions), the guest's tracer gets the stop if it set
        PTRACE_O_TRACESECCOMP, and with no tracer at all the call fails
        with ENOSYS (seccomp(2)).  True when the stop was taken here."""
        tracer = self.kernel.tracer
        arch = AUDIT_ARCH_I386 if ev.arch is Arch.I386 else AUDIT_ARCH_X86_64
        try:
            ip = tracer.get_regs(task.tid).rip
        except TracerError:
            return False
        data = seccomp_data(ev.nr, arch, ip, ev.args)
        best: int | None = None
        for program in task.seccomp:
            try:
                value = run_bpf(program, data)
            except ValueError:
                continue
            if best is None or _signed(value & _ACTION_FULL) < _signed(best & _ACTION_FULL):
                best = value
        if best is None or best & _ACTION_FULL != SECCOMP_RET_TRACE:
            return False
        link = self.links.get(task.tid)
        if link is None:
            tracer.complete(task.tid, -errno.ENOSYS)
            return True
        if not link.options & O_TRACESECCOMP:
            return False
        link.arch = ev.arch
        return self.stopped(
            self.kernel, task, DebugStop(StopKind.SECCOMP, nr=ev.nr, value=best & _DATA)
        )

    def _status_of(self, link: Link, stop: DebugStop) -> int | None:
        """The wait status of a stop the tracer sees, None for one it does
        not (ptrace(2), "Stopped states")."""
        if stop.kind is StopKind.SIGNAL:
            return (stop.signo << 8) | 0x7F
        if stop.kind in (StopKind.SYSCALL_ENTRY, StopKind.SYSCALL_EXIT):
            if link.mode not in (
                ResumeMode.SYSCALL,
                ResumeMode.SYSEMU,
                ResumeMode.SYSEMU_SINGLESTEP,
            ):
                return None
            trap = signal.SIGTRAP | (0x80 if link.options & O_TRACESYSGOOD else 0)
            return (trap << 8) | 0x7F
        if stop.kind is StopKind.EVENT:
            if stop.event not in link.events():
                return None
            return ((signal.SIGTRAP | stop.event << 8) << 8) | 0x7F
        if stop.kind is StopKind.SECCOMP:
            return ((signal.SIGTRAP | EVENT_SECCOMP << 8) << 8) | 0x7F
        if (
            stop.kind is StopKind.INTERRUPT
            and stop.signo
            and (link.attach_wait or link.group_interrupt)
        ):
            # A group-stop, as the tracer sees it (ptrace(2), "Group-stop").
            link.group_interrupt = False
            if link.attach_wait:
                caller, link.attach_wait = link.attach_wait, 0
                self._set_events(link)
                self._finish_call(Tid(caller), 0)
            if link.seized:
                return ((stop.signo | EVENT_STOP << 8) << 8) | 0x7F
            return (stop.signo << 8) | 0x7F
        if stop.kind is StopKind.INTERRUPT:
            if link.auto_sigstop:
                # A non-seized auto-attached child: its first stop is the
                # SIGSTOP sent now, delivered before it runs anything.
                link.auto_sigstop = False
                link.interrupt = False
                link.attach_stop = True
                self._set_events(link)
                self.kernel.tracer.kill(link.tracee.tid, signal.SIGSTOP)
                return None
            if link.internal_interrupt:
                # Asked to set the options' event stops (the tracee ran).
                link.internal_interrupt = False
                self._set_events(link)
            if not link.interrupt:
                return None
            link.interrupt = False
            return ((signal.SIGTRAP | EVENT_STOP << 8) << 8) | 0x7F
        return None

    def _event_message(self, stop: DebugStop) -> int:
        if stop.event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_VFORK_DONE, EVENT_EXEC):
            return self.guest_tid(stop.value) or stop.value
        return stop.value

    def _notify(self, link: Link) -> None:
        """Tell the tracer of a kept stop (CLD_TRAPPED)."""
        info = self._chld_info(link.tracee.tid, CLD_TRAPPED, (link.status >> 8) & 0x7F)
        self._wake(link.tracer_tgid, link.tracer_tid, info)

    def _chld_info(self, tracee_tid: Tid, code: int, status: int) -> bytes:
        """The siginfo of the SIGCHLD Linux sends a tracer
        (do_notify_parent_cldstop, do_notify_parent)."""
        info = bytearray(SIGINFO_SIZE)
        uid = procfs.guest_uid(tracee_tid)
        guest = self.guest_tid(tracee_tid)
        struct.pack_into("=iiiiiIi", info, 0, signal.SIGCHLD, 0, code, 0, guest, uid, status)
        return bytes(info)

    def _wake(self, tracer_tgid: int, tracer_tid: Tid, info: bytes) -> None:
        """SIGCHLD to the tracer, as Linux sends it at a tracee's stop or
        exit; it also breaks a native wait of the tracer's, which the
        kernel restarts (ERESTARTSYS) and which then finds the report here.
        A waiting thread that blocks SIGCHLD is interrupted instead
        (PTRACE_INTERRUPT; a signal it blocks would not break its wait).
        A wait held here is answered at once."""
        waiters = [tid for tid, tgid in self.native_waits.items() if tgid == tracer_tgid]
        for tid in waiters:
            del self.native_waits[tid]
        tracer = self.kernel.tasks.get(tracer_tid)
        if tracer is not None:
            # To the tracing thread, as before: a tracer that sleeps in
            # sigwaitinfo(2) on a blocked SIGCHLD (umld itself) wakes too.
            self.kernel.raise_signal(tracer, signal.SIGCHLD, info)
        for tid in waiters:
            task = self.kernel.tasks.get(tid)
            if task is None:
                continue
            if _blocks_sigchld(task):
                try:
                    self.kernel.tracer.interrupt(tid)
                except TracerError:
                    pass
            elif tid != tracer_tid:
                self.kernel.raise_signal(task, signal.SIGCHLD, info)
        for tid, call in list(self.held_waits.items()):
            if call.task.tgid == tracer_tgid:
                self.retry_held(tid)

    def cloned(self, kernel: GuestKernel, parent: Task, child: Task, kind: CloneKind) -> None:
        link = self.links.get(parent.tid)
        if link is None:
            return
        event = {
            CloneKind.FORK: EVENT_FORK,
            CloneKind.VFORK: EVENT_VFORK,
        }.get(kind, EVENT_CLONE)
        if event not in link.events():
            return
        tracer = kernel.tasks.get(link.tracer_tid)
        if tracer is None:
            return
        # Auto-attached (ptrace(2), PTRACE_O_TRACEFORK): the child starts
        # with PTRACE_EVENT_STOP when seized, else with SIGSTOP.  The
        # platform leaves it in an interrupt stop before its first
        # instruction (set_event_stops): that stop is the first, or
        # SIGSTOP is sent there.
        new = self._link(child, tracer, seized=link.seized, options=link.options)
        new.interrupt = True
        new.auto_sigstop = not link.seized

    def execed(self, kernel: GuestKernel, task: Task) -> None:
        # What an exec means for the tracer comes at its event stop.
        return

    def exited(self, kernel: GuestKernel, task: Task, status: int) -> None:
        link = self.links.pop(task.tid, None)
        if link is None:
            return
        task.debugger = None
        if not link.child_of_tracer:
            # A tracer that is not the parent (or a traced thread's)
            # learns of the exit from the guest kernel; a parent, natively.
            self.exits.setdefault(link.tracer_tgid, []).append(
                (task.tid, self.guest_tid(task.tid), status)
            )
            code, si_status = _exit_code(status)
            info = self._chld_info(task.tid, code, si_status)
            self._wake(link.tracer_tgid, link.tracer_tid, info)

    def group_stopped(self, kernel: GuestKernel, task: Task, signo: int) -> None:
        """The tracee entered a group-stop: its tracer sees it as a stop
        (it then listens or lets it run): an interrupt makes it one."""
        link = self.links.get(task.tid)
        if link is None or link.stop is not None or link.attach_wait:
            return
        link.group_interrupt = True
        kernel.tracer.interrupt(task.tid)

    def continued(self, kernel: GuestKernel, task: Task) -> None:
        return

    def listen(self, link: Link) -> int:
        """PTRACE_LISTEN: a seized tracee in group-stop stays in it, yet
        SIGCONT (or another stop) is reported."""
        stop = link.stop
        if not link.seized or stop is None or stop.kind is not StopKind.INTERRUPT or not stop.signo:
            return -errno.EIO
        link.stop = None
        link.reported = False
        self.kernel.tracer.listen(link.tracee.tid)
        return 0

    def _finish_call(self, tid: Tid, result: int) -> None:
        """Complete a tracer's call held here (its attach)."""
        kernel = self.kernel
        if kernel.held.pop(tid, None) is not None and tid in kernel.tasks:
            kernel.tasks[tid].current_syscall = -1
            kernel.tracer.complete(tid, result)

    def tracer_gone(self, task: Task) -> None:
        """A tracer thread exited: its tracees are detached (or killed
        with PTRACE_O_EXITKILL), as exit_ptrace() does."""
        for link in [lk for lk in self.links.values() if lk.tracer_tid == task.tid]:
            if link.options & O_EXITKILL:
                self.kernel.tracer.kill(link.tracee.tid, signal.SIGKILL)
            self.detach(link, link.stop.signo if link.stop is not None else 0)
        self.native_waits.pop(task.tid, None)
        self.held_waits.pop(task.tid, None)
        if int(task.tid) == task.tgid:
            self.exits.pop(task.tgid, None)
            self.filtered.discard(task.tgid)

    # -- wait ------------------------------------------------------------------

    def find_report(
        self, caller: Task, which: int, ident: int, options: int, *, consume: bool
    ) -> tuple[int, int, int, int] | None:
        """A kept stop or an exit the caller may collect: (guest tid, wait
        status, CLD code, si_status), consumed unless ``consume`` is False.
        ``which``/``ident`` as waitid's idtype/id."""
        for tid, guest, status in self.exits.get(caller.tgid, []):
            if self._matches(caller, tid, guest, which, ident, options, thread=False):
                if consume:
                    self.exits[caller.tgid].remove((tid, guest, status))
                    if not self.exits[caller.tgid]:
                        del self.exits[caller.tgid]
                code, si = _exit_code(status)
                return guest, status, code, si
        for link in self.links.values():
            if link.tracer_tgid != caller.tgid or link.stop is None or link.reported:
                continue
            if options & WNOTHREAD and link.tracer_tid != caller.tid:
                continue
            guest = self.guest_tid(link.tracee.tid)
            if not self._matches(
                caller,
                link.tracee.tid,
                guest,
                which,
                ident,
                options,
                thread=int(link.tracee.tid) != link.tracee.tgid,
            ):
                continue
            if consume:
                link.reported = True
            return guest, link.status, CLD_TRAPPED, (link.status >> 8) & 0xFF
        return None

    def _matches(
        self,
        caller: Task,
        tid: Tid,
        guest: int,
        which: int,
        ident: int,
        options: int,
        *,
        thread: bool,
    ) -> bool:
        if which == P_PID and guest != ident:
            return False
        if which == P_PGID:
            pgid = os.getpgid(tid) if _alive(tid) else -1
            want = os.getpgid(caller.tid) if ident == 0 else self._host_pgid(ident)
            if pgid != want:
                return False
        # __WALL: every child; __WCLONE: only "clone" children; else only
        # the others (wait(2)).  A traced thread counts as a clone child.
        if not options & WALL and bool(options & WCLONE) != thread:
            return False
        return True

    def _host_pgid(self, guest_pgid: int) -> int:
        task = self.host_task(guest_pgid)
        return task.tgid if task is not None else -1

    def expects_report(self, caller: Task, which: int, ident: int, options: int) -> bool:
        """Whether a tracee of the caller matching the wait may still
        report (a link alive)."""
        for link in self.links.values():
            if link.tracer_tgid != caller.tgid:
                continue
            guest = self.guest_tid(link.tracee.tid)
            if self._matches(
                caller, link.tracee.tid, guest, which, ident, options | WALL, thread=False
            ):
                return True
        return False

    def retry_held(self, tid: Tid) -> None:
        """Look again for what a held wait waits for; complete it when found."""
        from umld.core.syscalls import sys_ptrace

        call = self.held_waits.get(tid)
        if call is None:
            return
        result = sys_ptrace.wait_again(self.kernel, call)
        if result is None:
            return
        del self.held_waits[tid]
        hold = self.kernel.held.pop(tid, None)
        del hold
        if tid in self.kernel.tasks:
            self.kernel.tasks[tid].current_syscall = -1
            self.kernel.tracer.complete(tid, result)

    def poll_held(self) -> None:
        """A held wait ends as Linux's wait ends when a signal comes: with
        ERESTARTSYS (kernel/exit.c, do_wait), which the kernel turns into
        EINTR or, for a handler with SA_RESTART and for a signal with no
        handler, into the call made again (arch/x86/kernel/signal.c).  The
        held call becomes a getpid that stops at its exit, where it is
        given the wait's number back and -ERESTARTSYS: the kernel's own
        restart logic then does the rest as the signal is delivered.
        Checked every HOLD_POLL s: nothing reports a signal queued to a
        thread in a ptrace stop.  (A 32-bit call ends with EINTR.)"""
        from umld.core import privileged

        for tid, call in list(self.held_waits.items()):
            if privileged.signal_pending(call.task):
                del self.held_waits[tid]
                self.kernel.held.pop(tid, None)
                call.task.current_syscall = -1
                if call.nr in (NR_WAIT4, NR_WAITID):
                    call.task.exit_hook = self._restartable(call.task, call.nr)
                    self.kernel.tracer.rewrite(tid, NR_GETPID, (), stop_at_exit=True)
                else:
                    self.kernel.tracer.complete(tid, -errno.EINTR)

    def _restartable(self, task: Task, nr: int) -> Callable[[int], None]:
        def restart(_result: int) -> None:
            regs = self.kernel.tracer.get_regs(task.tid)
            self.kernel.tracer.set_regs(
                task.tid, regs._replace(orig_rax=nr, rax=(-ERESTARTSYS) % (1 << 64))
            )

        return restart

    # -- the wait filter ---------------------------------------------------------

    def filter_elsewhere(self, task: Task) -> None:
        """The wait filter for another process (the parent of a
        PTRACE_TRACEME): stopped with an interrupt, made to run seccomp(2)
        at a ``syscall`` instruction of its vDSO, then put back as it was
        (a call it was in restarts)."""
        if task.debugger is not None:
            # Followed by another debugger (the export's gdb server): its
            # stops are not ours to use; its waits stay native.
            self.kernel.emit(
                "note",
                task.tgid,
                "ptrace: a tracer followed by another debugger keeps native waits",
            )
            return
        self.filtered.add(task.tgid)
        injector = _Injector(self, task)
        task.debugger = injector
        self.kernel.tracer.interrupt(task.tid)

    def place_filter(self, task: Task) -> int:
        """Write the filter and its sock_fprog below the thread's stack
        pointer and red zone (the thread is stopped; nothing else uses its
        stack there); returns the sock_fprog's address."""
        prog = wait_filter()
        regs = self.kernel.tracer.get_regs(task.tid)
        base = (regs.rsp - 128 - len(prog) - 64) & ~0xF
        fprog = base + len(prog) + 16
        fprog &= ~0xF
        self.kernel.tracer.write_memory(task.tid, base, prog)
        self.kernel.tracer.write_memory(
            task.tid, fprog, struct.pack("=HxxxxxxQ", len(prog) // 8, base)
        )
        return fprog


@final
class _Injector:
    """The debugger of a process being given the wait filter from outside
    (filter_elsewhere): interrupt, inject, restore."""

    def __init__(self, owner: GuestPtrace, task: Task) -> None:
        self.owner = owner
        self.task = task
        self.saved: object = None
        self.mask = 0
        self.gadget = 0
        self.step = "interrupt"

    def stopped(self, kernel: GuestKernel, task: Task, stop: DebugStop) -> bool:
        tracer = kernel.tracer
        if self.step == "interrupt" and stop.kind is StopKind.INTERRUPT:
            regs = tracer.get_regs(task.tid)
            gadget = _vdso_syscall(kernel, task)
            if gadget is None or regs.cs != 0x33:
                kernel.emit(
                    "note",
                    task.tgid,
                    "ptrace: cannot give this tracer its wait filter (no vDSO syscall, "
                    "or a 32-bit tracer): its waits will not see its tracees' stops",
                )
                self._done(kernel, task)
                return False
            self.saved = regs
            self.gadget = gadget
            # No handler may run in between (it would run on the injected
            # registers, and its calls would look like the injected one).
            self.mask = tracer.get_sigmask(task.tid)
            tracer.set_sigmask(task.tid, (1 << 64) - 1)
            prog_addr = self.owner.place_filter(task)
            tracer.set_regs(
                task.tid,
                regs._replace(
                    rip=gadget,
                    rax=NR_SECCOMP,
                    orig_rax=(1 << 64) - 1,
                    rdi=SECCOMP_SET_MODE_FILTER,
                    rsi=0,
                    rdx=prog_addr,
                ),
            )
            tracer.set_resume_mode(task.tid, ResumeMode.SYSCALL)
            self.step = "entry"
            tracer.resume(task.tid)
            return True
        if (
            self.step == "entry"
            and stop.kind is StopKind.SYSCALL_ENTRY
            and self._ours(kernel, task)
        ):
            self.step = "exit"
            tracer.resume(task.tid)
            return True
        if self.step == "exit" and stop.kind is StopKind.SYSCALL_EXIT and self._ours(kernel, task):
            from umld.tracer.platform import Regs

            saved = self.saved
            assert isinstance(saved, Regs)
            if stop.value != 0:
                kernel.emit(
                    "note", task.tgid, f"ptrace: the wait filter was refused ({stop.value})"
                )
            rax = saved.rax - (1 << 64) if saved.rax >> 63 else saved.rax
            if saved.orig_rax < (1 << 63) and -rax in _RESTARTS:
                # It was in a call the interrupt broke: restart it as the
                # kernel would have (arch_do_signal_or_restart).
                saved = saved._replace(rax=saved.orig_rax, rip=saved.rip - 2)
            elif saved.orig_rax < (1 << 63) and -rax == ERESTART_RESTARTBLOCK:
                saved = saved._replace(rax=NR_RESTART_SYSCALL, rip=saved.rip - 2)
            tracer.set_regs(task.tid, saved)
            tracer.set_sigmask(task.tid, self.mask)
            tracer.set_resume_mode(task.tid, ResumeMode.CONT)
            self._done(kernel, task)
            tracer.resume(task.tid)
            return True
        return False

    def _ours(self, kernel: GuestKernel, task: Task) -> bool:
        """Whether a syscall stop is the injected call's (right after the
        gadget's ``syscall``, seccomp's number)."""
        regs = kernel.tracer.get_regs(task.tid)
        return regs.rip == self.gadget + 2 and regs.orig_rax == NR_SECCOMP

    def _done(self, kernel: GuestKernel, task: Task) -> None:
        task.debugger = None

    def cloned(self, kernel: GuestKernel, parent: Task, child: Task, kind: CloneKind) -> None:
        return

    def execed(self, kernel: GuestKernel, task: Task) -> None:
        return

    def exited(self, kernel: GuestKernel, task: Task, status: int) -> None:
        return

    def group_stopped(self, kernel: GuestKernel, task: Task, signo: int) -> None:
        return

    def continued(self, kernel: GuestKernel, task: Task) -> None:
        return


def _vdso_syscall(kernel: GuestKernel, task: Task) -> int | None:
    """The address of a ``syscall`` instruction (0f 05) in the thread's
    vDSO (its fallback paths make real calls), or None."""
    try:
        with open(f"/proc/{task.tid}/maps", "rb") as f:
            for line in f:
                if line.rstrip().endswith(b"[vdso]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split(b"-"))
                    code = kernel.tracer.read_memory(task.tid, lo, hi - lo)
                    at = code.find(b"\x0f\x05")
                    return lo + at if at >= 0 else None
    except (OSError, TracerError, ValueError):
        return None
    return None


def _blocks_sigchld(task: Task) -> bool:
    """Whether the thread blocks SIGCHLD (SigBlk, proc(5))."""
    return bool(procfs.status_mask(task.tid, "SigBlk") & 1 << (signal.SIGCHLD - 1))


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _exit_code(status: int) -> tuple[int, int]:
    """waitid's CLD_* code and si_status for a wait status."""
    if os.WIFEXITED(status):
        return CLD_EXITED, os.WEXITSTATUS(status)
    if os.WCOREDUMP(status):
        return CLD_DUMPED, os.WTERMSIG(status)
    return CLD_KILLED, os.WTERMSIG(status)


def _yama_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _parent_tgid(tid: int) -> int:
    return int(procfs.status(tid, ("PPid",)).get("PPid", "0") or 0)


def _is_ancestor(ancestor: int, pid: int) -> bool:
    seen = 0
    while pid > 1 and seen < 4096:
        pid = _parent_tgid(pid)
        if pid == ancestor:
            return True
        seen += 1
    return False


def _alive(tid: int) -> bool:
    return os.path.exists(f"/proc/{tid}")
