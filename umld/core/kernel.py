"""The guest kernel: tasks, the syscall table, and the stop loop.

Every event of the tracer goes through :meth:`GuestKernel.handle`:
process events keep the task bookkeeping; a syscall stop is dispatched by
its table row.  Handlers raise GuestError; only :meth:`_dispatch` turns
that into -errno (errors are translated once, at this boundary), and an
unexpected exception in a handler is logged and answered with EIO so a
bug in one handler never takes the machine down.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TextIO, final

from umld.core import privileged, procfs
from umld.core.debugger import DebugStop, StopKind
from umld.core.events import GuestEvent
from umld.core.guest_ptrace import GuestPtrace
from umld.core.iobus import IoBus
from umld.core.policy import MachinePolicy
from umld.core.syscalls import lookup_table
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import (
    TRACER,
    AtExit,
    Disposition,
    Hold,
    Inject,
    Outcome,
    Rewrite,
    SyscallTable,
)
from umld.core.task import Pid, Task, ThreadGroup
from umld.core.trace import SyscallFormatter
from umld.errors import GuestError, get_logger
from umld.tracer.events import (
    Arch,
    Cloned,
    CloneKind,
    Continued,
    Event,
    EventStop,
    Execed,
    Exited,
    GroupStopped,
    HostSignal,
    Interrupted,
    SignalStop,
    SyscallEntry,
    SyscallExit,
    SyscallStop,
    Tid,
)
from umld.tracer.platform import SpawnSpec, TracerError, TracerPlatform

log = get_logger("umld.kernel")

#: Calls of the i386 ABI are counted under their number with this bit set.
I386_KEY = 1 << 20

#: Host signals that ask the guest to end: forwarded once, then SIGKILL.
TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: si_code values (asm-generic/siginfo.h).
SI_USER = 0
SI_TKILL = -6


@final
class GuestKernel:
    """One guest machine's kernel state.

    Preconditions:
        Every method runs on the thread that owns ``tracer``.
    """

    def __init__(
        self,
        tracer: TracerPlatform,
        table: SyscallTable,
        *,
        policy: MachinePolicy | None = None,
        trace_output: TextIO | None = None,
        compat_table: SyscallTable | None = None,
        features: Iterable[str] | None = None,
        post: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.tracer = tracer
        self.table = table
        #: The i386 ABI's calls (int 0x80, 32-bit programs).
        self.compat_table = compat_table or lookup_table("i386")
        #: The machine's features (Syscall.needs); None: all of them.
        self.features = None if features is None else frozenset(features)
        #: What handlers consult about the machine (names, CPUs, network).
        self.policy = policy or MachinePolicy()
        #: Hands work to the tracer thread from any thread, without
        #: waiting (the Host's; handlers that offload work finish through
        #: it).
        self.post = post or (lambda fn: fn())
        self.tasks: dict[Tid, Task] = {}
        self.processes: dict[Pid, ThreadGroup] = {}
        #: Trapped syscalls by number, all tasks, since start.
        self.syscalls: Counter[int] = Counter()
        #: processes, threads, execs, signals, denied: since start.
        self.counters: Counter[str] = Counter()
        #: The guest's first process (pid 2 of its pid namespace); until
        #: it exists, the sandbox process that builds the machine.
        self.root_pid: int | None = None
        #: The sandbox stage and the guest's init: machine processes that
        #: are not guest processes (not counted, not exported).
        self.internal: set[Tid] = set()
        self._spawn_tid: Tid | None = None
        self._root_found = False
        #: Set when the guest's first process has started its program (or
        #: the machine ended before): the machine is up.
        self.up = threading.Event()
        #: Processes started in the running machine (exec): the sandbox
        #: that enters it -> what to call with its first child's status.
        self._entering: dict[Tid, Callable[[int], None]] = {}
        #: Threads whose exec was seen before their clone: a new thread
        #: can run and exec before its parent's clone stop is handled
        #: (each thread's stops come in their own order); their clone
        #: event, if it still comes, adds nothing.
        self._execed_unborn: set[Tid] = set()
        self._sessions: dict[Tid, Callable[[int], None]] = {}
        self._event_formatter: SyscallFormatter | None = None
        #: Threads stopped in a call until the kernel releases them: in
        #: accept(2) while net/accept is closed (Hold), or while umld does
        #: the call for them elsewhere (Offloaded).
        self.held: dict[Tid, Hold] = {}
        #: host pid -> pid in the guest's pid namespace, for the export.
        self._guest_pids: dict[int, int] = {}
        self._host_pids: dict[int, int] = {}  # its reverse (guest -> host)
        self.root_status: int | None = None
        #: The signal a reboot(2) of the guest ended the machine with.
        self.ended_by: int | None = None
        #: Why the first process could not start: (stage, errno).
        self.spawn_error: tuple[str, int] | None = None
        self.listeners: list[Callable[[GuestEvent], None]] = []
        self.on_group_stop: Callable[[Task, int], None] | None = None
        #: The guest's first process leads a session and process group of
        #: its own (a machine's own terminal, the tty setting).
        self.own_session = False
        self._trace = (
            SyscallFormatter(table, trace_output, tracer.read_string) if trace_output else None
        )
        self._terminate_requests = 0
        #: monotonic time after which every guest process is killed (set
        #: by a termination request the guest does not obey).
        self.kill_deadline: float | None = None
        self.termination_grace = 10.0
        #: The OOM kills in the machine's memory cgroup so far (set by its
        #: control when it has one): a process killed by SIGKILL while
        #: that count rose was the OOM killer's victim (an ``oom`` event).
        self.oom_kills: Callable[[], int | None] | None = None
        self._oom_seen = 0
        #: Process names at their last exec (the victim of an OOM kill is
        #: reaped before its exit is handled): only with oom_kills.
        self._names: dict[int, str] = {}
        #: The machine's I/O-port bus: port I/O of the guest's threads,
        #: emulated at its fault (privileged.py), reaches it.  Its first
        #: use of a port no device decodes is a ``note`` event.
        self.iobus = IoBus(on_event=self._ioport_event)
        #: The process doing port I/O now (for the bus's events); 0 outside.
        self.io_pid = 0
        #: Threads stopped at ``hlt`` until a signal is pending for them.
        self.halted: dict[Tid, Task] = {}
        #: Signals raise_signal sent, by thread, whose siginfo is still to
        #: be set at their delivery stop (None: SI_USER from itself).
        self._raised: dict[Tid, dict[int, bytes | None]] = {}
        #: The guest's own ptrace(2) (guest_ptrace.py).
        self.guest_ptrace = GuestPtrace(self)
        #: cpuid = own: whether the host made a guest's CPUID fault
        #: (arch_prctl(ARCH_SET_CPUID)); None until the first try.
        self.cpuid_faulting: bool | None = None
        self._handlers: dict[type, Callable[[GuestKernel, Event], None]] = {
            SyscallStop: GuestKernel._on_syscall,
            SyscallExit: GuestKernel._on_syscall_exit,
            SignalStop: GuestKernel._on_signal,
            Interrupted: GuestKernel._on_interrupted,
            SyscallEntry: GuestKernel._on_syscall_entry,
            EventStop: GuestKernel._on_event_stop,
            Cloned: GuestKernel._on_cloned,
            Execed: GuestKernel._on_exec,
            Exited: GuestKernel._on_exit,
            GroupStopped: GuestKernel._on_group_stop,
            Continued: GuestKernel._on_continued,
            HostSignal: GuestKernel._on_host_signal,
        }

    # -- state changes usable from handlers and the export ---------------

    # -- state changes usable from handlers and the control --------------

    def release_held_accepts(self) -> None:
        """net/accept opened: the threads waiting at accept(2) go on (the
        call runs natively).  Tracer thread only."""
        for tid in [t for t, h in self.held.items() if type(h) is Hold]:
            self.release(tid)

    def guest_pid(self, host_pid: int) -> int:
        """The pid the guest sees for a host pid (NSpid, proc(5)); 0 when
        the process is gone or not in the guest's namespace."""
        pid = self._guest_pids.get(host_pid)
        if pid is None:
            pid = procfs.guest_pid(host_pid)
            if pid and host_pid in self.processes:
                self._guest_pids[host_pid] = pid
                self._host_pids[pid] = host_pid
        return pid

    def known_host_pid(self, pid: int) -> int | None:
        """The host pid of guest pid ``pid`` if :meth:`guest_pid` has
        told it and the process still lives; None if not known (any
        thread: the export asks in every request)."""
        host = self._host_pids.get(pid)
        if host is None or self._guest_pids.get(host) != pid:
            return None
        return host

    def deny(self, task: Task, text: str) -> None:
        """Count a refused call and report it (a ``denied`` event)."""
        self.counters["denied"] += 1
        self.emit("denied", task.tgid, text)

    def emit(self, kind: str, pid: int, text: str) -> None:
        if self.listeners:
            ev = GuestEvent.now(kind, self.guest_pid(pid) if pid > 0 else pid, text)
            for listener in self.listeners:
                listener(ev)

    # -- life cycle ------------------------------------------------------

    def start(self, spec: SpawnSpec) -> Pid:
        """Start the guest's first process."""
        tid = self.tracer.spawn(spec)
        pid = Pid(tid)
        self.root_pid = pid
        self._spawn_tid = tid
        self.internal.add(tid)
        self._add_process(pid, tid)
        return pid

    @property
    def stage(self) -> int | None:
        """The host pid of the machine's sandbox stage (its first process:
        its root is the staging tree with the copy-on-write root's record,
        sandbox.c), None before the start."""
        return self._spawn_tid

    @property
    def pgrp(self) -> int:
        """The guest's process group: the sandbox's, made by spawn; on a
        terminal of its own, the first process's (it called setsid(2))."""
        if self.own_session and self._root_found and self.root_pid is not None:
            return self.root_pid
        return self._spawn_tid or 0

    @property
    def root_found(self) -> bool:
        """Whether root_pid is the guest's first process (not the sandbox)."""
        return self._root_found

    def start_session(self, spec: SpawnSpec, on_exit: Callable[[int], None]) -> Tid:
        """Start a process in the running machine (``umld-sandbox enter``);
        ``on_exit`` gets its raw wait status (or the sandbox's, when it
        could not start it).  Tracer thread only."""
        tid = self.tracer.spawn(spec)
        self.internal.add(tid)
        self._entering[tid] = on_exit
        self._add_process(Pid(tid), tid)
        return tid

    @property
    def finished(self) -> bool:
        return self.root_status is not None and not self.tasks

    def statistics(self) -> dict[str, object]:
        """Counters since start: trapped syscalls by name and events."""
        name = self.syscall_name
        return {
            "syscalls": {name(nr): n for nr, n in self.syscalls.most_common()},
            "trapped": sum(self.syscalls.values()),
            **dict(self.counters),
            "live_processes": sum(1 for p in list(self.processes) if Tid(p) not in self.internal),
            "live_threads": sum(1 for t in list(self.tasks) if t not in self.internal),
        }

    def handle(self, ev: Event) -> None:
        self._handlers[type(ev)](self, ev)

    def raise_signal(self, task: Task, signo: int, info: bytes | None = None) -> None:
        """Raise ``signo`` in a thread as Linux does for the thread's own
        call (send_sig(), e.g. SIGPIPE of a send(2) that got EPIPE): si_code
        SI_USER, si_pid and si_uid the thread's own, as its namespaces see
        them; or with the siginfo ``info`` (SIGINFO_SIZE bytes: a SIGCHLD
        of the guest's ptrace).  Sent with tgkill(2) now; the siginfo is
        put right at its delivery stop, since a tracer cannot send an
        SI_USER signal or a kernel one it did not send
        (rt_tgsigqueueinfo(2), EPERM)."""
        self._raised.setdefault(task.tid, {})[signo] = info
        self.tracer.kill(task.tid, signo)

    def _mend_raised(self, task: Task, signo: int) -> None:
        raised = self._raised.get(task.tid)
        if raised is None or signo not in raised:
            return
        given = raised.pop(signo)
        if not raised:
            del self._raised[task.tid]
        try:
            info = self.tracer.get_siginfo(task.tid)
        except TracerError:
            return
        if info.code != SI_TKILL or info.pid not in (0, os.getpid()):
            return  # another sender's: the kernel's own siginfo stands
        if given is not None:
            self.tracer.set_siginfo(task.tid, given)
            return
        # x86_64 siginfo_t: si_signo, si_errno, si_code, padding; at 16
        # the _kill member: si_pid, si_uid.
        raw = bytearray(info.raw)
        struct.pack_into("=i", raw, 8, SI_USER)
        struct.pack_into("=iI", raw, 16, self.guest_pid(task.tgid), procfs.guest_uid(task.tid))
        self.tracer.set_siginfo(task.tid, bytes(raw))

    def kill_all(self, signo: int = signal.SIGKILL) -> None:
        for tid in list(self.tasks):
            self.tracer.kill(tid, signo)

    def end_machine(self, signo: int) -> None:
        """The guest rebooted or halted its machine (sys_reboot.py): every
        guest process is killed, and the machine's first process counts
        as killed by ``signo``, as a pid namespace's init does
        (reboot_pid_ns)."""
        self.ended_by = signo
        self.kill_all()

    def request_termination(self, signo: int) -> None:
        """umld was asked to end (SIGINT/SIGTERM...): the first request
        goes to the guest's first process group as the terminal would send
        it; a second one kills every guest process."""
        self._terminate_requests += 1
        if self._terminate_requests == 1 and self.root_status is None and self.root_pid:
            try:
                # The sandbox and the guest's init block every signal:
                # the guest's processes in this group are the ones to ask.
                os.killpg(self.pgrp, signo)
            except OSError:
                self.tracer.kill(Tid(self.root_pid), signo)
            self.kill_deadline = time.monotonic() + self.termination_grace
        else:
            self.kill_all()

    # -- event handlers --------------------------------------------------

    def _task(self, tid: Tid) -> Task:
        task = self.tasks.get(tid)
        if task is None:
            # Backends announce every thread before its first event; this
            # is only reached for a thread adopted from elsewhere.
            log.warning("event for unannounced thread %d", tid)
            pid = Pid(procfs.tgid(tid) or tid)
            if pid not in self.processes:
                self._add_process(pid, Tid(pid))
            task = self._add_thread(pid, tid)
        return task

    def _on_syscall(self, ev: Event, *, guest_checked: bool = False) -> None:
        assert isinstance(ev, SyscallStop)
        tid, nr, arch = ev.tid, ev.nr, ev.arch
        task = self.tasks.get(tid) or self._task(tid)
        if task.seccomp and not guest_checked and self.guest_ptrace.seccomp_stop(task, ev):
            return  # a filter of the guest's own asked for its tracer
        if arch is Arch.X86_64:
            table, key = self.table, nr
        elif arch is Arch.I386:
            table, key = self.compat_table, I386_KEY | (nr & 0xFFFFFFFF)
        else:
            self._refuse_abi(task, ev)
            return
        if tid not in self.internal and self.up.is_set():
            task.syscalls[key] += 1
            self.syscalls[key] += 1
        # The machine's own sandbox stage is not the guest: not traced.
        trace = self._trace if tid not in self.internal else None
        row = table.lookup(nr)
        if trace:
            trace.enter(task, nr, ev.args, table)
        if self.policy.trace_events and self.listeners and tid not in self.internal:
            fmt = self._event_formatter
            if fmt is None:
                # Only format_call is used: the output stream is unused.
                fmt = self._event_formatter = SyscallFormatter(
                    self.table, sys.stderr, self.tracer.read_string
                )
            self.emit("syscall", task.tgid, fmt.format_call(tid, nr, ev.args, table))
        if (
            row is None
            or row.disposition is Disposition.PASSTHROUGH
            # A conditional row outside the machine's features, or whose
            # argument tests do not hold, is one the filter lets through
            # (it stops here only in full-trace mode).
            or (
                row.needs
                and row.needs != TRACER
                and self.features is not None
                and row.needs not in self.features
                and not row.also
            )
            or (
                (row.when or row.also)
                and not row.stops_for(
                    ev.args,
                    wide=arch is Arch.X86_64,
                    have=None if row.needs == TRACER else self.features,
                )
            )
        ):
            task.current_syscall = key
            self.tracer.resume(tid, stop_at_exit=trace is not None)
            return
        if row.disposition is Disposition.DENY:
            result: Outcome = -row.deny_errno
            self.counters["denied"] += 1
            self.emit("denied", task.tgid, f"{row.name}: {row.note}")
        else:
            assert row.handler is not None
            try:
                result = row.handler(SyscallContext(self, task, nr, ev.args, arch))
            except GuestError as exc:
                result = -exc.errno
            except Hold as hold:
                # Stay stopped at the call; released by the kernel later.
                task.current_syscall = key
                self.held[tid] = hold
                return
            except Exception:
                log.exception("handler for %s failed; the guest gets EIO", row.name)
                result = -errno.EIO
        if result is None:
            task.current_syscall = key
            stop = trace is not None or (
                task.cpuid is not None and privileged.cpuid_stops_at_exit(task)
            )
            self.tracer.resume(tid, stop_at_exit=stop)
        elif isinstance(result, Rewrite):
            task.current_syscall = key
            self.tracer.rewrite(tid, result.nr, result.args, stop_at_exit=trace is not None)
        elif isinstance(result, AtExit):
            task.current_syscall = key
            task.exit_hook = result.then
            self.tracer.resume(tid, stop_at_exit=True)
        elif isinstance(result, Inject):
            task.current_syscall = key
            task.exit_hook = self._again(task, nr, result.then)
            self.tracer.rewrite(tid, result.nr, result.args, stop_at_exit=True)
        else:
            self.tracer.complete(tid, result)
            if trace:
                trace.exit(task, nr, result, emulated=True)

    def _again(
        self, task: Task, nr: int, then: Callable[[int], None] | None
    ) -> Callable[[int], None]:
        """The exit hook of an Inject: the thread goes back to its
        ``syscall`` instruction (2 bytes, as ``int 0x80``) with its own
        call's number, so that it makes that call again."""

        def again(result: int) -> None:
            regs = self.tracer.get_regs(task.tid)
            self.tracer.set_regs(task.tid, regs._replace(rip=regs.rip - 2, rax=nr))
            if then is not None:
                then(result)

        return again

    def redispatch(self, task: Task, arch: Arch) -> None:
        """A guest tracer resumed its tracee from a seccomp stop of the
        guest's own filter: the call, as the tracer may have changed it,
        is the guest kernel's as any other (without this, a changed
        number would run natively: the host rechecks filters after such a
        stop with RET_TRACE meaning allow, seccomp(2)).  Number -1: the
        tracer skipped the call; its result stands."""
        regs = self.tracer.get_regs(task.tid)
        nr = regs.orig_rax - (1 << 64) if regs.orig_rax >> 63 else regs.orig_rax
        if nr == -1:
            self.tracer.resume(task.tid)
            return
        if arch is Arch.I386:
            m = 0xFFFFFFFF
            nr &= m
            args = (
                regs.rbx & m,
                regs.rcx & m,
                regs.rdx & m,
                regs.rsi & m,
                regs.rdi & m,
                regs.rbp & m,
            )
        else:
            args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
        self._on_syscall(SyscallStop(task.tid, nr, args, arch), guest_checked=True)

    def _debugged(self, task: Task, stop: DebugStop) -> bool:
        """Hand what is left of a stop to the thread's debugger (debugger.py):
        True when it keeps the thread there."""
        debugger = task.debugger
        return debugger is not None and debugger.stopped(self, task, stop)

    def _refuse_abi(self, task: Task, ev: SyscallStop) -> None:
        """A call of an ABI umld does not support (x32: bit 30 of the
        number with the x86_64 entry): ENOSYS, as a kernel built without
        CONFIG_X86_X32_ABI answers."""
        if self._trace and task.tid not in self.internal:
            self._trace.foreign(task, ev)
        if task.tid not in self.internal:
            self.counters["denied"] += 1
            self.emit("denied", task.tgid, f"{ev.arch.name.lower()} call {ev.nr:#x}: ENOSYS")
        self.tracer.complete(task.tid, -errno.ENOSYS)

    def syscall_name(self, key: int) -> str:
        """The name of a call counted under ``key`` (i386 calls are
        counted apart: their numbers mean other calls)."""
        if key >= 0 and key & I386_KEY:
            return self.compat_table.name(key & ~I386_KEY) + " (i386)"
        return self.table.name(key)

    def release(self, tid: Tid, reason: type[Hold] = Hold) -> bool:
        """Let a held thread's call run natively.  Tracer thread only."""
        hold = self.held.get(tid)
        if hold is None or type(hold) is not reason:
            return False
        del self.held[tid]
        if tid in self.tasks:
            self.tracer.resume(tid)
        return True

    def finish(self, tid: Tid, hold: Hold, result: int) -> None:
        """Complete a call held by ``hold`` (an Offloaded) with ``result``;
        nothing when the thread is gone or no longer held by it.  Tracer
        thread only."""
        if self.held.get(tid) is not hold:
            return
        del self.held[tid]
        if tid in self.tasks:
            self.tasks[tid].current_syscall = -1
            self.tracer.complete(tid, result)

    def _on_syscall_exit(self, ev: Event) -> None:
        assert isinstance(ev, SyscallExit)
        task = self._task(ev.tid)
        if self._trace and ev.tid not in self.internal:
            self._trace.exit(task, task.current_syscall, ev.result)
        task.current_syscall = -1
        if task.cpuid is not None and privileged.cpuid_stops_at_exit(task):
            privileged.cpuid_exit(self, task, ev.result)
            return
        hook = task.exit_hook
        if hook is not None:
            task.exit_hook = None
            hook(ev.result)
        if self._debugged(task, DebugStop(StopKind.SYSCALL_EXIT, nr=ev.nr, value=ev.result)):
            return
        self.tracer.resume(ev.tid)

    def _on_syscall_entry(self, ev: Event) -> None:
        # Only a debugger's resume mode makes these (debugger.py).
        assert isinstance(ev, SyscallEntry)
        task = self._task(ev.tid)
        if self._debugged(task, DebugStop(StopKind.SYSCALL_ENTRY, nr=ev.nr)):
            return
        self.tracer.resume(ev.tid)

    def _on_event_stop(self, ev: Event) -> None:
        # Only a debugger's set_event_stops makes these (debugger.py).
        assert isinstance(ev, EventStop)
        task = self._task(ev.tid)
        if self._debugged(task, DebugStop(StopKind.EVENT, value=ev.message, event=ev.event)):
            return
        self.tracer.resume(ev.tid)

    def polling(self) -> bool:
        """Whether threads wait for something only a look can tell (a
        signal queued to a thread in a ptrace stop): hlt, a held wait."""
        return bool(self.halted or self.guest_ptrace.held_waits)

    def poll(self) -> None:
        """Look (every HLT_POLL seconds while ``polling``)."""
        if self.halted:
            privileged.wake_halted(self)
        if self.guest_ptrace.held_waits:
            self.guest_ptrace.poll_held()

    def _ioport_event(self, text: str) -> None:
        # The bus's and its devices' lines ("ioport unknown 0x02f8", "post
        # 0x2a"): one `ioport` kind, with the guest process whose access
        # it was (0: the host's, through the export or the API).
        self.emit("ioport", self.io_pid, text.removeprefix("ioport "))

    def _on_signal(self, ev: Event) -> None:
        assert isinstance(ev, SignalStop)
        task = self._task(ev.tid)
        if self._raised:
            self._mend_raised(task, ev.signo)
        if (task.io is not None or ev.signo == signal.SIGSEGV) and ev.tid not in self.internal:
            # Port I/O, cli, sti, hlt emulated at their fault, and signals
            # held by a clear virtual IF (privileged.py); siginfo is only
            # read for these.
            if ev.signo == signal.SIGSEGV and privileged.on_fault(self, task):
                return
            if privileged.hold_signal(self, task, ev.signo):
                return
        if self._debugged(task, DebugStop(StopKind.SIGNAL, signo=ev.signo)):
            return
        if ev.tid not in self.internal:
            self.counters["signals"] += 1
        if self._trace:
            self._trace.signal(task, ev.signo)
        if self.listeners:
            self.emit("signal", task.tgid, _signame(ev.signo))
        self.tracer.resume(ev.tid, ev.signo)

    def _on_cloned(self, ev: Event) -> None:
        assert isinstance(ev, Cloned)
        parent = self._task(ev.tid)
        if ev.tid in self.internal and ev.kind is not CloneKind.THREAD:
            if ev.tid in self._entering:
                self._sessions[ev.child] = self._entering.pop(ev.tid)
            elif ev.tid == self._spawn_tid:
                # The sandbox's child is the guest's init (pid 1).
                self.internal.add(ev.child)
            elif not self._root_found:
                # init's first child is the guest's first process.
                self._root_found = True
                self.root_pid = ev.child
        bound = self.policy.affinity.get(int(ev.tid))
        if bound is not None:
            # A clone inherits its parent's CPU affinity (sched_setaffinity(2)).
            self.policy.affinity[int(ev.child)] = bound
        if ev.child in self._execed_unborn:
            self._execed_unborn.discard(ev.child)
        elif ev.kind is CloneKind.THREAD:
            self._add_thread(parent.tgid, ev.child)
        else:
            self._add_process(Pid(ev.child), ev.child)
            if self.listeners and ev.child not in self.internal:
                ppid = self.guest_pid(parent.tgid)
                self.emit("spawn", ev.child, f"{ev.kind.value} from pid {ppid}")
        if parent.seccomp:
            child = self.tasks.get(ev.child)
            if child is not None:
                child.seccomp = parent.seccomp  # filters are inherited (seccomp(2))
        if parent.debugger is not None:
            child = self.tasks.get(ev.child)
            if child is not None:
                parent.debugger.cloned(self, parent, child, ev.kind)
        if parent.io is not None or parent.cpuid is not None:
            child = self.tasks.get(ev.child)
            if child is not None:
                # I/O rights and the interrupt flag are inherited by every
                # clone (ioperm(2); copy_thread keeps io_bitmap and
                # iopl_emul), and so is CPUID faulting.
                if parent.io is not None and child.io is None:
                    child.io = parent.io.copy()
                if parent.cpuid is not None and child.cpuid is None:
                    child.cpuid = parent.cpuid.copy()

    def _on_exec(self, ev: Event) -> None:
        assert isinstance(ev, Execed)
        task = self._task(ev.former_tid) if ev.former_tid in self.tasks else self._task(ev.tid)
        group = self.processes[task.tgid]
        if ev.former_tid != ev.tid:
            # A non-leader thread exec'd: the kernel killed every other
            # thread and gave this one the leader's id (ptrace(2), "execve(2)
            # under ptrace").  Those threads report no exit of their own.
            for other in list(group.threads):
                if other != ev.former_tid:
                    self._drop_thread(group, other)
            if ev.former_tid not in self.tasks:
                self._execed_unborn.add(ev.former_tid)
            self.tasks.pop(ev.former_tid, None)
            group.threads.pop(ev.former_tid, None)
            task.tid = ev.tid
            self.tasks[ev.tid] = task
            group.threads[ev.tid] = task
        if task.io is not None and not task.io.vif:
            # A new program starts with IF set (start_thread); the I/O
            # rights stay (ioperm(2): "preserved across execve").
            privileged.release_held(self, task)
        if ev.tid in self.internal:
            return
        if task.debugger is not None:
            task.debugger.execed(self, task)
        if self.policy.cpuid_own:
            privileged.cpuid_exec(self, task)
        if ev.tid == self.root_pid and self._root_found:
            self.up.set()
        self.counters["execs"] += 1
        if self.oom_kills is not None:
            self._names[group.pid] = procfs.comm(group.pid)
            self.guest_pid(group.pid)  # kept while it lives, for the event
        if self.listeners:
            argv = procfs.cmdline(group.pid)
            if not argv:
                # It already ran and exited (the tracer resumes an exec
                # before this event is handled): a zombie keeps its comm.
                argv = [procfs.comm(group.pid)]
            self.emit("exec", group.pid, " ".join(argv))

    def _on_exit(self, ev: Event) -> None:
        assert isinstance(ev, Exited)
        task = self.tasks.pop(ev.tid, None)
        self.held.pop(ev.tid, None)
        self.halted.pop(ev.tid, None)
        self.guest_ptrace.group_stops.discard(ev.tid)
        self.policy.affinity.pop(int(ev.tid), None)
        if self._trace:
            self._trace.gone(ev.tid)
        if task is not None and task.debugger is not None:
            task.debugger.exited(self, task, ev.status)
        gp = self.guest_ptrace
        if task is not None and (gp.links or gp.exits or gp.filtered):
            gp.tracer_gone(task)
        if task is not None:
            group = self.processes.get(task.tgid)
            if group is not None:
                group.threads.pop(ev.tid, None)
                if not group.threads:
                    del self.processes[task.tgid]
        if ev.tid == self.root_pid:
            self.up.set()
            # A raw wait status: a process killed by signal N has N.
            self.root_status = ev.status if self.ended_by is None else self.ended_by
            self.spawn_error = ev.spawn_error
            # Like the init of a PID namespace (pid_namespaces(7)): when
            # the first process ends, every other guest process is killed,
            # so nothing the guest started outlives the machine.
            self.kill_all()
        done = self._sessions.pop(ev.tid, None) or self._entering.pop(ev.tid, None)
        if done is not None:
            try:
                done(ev.status)
            except Exception:
                log.exception("a session's exit callback failed")
        if task is not None and int(task.tid) == task.tgid:
            self._check_oom(task.tgid, ev.status)
        if ev.tid in self.internal:
            self.internal.discard(ev.tid)
        elif self.listeners and task is not None and int(task.tid) == task.tgid:
            self.emit("exit", task.tgid, _describe_status(ev.status))
        if task is not None and task.tgid not in self.processes:
            gone = self._guest_pids.pop(task.tgid, 0)
            if self._host_pids.get(gone) == task.tgid:
                del self._host_pids[gone]
            self._names.pop(task.tgid, None)

    def _check_oom(self, pid: int, status: int) -> None:
        """A process killed by SIGKILL while the machine's OOM kills rose
        was the victim: the kernel counts the kill (memory.events,
        memory.oom_control) before it sends the signal (mm/oom_kill.c),
        so the count has risen by the time its exit is seen."""
        if self.oom_kills is None or not (
            os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        ):
            return
        kills = self.oom_kills()
        if kills is None or kills <= self._oom_seen:
            return
        self._oom_seen += 1
        self.counters["oom_kills"] += 1
        name = self._names.get(pid) or procfs.comm(pid)
        self.emit("oom", pid, f"name={name}")

    def _on_interrupted(self, ev: Event) -> None:
        # Asked by the guest kernel (privileged.py) or a debugger.
        assert isinstance(ev, Interrupted)
        task = self._task(ev.tid)
        if task.io is not None:
            privileged.on_interrupted(self, task)
        if self._debugged(task, DebugStop(StopKind.INTERRUPT, signo=ev.signo)):
            return
        if ev.signo:
            self.tracer.listen(ev.tid)  # taken in a group-stop: back into it
        else:
            self.tracer.resume(ev.tid)

    def _on_group_stop(self, ev: Event) -> None:
        assert isinstance(ev, GroupStopped)
        task = self._task(ev.tid)
        self.guest_ptrace.group_stops.add(task.tid)
        if task.debugger is not None:
            task.debugger.group_stopped(self, task, ev.signo)
        if self.listeners:
            self.emit("signal", task.tgid, f"stopped by {_signame(ev.signo)}")
        if self.on_group_stop is not None and ev.tid == self.root_pid:
            self.on_group_stop(task, ev.signo)

    def _on_continued(self, ev: Event) -> None:
        assert isinstance(ev, Continued)
        task = self._task(ev.tid)  # announces an unknown thread, as every event does
        self.guest_ptrace.group_stops.discard(task.tid)
        if task.debugger is not None:
            task.debugger.continued(self, task)

    def _on_host_signal(self, ev: Event) -> None:
        assert isinstance(ev, HostSignal)
        if ev.signo in TERMINATING_SIGNALS:
            self.request_termination(ev.signo)

    # -- bookkeeping -----------------------------------------------------

    def _add_process(self, pid: Pid, leader: Tid) -> None:
        if leader not in self.internal:
            self.counters["processes"] += 1
        self.processes[pid] = ThreadGroup(pid)
        self._add_thread(pid, leader)

    def _add_thread(self, pid: Pid, tid: Tid) -> Task:
        if tid not in self.internal:
            self.counters["threads"] += 1
        task = Task(tid=tid, tgid=pid)
        self.tasks[tid] = task
        self.processes[pid].threads[tid] = task
        return task

    def _drop_thread(self, group: ThreadGroup, tid: Tid) -> None:
        group.threads.pop(tid, None)
        self.tasks.pop(tid, None)


def _signame(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"SIG{signo}"


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {_signame(os.WTERMSIG(status))}{core}"
    return f"status={os.WEXITSTATUS(status)}"
