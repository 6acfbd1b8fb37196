"""A gdb remote serial protocol server for one guest process (``proc/PID/gdb``).

A host gdb cannot ptrace a guest thread (umld is its tracer), so the
export offers a socket speaking gdb's remote protocol instead (gdb's
manual, "Remote Protocol"), and this module stands in for gdbserver: it
is a :class:`umld.core.debugger.Debugger` of every thread of the process,
and does what gdb asks through the tracer platform, on the tracer thread,
while umld goes on emulating the calls the guest kernel handles.

The session runs in a thread of its own (one per connection).  It reads
packets from the socket and hands every piece of work on a guest thread
to the tracer thread (``call``, the machine's ``on_tracer``); the
Debugger callbacks run on the tracer thread and hand a finished stop
reply back through a queue and a wake-up pipe.  All the state below is
the tracer thread's: the session thread touches it only inside ``call``.

What gdb sees (all-stop mode, gdb's default):

* attach stops every thread (``interrupt``); the first ``?`` says T00;
* a thread's stop (a breakpoint, a step, a signal) stops every other
  thread before the stop reply goes out; a thread that stops for a
  reason of its own meanwhile keeps it pending and reports it at the
  next resume instead of running (gdbserver's way);
* software breakpoints are int3 bytes written with ``write_memory`` (the
  original bytes are restored at removal, hidden from memory reads and
  kept up to date by memory writes); hardware breakpoints and
  watchpoints use the debug registers DR0-DR3 and DR7 of every thread
  (``poke_user`` at USER_DEBUGREG; the kernel keeps them per thread);
* single-step is ``set_resume_mode(SINGLESTEP)`` for that resume;
* stop replies carry ``thread:``, and ``swbreak``/``hwbreak``/``watch``
  for the stops those caused (the PC moved back over an int3, as the
  protocol asks of x86 stubs); signals use gdb's numbering
  (include/gdb/signals.def), not Linux's;
* the end of the process gives W (exit status) or X (signal);
* detaching (D), the connection's end, or the end of the machine remove
  every breakpoint and debug register, set the resume mode back to CONT
  and resume every thread: the process runs on as if never debugged.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from umld.core.debugger import DebugStop, StopKind
from umld.errors import get_logger
from umld.tracer.events import CloneKind, ResumeMode, Tid
from umld.tracer.platform import NT_PRFPREG, USER_DEBUGREG, Regs, TracerError

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.task import Task

log = get_logger("umld.gdb")
T = TypeVar("T")

#: Seconds an attach waits for every thread to stop.
ATTACH_TIMEOUT = 10.0
#: Largest packet we take or send (qSupported's PacketSize, hex).
PACKET_SIZE = 0x4000
#: si_code values of a SIGTRAP (asm-generic/siginfo.h): int3 raises
#: SI_KERNEL; a debug-register hit TRAP_HWBKPT; a single step TRAP_TRACE.
SI_KERNEL = 0x80
TRAP_HWBKPT = 4
#: gdb's signal numbers (include/gdb/signals.def) for Linux's.
_GDB_SIGNALS = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6,
    "SIGFPE": 8, "SIGKILL": 9, "SIGBUS": 10, "SIGSEGV": 11, "SIGSYS": 12, "SIGPIPE": 13,
    "SIGALRM": 14, "SIGTERM": 15, "SIGURG": 16, "SIGSTOP": 17, "SIGTSTP": 18, "SIGCONT": 19,
    "SIGCHLD": 20, "SIGTTIN": 21, "SIGTTOU": 22, "SIGIO": 23, "SIGXCPU": 24, "SIGXFSZ": 25,
    "SIGVTALRM": 26, "SIGPROF": 27, "SIGWINCH": 28, "SIGUSR1": 30, "SIGUSR2": 31,
    "SIGPWR": 32,
}  # fmt: skip
GDB_SIGNAL_UNKNOWN = 143


def to_gdb_signal(signo: int) -> int:
    """Linux signal ``signo`` as gdb numbers it (0 stays 0)."""
    if signo == 0:
        return 0
    try:
        name = signal.Signals(signo).name
    except ValueError:
        name = ""
    if name in _GDB_SIGNALS:
        return _GDB_SIGNALS[name]
    # Real-time signals: 32 is 77, 33..63 are 45..75, 64 is 78.
    if signo == 32:
        return 77
    if 33 <= signo <= 63:
        return signo + 12
    if signo == 64:
        return 78
    return GDB_SIGNAL_UNKNOWN


_FROM_GDB = {v: k for k, v in _GDB_SIGNALS.items()}


def from_gdb_signal(number: int) -> int:
    """gdb's signal ``number`` as Linux's; 0 when Linux has none."""
    name = _FROM_GDB.get(number)
    if name is not None:
        return int(signal.Signals[name])
    if number == 77:
        return 32
    if 45 <= number <= 75:
        return number - 12
    if number == 78:
        return 64
    return 0


# -- registers -----------------------------------------------------------------

#: The g packet's registers, in gdb's amd64 numbering (features/i386/
#: 64bit-core.xml, -sse, -linux, -segments): name, size in bytes, where
#: the value lives ("r" Regs field, "fx" offset in the FXSAVE area of
#: NT_PRFPREG, "tag" the full x87 tag word made from the abridged one).
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")


@dataclass(frozen=True)
class _Reg:
    name: str
    size: int
    where: str  # "r", "fx", "tag"
    key: str | int  # Regs field, or FXSAVE offset
    xml: str  # type and group attributes in target.xml


def _register_table() -> list[_Reg]:
    regs = [_Reg(n, 8, "r", n, 'type="int64"') for n in _GPRS]
    regs[6] = _Reg("rbp", 8, "r", "rbp", 'type="data_ptr"')
    regs[7] = _Reg("rsp", 8, "r", "rsp", 'type="data_ptr"')
    regs.append(_Reg("rip", 8, "r", "rip", 'type="code_ptr"'))
    regs.append(_Reg("eflags", 4, "r", "rflags", 'type="i386_eflags"'))
    regs += [_Reg(n, 4, "r", n, 'type="int32"') for n in _SEGS]
    # FXSAVE (Intel SDM vol. 1, 10.5.1, 64-bit format): FCW 0, FSW 2, the
    # abridged FTW 4, FOP 6, FPU IP 8 (gdb's fioff, fiseg the high half),
    # FPU DP 16 (fooff, foseg), MXCSR 24, ST(i) at 32 + 16 i, XMMi at 160 + 16 i.
    regs += [_Reg(f"st{i}", 10, "fx", 32 + 16 * i, 'type="i387_ext"') for i in range(8)]
    fl = 'type="int" group="float"'
    regs += [
        _Reg("fctrl", 4, "fx", 0, fl),
        _Reg("fstat", 4, "fx", 2, fl),
        _Reg("ftag", 4, "tag", 4, fl),
        _Reg("fiseg", 4, "fx", 12, fl),
        _Reg("fioff", 4, "fx", 8, fl),
        _Reg("foseg", 4, "fx", 20, fl),
        _Reg("fooff", 4, "fx", 16, fl),
        _Reg("fop", 4, "fx", 6, fl),
    ]
    regs += [_Reg(f"xmm{i}", 16, "fx", 160 + 16 * i, 'type="vec128"') for i in range(16)]
    regs.append(_Reg("mxcsr", 4, "fx", 24, 'type="int" group="vector"'))
    regs.append(_Reg("orig_rax", 8, "r", "orig_rax", 'type="int"'))
    regs.append(_Reg("fs_base", 8, "r", "fs_base", 'type="int"'))
    regs.append(_Reg("gs_base", 8, "r", "gs_base", 'type="int"'))
    return regs


REGISTERS = _register_table()
_REG_INDEX = {r.name: i for i, r in enumerate(REGISTERS)}
#: Register sizes within the FXSAVE area for 2-byte fields.
_FX_WIDTH = {0: 2, 2: 2, 6: 2}
FXSAVE_SIZE = 512


def target_xml() -> bytes:
    """The target description gdb asks for (qXfer:features:read), in the
    features gdb's amd64 Linux support looks for by name (i386-tdep.c
    i386_validate_tdesc_p, amd64-linux-tdep.c): core (with the x87
    registers, which it requires), sse, linux (orig_rax) and segments."""
    flags = "".join(
        f'<field name="{n}" start="{b}" end="{b}"/>'
        for n, b in (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7),
                     ("TF", 8), ("IF", 9), ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16),
                     ("VM", 17), ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21))
    )  # fmt: skip
    vec = (
        '<vector id="v4f" type="ieee_single" count="4"/>'
        '<vector id="v2d" type="ieee_double" count="2"/>'
        '<vector id="v16i8" type="int8" count="16"/>'
        '<vector id="v8i16" type="int16" count="8"/>'
        '<vector id="v4i32" type="int32" count="4"/>'
        '<vector id="v2i64" type="int64" count="2"/>'
        '<union id="vec128"><field name="v4_float" type="v4f"/>'
        '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
        '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
        '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>'
    )

    def regs(names: range) -> str:
        out = []
        for i in names:
            r = REGISTERS[i]
            out.append(f'<reg name="{r.name}" bitsize="{r.size * 8}" regnum="{i}" {r.xml}/>')
        return "".join(out)

    core, sse = _REG_INDEX["xmm0"], _REG_INDEX["orig_rax"]
    linux, segs = _REG_INDEX["orig_rax"], _REG_INDEX["fs_base"]
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
        "<target><architecture>i386:x86-64</architecture><osabi>GNU/Linux</osabi>"
        f'<feature name="org.gnu.gdb.i386.core"><flags id="i386_eflags" size="4">{flags}'
        f"</flags>{regs(range(0, core))}</feature>"
        f'<feature name="org.gnu.gdb.i386.sse">{vec}{regs(range(core, sse))}</feature>'
        f'<feature name="org.gnu.gdb.i386.linux">{regs(range(linux, segs))}</feature>'
        f'<feature name="org.gnu.gdb.i386.segments">{regs(range(segs, len(REGISTERS)))}'
        "</feature></target>"
    ).encode()


def _full_tag(fx: bytes) -> int:
    """The x87 tag word gdb shows, from FXSAVE's abridged one (Intel SDM
    vol. 1, 10.5.1.1): empty (3) where the abridged bit is clear, else
    valid (0), zero (1) or special (2) from the register's contents."""
    abridged, top = fx[4], (struct.unpack_from("<H", fx, 2)[0] >> 11) & 7
    tag = 0
    for phys in range(8):
        if not abridged >> phys & 1:
            kind = 3
        else:
            raw = fx[32 + 16 * ((phys - top) & 7) :][:10]
            mant, exp = struct.unpack_from("<QH", raw)
            exp &= 0x7FFF
            if exp == 0x7FFF:
                kind = 2
            elif exp == 0:
                kind = 1 if mant == 0 else 2
            else:
                kind = 0 if mant >> 63 else 2
        tag |= kind << (2 * phys)
    return tag


def _abridged(tag: int) -> int:
    return sum(1 << i for i in range(8) if (tag >> (2 * i)) & 3 != 3)


# -- debug registers (Intel SDM vol. 3, 17.2) ------------------------------------

#: Z packet types: 1 hardware breakpoint, 2 write, 3 read, 4 access watchpoint.
_RW_BITS = {1: 0b00, 2: 0b01, 3: 0b11, 4: 0b11}
_LEN_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
_DR6_HITS = 0xF
_DR6_STEP = 1 << 14


@dataclass
class _HwPoint:
    kind: int  # 1..4 as in Z1..Z4
    addr: int
    length: int


def _dr7(slots: list[_HwPoint | None]) -> int:
    value = 0
    for i, hw in enumerate(slots):
        if hw is None:
            continue
        value |= 1 << (2 * i)  # local enable
        value |= (_RW_BITS[hw.kind] | _LEN_BITS[hw.length] << 2) << (16 + 4 * i)
    return value


# -- state ------------------------------------------------------------------------


@dataclass
class _Thread:
    tid: Tid
    guest_tid: int
    #: Held in a stop on our behalf (``stop`` says which).
    stopped: bool = False
    stop: DebugStop | None = None
    #: An interrupt asked and not yet seen.
    want_stop: bool = False
    #: In a stop the kernel holds it in (a call it keeps, a group-stop):
    #: stopped for gdb, but never resumed by us.
    parked: bool = False
    stepping: bool = False
    #: A stop reply not yet given to gdb (what follows "T05" etc.).
    pending: str | None = None
    #: The signal of the pending stop (gdb numbering).
    pending_sig: int = 0
    #: A signal gdb asked to deliver where it could not be injected:
    #: its delivery stop passes straight through.
    pass_signal: int = 0
    #: A new thread interrupted only to get the debug registers (the
    #: kernel does not copy them to a clone: copy_thread()).
    needs_debugregs: bool = False


@dataclass
class _State:
    threads: dict[Tid, _Thread] = field(default_factory=dict)
    breakpoints: dict[int, int] = field(default_factory=dict)  # addr -> original byte
    hw: list[_HwPoint | None] = field(default_factory=lambda: [None, None, None, None])
    running: bool = False
    #: The signal an interrupt stop reports (0 at attach, 2 for ^C), or None.
    stop_request: int | None = None
    #: Wait status of the process's end, once it is gone.
    exit_status: int | None = None
    exit_reported: bool = False
    last_reply: str = "T00"
    stepping_tid: Tid | None = None


class Refused(Exception):
    """The process cannot be debugged now (one line, for gdb's E reply)."""


class GdbServer:
    """The gdb remote protocol for one guest process (host pid ``pid``).

    ``call(fn)`` runs ``fn`` on the tracer thread and returns its result
    (None when the machine has ended)."""

    def __init__(
        self,
        kernel: GuestKernel,
        pid: int,
        call: Callable[[Callable[[], Any]], Any],
        *,
        exe: Callable[[], bytes] | None = None,
    ) -> None:
        self.kernel = kernel
        self.pid = pid
        self.guest_pid = kernel.guest_pid(pid) or pid
        self._call = call
        self._exe = exe
        self.st = _State()
        self.attached = False
        #: A detach waits for running threads to stop.
        self._detaching = False
        #: The session is over: nothing more goes to it.
        self._closed = False
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._noack = False
        self._multiprocess = False
        self._gthread: Tid | None = None
        self._cthread: Tid | None = None
        self._xml = target_xml()
        self._files = GuestFiles(pid)

    # -- the Debugger protocol (tracer thread) --------------------------------

    def stopped(self, kernel: GuestKernel, task: Task, stop: DebugStop) -> bool:
        t = self.st.threads.get(task.tid)
        if t is None or not self.attached:
            return False
        if self._detaching:
            if stop.kind is StopKind.SIGNAL and stop.signo == signal.SIGTRAP:
                self._classify(t, stop.signo)  # an int3 of ours: PC back
            elif stop.kind is not StopKind.INTERRUPT and stop.kind is not StopKind.SIGNAL:
                return False
            t.want_stop = False
            t.stopped, t.stop, t.parked = True, stop, False
            self._detach_progress()
            return True
        if stop.kind is StopKind.INTERRUPT:
            if not t.want_stop:
                return False  # asked before a resume: stale
            if t.needs_debugregs:
                t.needs_debugregs = False
                self._set_debugregs(t)
                st = self.st
                if st.running and st.stop_request is None and not self._reportable():
                    t.want_stop = False
                    return False  # on it goes, watched as the others are
        elif stop.kind is not StopKind.SIGNAL:
            return False  # syscall and event stops: we never ask for them
        elif t.pass_signal and stop.signo == t.pass_signal:
            t.pass_signal = 0
            return False
        t.want_stop = False
        t.stopped, t.stop, t.parked = True, stop, False
        if stop.kind is StopKind.SIGNAL:
            self._classify(t, stop.signo)
        t.stepping = False
        self._progress()
        return True

    def cloned(self, kernel: GuestKernel, parent: Task, child: Task, kind: CloneKind) -> None:
        if not self.attached:
            return
        if kind is CloneKind.THREAD and child.tgid == self.pid and child.debugger is None:
            child.debugger = self
            t = _Thread(child.tid, kernel.guest_pid(child.tid) or int(child.tid))
            self.st.threads[child.tid] = t
            if any(self.st.hw):
                t.needs_debugregs = True
            if (
                t.needs_debugregs
                or not self.st.running
                or self.st.stop_request is not None
                or self._reportable()
            ):
                self._interrupt(t)
        elif kind is CloneKind.FORK or kind is CloneKind.PROCESS:
            # A forked child inherits our int3s (not vfork: it shares the
            # memory); gdb would detach it, breakpoints removed.
            for addr, orig in self.st.breakpoints.items():
                try:
                    kernel.tracer.write_memory(child.tid, addr, bytes([orig]), force=True)
                except TracerError:
                    pass

    def execed(self, kernel: GuestKernel, task: Task) -> None:
        # A new program: our int3s went with the old one.
        self.st.breakpoints.clear()
        if task.tid not in self.st.threads and self.attached:
            # A non-leader thread exec'd and took the leader's id.
            for tid in list(self.st.threads):
                if tid not in kernel.tasks or kernel.tasks[tid] is not task:
                    del self.st.threads[tid]
            self.st.threads[task.tid] = _Thread(task.tid, self.guest_pid)

    def exited(self, kernel: GuestKernel, task: Task, status: int) -> None:
        st = self.st
        t = st.threads.pop(task.tid, None)
        if t is None:
            return
        if int(task.tid) == self.pid or st.exit_status is None:
            st.exit_status = status
        if self._detaching:
            self._detach_progress()
        else:
            self._progress()

    def group_stopped(self, kernel: GuestKernel, task: Task, signo: int) -> None:
        t = self.st.threads.get(task.tid)
        if t is not None and not t.stopped:
            t.parked = True
            self._progress()

    def continued(self, kernel: GuestKernel, task: Task) -> None:
        t = self.st.threads.get(task.tid)
        if t is not None:
            t.parked = False

    # -- stops (tracer thread) ------------------------------------------------

    def _regs(self, tid: Tid) -> Regs:
        return self.kernel.tracer.get_regs(tid)

    def _classify(self, t: _Thread, signo: int) -> None:
        """What a signal-delivery-stop tells gdb: T05 with the reason of
        a trap we caused, else the signal (gdb then decides whether the
        program gets it)."""
        tracer = self.kernel.tracer
        gsig = to_gdb_signal(signo)
        reason = ""
        if signo == signal.SIGTRAP:
            try:
                code = tracer.get_siginfo(t.tid).code
            except TracerError:
                code = 0
            if code == SI_KERNEL:
                regs = self._regs(t.tid)
                if regs.rip - 1 in self.st.breakpoints:
                    # x86 reports an int3 past it; the protocol's swbreak
                    # wants the PC back on the breakpoint.
                    tracer.set_regs(t.tid, regs._replace(rip=regs.rip - 1))
                    reason = "swbreak:;"
            else:
                reason = self._hw_reason(t)
        t.pending_sig = gsig
        t.pending = f"T{gsig:02x}{reason}"

    def _hw_reason(self, t: _Thread) -> str:
        tracer = self.kernel.tracer
        try:
            dr6 = tracer.peek_user(t.tid, USER_DEBUGREG + 6 * 8)
        except TracerError:
            return ""
        reason = ""
        for i in range(4):
            hw = self.st.hw[i]
            if dr6 >> i & 1 and hw is not None:
                if hw.kind == 1:
                    reason = "hwbreak:;"
                else:
                    word = {2: "watch", 3: "rwatch", 4: "awatch"}[hw.kind]
                    reason = f"{word}:{hw.addr:x};"
                break
        if dr6 & (_DR6_HITS | _DR6_STEP):
            try:
                tracer.poke_user(t.tid, USER_DEBUGREG + 6 * 8, 0)
            except TracerError:
                pass
        return reason

    def _reportable(self) -> bool:
        return any(t.pending is not None for t in self.st.threads.values())

    def _interrupt(self, t: _Thread) -> None:
        if t.stopped or t.want_stop or t.parked:
            return
        tid = t.tid
        if tid in self.kernel.held or tid in self.kernel.halted:
            t.parked = True
            return
        try:
            self.kernel.tracer.interrupt(tid)
            t.want_stop = True
        except TracerError:
            pass

    def _progress(self) -> None:
        """While gdb waits: once something is to be reported, stop every
        thread; once all are stopped, send the stop reply."""
        st = self.st
        if not st.running or not self.attached:
            return
        if not st.threads:
            if st.exit_status is not None:
                self._report_exit()
            return
        if st.stop_request is None and not self._reportable():
            return
        waiting = False
        for t in st.threads.values():
            if not (t.stopped or t.parked):
                self._interrupt(t)
                waiting = waiting or not (t.stopped or t.parked)
        if waiting:
            return
        # Every thread is stopped: the one to report.
        chosen: _Thread | None = None
        if st.stepping_tid is not None:
            s = st.threads.get(st.stepping_tid)
            if s is not None and s.pending is not None:
                chosen = s
        if chosen is None:
            chosen = next((t for t in st.threads.values() if t.pending is not None), None)
        if chosen is not None:
            reply = chosen.pending or "T05"
            chosen.pending = None
        else:
            chosen = next((t for t in st.threads.values() if t.stopped), None)
            if chosen is None:
                chosen = next(iter(st.threads.values()))
            reply = f"T{st.stop_request or 0:02x}"
        st.stop_request = None
        st.running = False
        self._gthread = chosen.tid
        reply += f"thread:{self._tid_text(chosen)};"
        st.last_reply = reply
        self._send_async(reply)

    def _report_exit(self) -> None:
        st = self.st
        status = st.exit_status or 0
        if os.WIFSIGNALED(status):
            reply = f"X{to_gdb_signal(os.WTERMSIG(status)):02x}"
        else:
            reply = f"W{os.WEXITSTATUS(status):02x}"
        if self._multiprocess:
            reply += f";process:{self.guest_pid:x}"
        st.running = False
        st.exit_reported = True
        st.last_reply = reply
        self._send_async(reply)

    def _send_async(self, reply: str) -> None:
        if self._closed:
            return
        self._replies.put(reply)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _tid_text(self, t: _Thread) -> str:
        if self._multiprocess:
            return f"p{self.guest_pid:x}.{t.guest_tid:x}"
        return f"{t.guest_tid:x}"

    # -- attach, resume, detach (tracer thread) ----------------------------

    def attach(self) -> None:
        """Follow every thread of the process and stop them all.  Raises
        Refused when it is gone or a thread already has a debugger."""
        group = self.kernel.processes.get(self.pid)  # type: ignore[call-overload]
        if group is None or not group.threads or Tid(self.pid) in self.kernel.internal:
            raise Refused(f"no guest process {self.guest_pid}")
        tasks = list(group.threads.values())
        for task in tasks:
            if task.debugger is not None:
                raise Refused(
                    f"process {self.guest_pid} already has a debugger (another gdb, or ptrace)"
                )
        st = self.st = _State()
        self.attached = True
        for task in tasks:
            task.debugger = self
            st.threads[task.tid] = _Thread(task.tid, self.kernel.guest_pid(task.tid) or task.tid)
        st.running = True
        st.stop_request = 0
        self._progress()

    def all_stopped(self) -> bool:
        return not self.st.running

    def resume(self, actions: list[tuple[str, int, int | None]]) -> None:
        """vCont: ``actions`` of (c/s/t, gdb signal, guest tid or None
        for all), the first that names a thread applies to it."""
        st = self.st
        if not st.threads:
            st.running = True
            self._progress()
            return
        plan: dict[Tid, tuple[str, int]] = {}
        for t in st.threads.values():
            for act, sig, which in actions:
                if which is None or which == t.guest_tid:
                    plan[t.tid] = (act, sig)
                    break
        # A stale pending breakpoint stop (gdb removed the breakpoint) is
        # dropped: its PC is already back on the instruction.
        for t in st.threads.values():
            if t.pending and "swbreak" in t.pending and t.tid in plan:
                regs = self._regs(t.tid)
                if regs.rip not in st.breakpoints:
                    t.pending = None
        st.running = True
        if any(t.pending is not None for t in st.threads.values() if t.tid in plan):
            self._progress()
            return
        tracer = self.kernel.tracer
        st.stepping_tid = None
        for t in list(st.threads.values()):
            act, sig = plan.get(t.tid, ("t", 0))
            if act == "t" or t.parked or not t.stopped:
                continue
            step = act == "s"
            if step:
                st.stepping_tid = t.tid
            signo = from_gdb_signal(sig)
            at_signal = t.stop is not None and t.stop.kind is StopKind.SIGNAL
            try:
                tracer.set_resume_mode(t.tid, ResumeMode.SINGLESTEP if step else ResumeMode.CONT)
                if signo and not at_signal:
                    t.pass_signal = signo
                    tracer.kill(t.tid, signo)
                    signo = 0
                t.stopped, t.stop, t.stepping = False, None, step
                tracer.resume(t.tid, signo)
            except TracerError:
                pass
        self._progress()

    def request_interrupt(self) -> None:
        """^C from gdb: stop every thread, report SIGINT."""
        if self.st.running and self.attached:
            self.st.stop_request = 2
            self._progress()

    def detach(self) -> None:
        """Leave the process as it was: no breakpoints, no debug
        registers, every thread resumed (a signal gdb did not take
        delivered) in resume mode CONT.

        Threads that run (gdb went away during a continue) are stopped
        first: a running thread's debug registers cannot be cleared, and
        one may be about to report an int3 of ours, whose SIGTRAP must
        not reach the program once we are gone."""
        if not self.attached or self._detaching:
            return
        running = [t for t in self.st.threads.values() if not (t.stopped or t.parked)]
        if running:
            self._detaching = True
            for t in running:
                self._interrupt(t)
            if any(not (t.stopped or t.parked) for t in running):
                return  # finished by stopped() / exited() once all are stopped
        self._final_detach()

    def _detach_progress(self) -> None:
        if all(t.stopped or t.parked for t in self.st.threads.values()):
            self._final_detach()

    def _final_detach(self) -> None:
        self._detaching = False
        self.attached = False
        st = self.st
        tracer = self.kernel.tracer
        for addr, orig in list(st.breakpoints.items()):
            try:
                tracer.write_memory(Tid(self.pid), addr, bytes([orig]), force=True)
            except TracerError:
                pass
        st.breakpoints.clear()
        had_hw = any(st.hw)
        st.hw = [None, None, None, None]
        for t in list(st.threads.values()):
            task = self.kernel.tasks.get(t.tid)
            if task is not None and task.debugger is self:
                task.debugger = None
            try:
                tracer.set_resume_mode(t.tid, ResumeMode.CONT)
                if had_hw and (t.stopped or t.parked):
                    self._set_debugregs(t)
            except TracerError:
                pass
            if not t.stopped:
                continue
            signo = 0
            stop = t.stop
            if stop is not None and stop.kind is StopKind.SIGNAL and stop.signo != signal.SIGTRAP:
                signo = stop.signo
            try:
                tracer.resume(t.tid, signo)
            except TracerError:
                pass
        st.threads.clear()
        st.running = False

    def kill(self) -> None:
        tracer = self.kernel.tracer
        for tid in list(self.st.threads):
            tracer.kill(tid, signal.SIGKILL)

    # -- breakpoints (tracer thread) --------------------------------------------

    def _mem_tid(self) -> Tid:
        for t in self.st.threads.values():
            if t.stopped or t.parked:
                return t.tid
        return Tid(self.pid)

    def insert(self, kind: int, addr: int, length: int) -> str:
        st = self.st
        tracer = self.kernel.tracer
        if kind == 0:
            if addr in st.breakpoints:
                return "OK"
            tid = self._mem_tid()
            orig = tracer.read_memory(tid, addr, 1)
            if len(orig) != 1:
                return "E0e"
            tracer.write_memory(tid, addr, b"\xcc", force=True)
            st.breakpoints[addr] = orig[0]
            return "OK"
        if kind == 1:
            length = 1
        if length not in _LEN_BITS or addr % length:
            return "E16"  # the debug registers take aligned 1, 2, 4, 8 bytes
        for hw in st.hw:
            if hw is not None and (hw.kind, hw.addr, hw.length) == (kind, addr, length):
                return "OK"
        free = next((i for i, hw in enumerate(st.hw) if hw is None), None)
        if free is None:
            return "E1c"  # ENOSPC
        st.hw[free] = _HwPoint(kind, addr, length)
        if not self._apply_debugregs():
            st.hw[free] = None
            self._apply_debugregs()
            return "E16"
        return "OK"

    def remove(self, kind: int, addr: int, length: int) -> str:
        st = self.st
        if kind == 0:
            orig = st.breakpoints.pop(addr, None)
            if orig is not None:
                self.kernel.tracer.write_memory(self._mem_tid(), addr, bytes([orig]), force=True)
            return "OK"
        if kind == 1:
            length = 1
        for i, hw in enumerate(st.hw):
            if hw is not None and (hw.kind, hw.addr, hw.length) == (kind, addr, length):
                st.hw[i] = None
        self._apply_debugregs()
        return "OK"

    def _set_debugregs(self, t: _Thread) -> bool:
        tracer = self.kernel.tracer
        slots = self.st.hw
        try:
            # DR7 off first: the kernel checks each address against the
            # enabled breakpoints (ptrace_set_debugreg, EINVAL).
            tracer.poke_user(t.tid, USER_DEBUGREG + 7 * 8, 0)
            for i, hw in enumerate(slots):
                tracer.poke_user(t.tid, USER_DEBUGREG + i * 8, hw.addr if hw else 0)
            tracer.poke_user(t.tid, USER_DEBUGREG + 7 * 8, _dr7(slots))
        except TracerError:
            return False
        return True

    def _apply_debugregs(self) -> bool:
        ok = True
        for t in self.st.threads.values():
            if t.stopped or t.parked:
                ok = self._set_debugregs(t) and ok
        return ok

    # -- memory and registers (tracer thread) --------------------------------------

    def read_memory(self, addr: int, size: int) -> bytes:
        data = bytearray(self.kernel.tracer.read_memory(self._g_tid(), addr, size))
        for bp, orig in self.st.breakpoints.items():
            if addr <= bp < addr + len(data):
                data[bp - addr] = orig
        return bytes(data)

    def write_memory(self, addr: int, data: bytes) -> None:
        buf = bytearray(data)
        for bp in self.st.breakpoints:
            if addr <= bp < addr + len(buf):
                self.st.breakpoints[bp] = buf[bp - addr]
                buf[bp - addr] = 0xCC
        self.kernel.tracer.write_memory(self._g_tid(), addr, bytes(buf), force=True)

    def _g_tid(self) -> Tid:
        tid = self._gthread
        if tid is None or tid not in self.st.threads:
            tid = self._mem_tid()
        return tid

    def read_registers(self) -> bytes:
        tid = self._g_tid()
        regs = self.kernel.tracer.get_regs(tid)
        fx = self.kernel.tracer.get_regset(tid, NT_PRFPREG, FXSAVE_SIZE).ljust(FXSAVE_SIZE, b"\0")
        out = bytearray()
        for r in REGISTERS:
            if r.where == "r":
                value = getattr(regs, str(r.key))
                out += (value & ((1 << (8 * r.size)) - 1)).to_bytes(r.size, "little")
            elif r.where == "tag":
                out += _full_tag(fx).to_bytes(4, "little")
            else:
                off = int(r.key)
                width = _FX_WIDTH.get(off, r.size)
                out += fx[off : off + width].ljust(r.size, b"\0")
        return bytes(out)

    def write_registers(self, data: bytes, only: int | None = None) -> None:
        """G (every register) or P (register ``only``; ``data`` its value)."""
        tid = self._g_tid()
        tracer = self.kernel.tracer
        regs = tracer.get_regs(tid)
        fx = bytearray(tracer.get_regset(tid, NT_PRFPREG, FXSAVE_SIZE).ljust(FXSAVE_SIZE, b"\0"))
        changes: dict[str, int] = {}
        pos = 0
        fx_changed = False
        for i, r in enumerate(REGISTERS):
            if only is not None and i != only:
                continue
            chunk = data[pos : pos + r.size]
            pos += r.size
            if len(chunk) < r.size:
                break
            if r.where == "r":
                changes[str(r.key)] = int.from_bytes(chunk, "little")
            elif r.where == "tag":
                fx[4] = _abridged(int.from_bytes(chunk, "little"))
                fx_changed = True
            else:
                off = int(r.key)
                width = _FX_WIDTH.get(off, r.size)
                if fx[off : off + width] != chunk[:width]:
                    fx[off : off + width] = chunk[:width]
                    fx_changed = True
        new = regs._replace(**changes)
        if new != regs:
            tracer.set_regs(tid, new)
        if fx_changed:
            tracer.set_regset(tid, NT_PRFPREG, bytes(fx))

    # -- the session (its own thread) ---------------------------------------------

    def _close(self) -> None:
        self._closed = True

    def call_quietly(self, fn: Callable[[], None]) -> None:
        try:
            self.call(fn)
        except Exception:
            self._closed = True

    def call(self, fn: Callable[[], T]) -> T:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed back to the session
                box["error"] = exc

        self._call(run)
        if "error" in box:
            raise box["error"]
        if "value" not in box:
            raise Refused("the machine has ended")
        return box["value"]  # type: ignore[no-any-return]

    def serve(self, sock: socket.socket, stop_fd: int | None = None) -> None:
        """Serve gdb on ``sock`` until it goes, then leave the process
        running (detach).  Never raises for what gdb or the process do."""
        try:
            self._serve(sock, stop_fd)
        except (OSError, Refused) as exc:
            log.info("gdb session for pid %d ended: %s", self.guest_pid, exc)
        except Exception:
            log.exception("gdb session for pid %d failed", self.guest_pid)
        finally:
            try:
                self.call(self.detach)
            except Exception:
                pass
            self.call_quietly(self._close)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._files.close()

    def _serve(self, sock: socket.socket, stop_fd: int | None) -> None:
        try:
            self.call(self.attach)
        except Refused as exc:
            self._refusal = str(exc)
            log.info("gdb refused for pid %d: %s", self.guest_pid, exc)
            self._send_async(f"E.{exc}")
        # Every thread stops before gdb hears anything (its "?" comes
        # next); one that never does (stuck where no interrupt reaches)
        # is left to the next stop.
        extra = [stop_fd] if stop_fd is not None else []
        ready, _, _ = select.select([self._wake_r, *extra], [], [], ATTACH_TIMEOUT)
        if stop_fd is not None and stop_fd in ready:
            return
        self._drain_replies()
        buf = bytearray()
        watch = [sock.fileno(), self._wake_r, *extra]
        while True:
            ready, _, _ = select.select(watch, [], [])
            if stop_fd is not None and stop_fd in ready:
                return
            if self._wake_r in ready:
                for reply in self._drain_replies():
                    if self._stop_wanted:
                        self._stop_wanted = False
                        self._send(sock, reply)
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while buf:
                    if not self._take(sock, buf):
                        break

    def _drain_replies(self) -> list[str]:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._replies.get_nowait())
            except queue.Empty:
                return out

    #: Whether gdb waits for a stop reply (asynchronous ones go out only then).
    _stop_wanted = False
    #: Why this session cannot debug the process (every packet but the
    #: handshake's is answered with it).
    _refusal = ""

    def _take(self, sock: socket.socket, buf: bytearray) -> bool:
        """Handle the first complete thing in ``buf``; False when more
        bytes are needed."""
        c = buf[0]
        if c in (ord("+"), ord("-")):
            del buf[0]
            return True
        if c == 0x03:
            del buf[0]
            self.call(self.request_interrupt)
            return True
        if c != ord("$"):
            del buf[0]  # line noise between packets
            return True
        end = buf.find(b"#")
        if end < 0 or len(buf) < end + 3:
            if len(buf) > PACKET_SIZE * 2:
                del buf[:]  # never a packet: drop it
            return False
        body, check = bytes(buf[1:end]), bytes(buf[end + 1 : end + 3])
        del buf[: end + 3]
        try:
            good = int(check, 16) == sum(body) & 0xFF
        except ValueError:
            good = False
        if not self._noack:
            sock.sendall(b"+" if good else b"-")
        if not good:
            return True
        reply = self._dispatch(_unescape(body))
        if reply is not None:
            self._send(sock, reply)
        if self._refusal:
            # gdb goes on after error replies to its first questions and
            # waits for ever: it hears why ("Remote failure reply") and
            # the connection ends ("Remote connection closed").
            raise Refused(self._refusal)
        return True

    def _send(self, sock: socket.socket, reply: str | bytes) -> None:
        data = reply.encode("latin-1") if isinstance(reply, str) else reply
        data = _escape_reply(data)
        sock.sendall(b"$" + data + b"#" + f"{sum(data) & 0xFF:02x}".encode())

    # -- packets -----------------------------------------------------------------

    def _dispatch(self, pkt: bytes) -> str | bytes | None:
        """The reply to one packet; None when it gets none now (a resume
        whose stop reply comes later)."""
        try:
            return self._packet(pkt)
        except Refused as exc:
            return "E01" if not str(exc) else f"E.{exc}"
        except TracerError as exc:
            return f"E{(exc.errno or errno.EIO) & 0xFF:02x}"
        except (ValueError, IndexError, KeyError, struct.error):
            return "E16"  # EINVAL: malformed

    def _packet(self, pkt: bytes) -> str | bytes | None:
        text = pkt.decode("latin-1")
        if not text:
            return ""
        head = text[0]
        if self._refusal:
            return f"E.{self._refusal}"
        if text.startswith("qSupported"):
            self._multiprocess = "multiprocess+" in text
            return (
                f"PacketSize={PACKET_SIZE:x};QStartNoAckMode+;qXfer:features:read+;"
                "qXfer:exec-file:read+;qXfer:auxv:read+;swbreak+;hwbreak+;vContSupported+"
                + (";multiprocess+" if self._multiprocess else "")
            )
        if text == "QStartNoAckMode":
            self._noack = True
            return "OK"
        if text == "?":
            if self.st.exit_reported or not self.st.threads:
                return self.st.last_reply
            return self._status_reply()
        if text == "!":
            return "OK"
        if text.startswith("qXfer:"):
            return self._xfer(text)
        if head == "H":
            tid = self._parse_tid(text[2:])
            target = self.call(lambda: self._find(tid))
            if text[1] == "g":
                self._gthread = target
            else:
                self._cthread = target
            return "OK"
        if head == "T":
            tid = self._parse_tid(text[1:])
            alive = self.call(lambda: self._find(tid) is not None)
            return "OK" if alive else "E01"
        if text == "qC":
            return "QC" + self.call(self._current_text)
        if text == "qfThreadInfo":
            return "m" + ",".join(self.call(self._thread_list))
        if text == "qsThreadInfo":
            return "l"
        if text.startswith("qAttached"):
            return "1"  # gdb detaches at quit, never kills
        if text == "qOffsets" or text.startswith("qTStatus"):
            return ""
        if text.startswith("qSymbol"):
            return "OK"
        if head == "g":
            return self.call(self.read_registers).hex()
        if head == "G":
            data = bytes.fromhex(text[1:])
            self.call(lambda: self.write_registers(data))
            return "OK"
        if head == "p":
            n = int(text[1:], 16)
            if n >= len(REGISTERS):
                return "E16"
            regs = self.call(self.read_registers)
            off = sum(r.size for r in REGISTERS[:n])
            return regs[off : off + REGISTERS[n].size].hex()
        if head == "P":
            n_text, value = text[1:].split("=", 1)
            n = int(n_text, 16)
            if n >= len(REGISTERS):
                return "E16"
            data = bytes.fromhex(value)
            self.call(lambda: self.write_registers(data, only=n))
            return "OK"
        if head == "m":
            addr, size = (int(x, 16) for x in text[1:].split(","))
            size = min(size, PACKET_SIZE // 2 - 16)
            try:
                data = self.call(lambda: self.read_memory(addr, size))
            except TracerError:
                return "E0e"
            return data.hex() if data else "E0e"
        if head == "M":
            where, hexdata = text[1:].split(":", 1)
            addr = int(where.split(",")[0], 16)
            payload = bytes.fromhex(hexdata)
            self.call(lambda: self.write_memory(addr, payload))
            return "OK"
        if head == "X":
            colon = pkt.index(b":")
            addr = int(pkt[1:colon].split(b",")[0], 16)
            raw = pkt[colon + 1 :]
            if raw:
                self.call(lambda: self.write_memory(addr, raw))
            return "OK"
        if head in "zZ" and len(text) > 1 and text[1] in "01234":
            kind = int(text[1])
            addr_t, len_t = text[3:].split(";")[0].split(",")[:2]
            addr, length = int(addr_t, 16), int(len_t, 16)
            fn = self.insert if head == "Z" else self.remove
            return self.call(lambda: fn(kind, addr, length))
        if text == "vCont?":
            return "vCont;c;C;s;S;t"
        if text.startswith("vCont;"):
            return self._resume(self._parse_vcont(text[6:]))
        if head in "cs" and (len(text) == 1 or text[1] not in "CS"):
            if len(text) > 1:
                raise ValueError("resume at an address is not supported")
            return self._resume([(head, 0, self._cthread_guest())])
        if head in "CS":
            sig = int(text[1:].split(";")[0], 16)
            return self._resume([(head.lower(), sig, self._cthread_guest())])
        if head == "D":
            self.call(self.detach)
            return "OK"
        if head == "k" or text.startswith("vKill"):
            self.call(self.kill)
            return "OK" if text.startswith("vKill") else None
        if text.startswith("vAttach;"):
            pid = int(text[8:], 16)
            if pid != self.guest_pid:
                return "E01"
            if not self.attached:
                self.call(self.attach)
                self._stop_wanted = True
                return None
            return self._status_reply()
        if text.startswith("vMustReplyEmpty"):
            return ""
        if text.startswith("vFile:"):
            return self._files.packet(text[6:], pkt[6:])
        return ""  # unsupported: gdb falls back

    def _status_reply(self) -> str:
        reply = self.st.last_reply
        if not reply.startswith("T"):
            return reply
        return reply

    def _resume(self, actions: list[tuple[str, int, int | None]]) -> str | None:
        self._stop_wanted = True
        self.call(lambda: self.resume(actions))
        return None

    def _parse_vcont(self, text: str) -> list[tuple[str, int, int | None]]:
        out: list[tuple[str, int, int | None]] = []
        for part in text.split(";"):
            action, _, which = part.partition(":")
            verb = action[0]
            if verb not in "cCsSt":
                raise ValueError(f"vCont action {action!r}")
            sig = int(action[1:], 16) if verb in "CS" else 0
            tid = self._parse_tid(which) if which else None
            out.append((verb.lower(), sig, tid))
        return out

    def _parse_tid(self, text: str) -> int | None:
        """A thread-id (gdb's "thread-id" syntax, p PID.TID or TID, hex;
        -1 all, 0 any) as a guest tid, None for all or any."""
        if text.startswith("p"):
            pid_t, _, tid_t = text[1:].partition(".")
            if pid_t not in ("-1", "0") and int(pid_t, 16) != self.guest_pid:
                raise Refused("")
            text = tid_t or "-1"
        if text in ("-1", "0", ""):
            return None
        return int(text, 16)

    def _find(self, guest_tid: int | None) -> Tid | None:
        for t in self.st.threads.values():
            if guest_tid is None or t.guest_tid == guest_tid:
                return t.tid
        return None

    def _cthread_guest(self) -> int | None:
        return None

    def _current_text(self) -> str:
        t = self.st.threads.get(self._g_tid())
        if t is None:
            return f"p{self.guest_pid:x}.{self.guest_pid:x}" if self._multiprocess else "0"
        return self._tid_text(t)

    def _thread_list(self) -> list[str]:
        return [self._tid_text(t) for t in self.st.threads.values()]

    def _xfer(self, text: str) -> str | bytes:
        # qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH
        parts = text.split(":")
        if len(parts) != 5 or parts[2] != "read":
            return ""
        obj, annex, span = parts[1], parts[3], parts[4]
        off, length = (int(x, 16) for x in span.split(","))
        if obj == "features" and annex == "target.xml":
            data = self._xml
        elif obj == "exec-file":
            data = self._exe() if self._exe is not None else b""
            data = data.rstrip(b"\n")
            if not data:
                return "E02"
        elif obj == "auxv":
            try:
                with open(f"/proc/{self.pid}/auxv", "rb") as f:
                    data = f.read()
            except OSError:
                return "E02"
        else:
            return ""
        chunk = data[off : off + min(length, PACKET_SIZE // 2)]
        return (b"l" if off + len(chunk) >= len(data) else b"m") + chunk


# -- the process's files (vFile packets) ---------------------------------------------

#: openat2(2) (x86_64 number; linux/openat2.h): struct open_how and the
#: resolve flags that keep a path inside the guest's root.
_NR_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
#: gdb's File-I/O errno values (gdb's manual, "Errno Values"); the rest
#: is EUNKNOWN.
_FILEIO_ERRNO = {1, 2, 4, 9, 13, 14, 16, 17, 19, 20, 21, 22, 23, 24, 27, 28, 29, 30}
_MAX_FILES = 64


def _openat2(dirfd: int, path: bytes, flags: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    how = struct.pack("=QQQ", flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(_NR_OPENAT2, dirfd, path, how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


class GuestFiles:
    """gdb's host I/O packets (vFile:open, pread, fstat, readlink, close;
    gdb's manual, "Host I/O Packets"), read-only, on the files the
    process sees: every path is resolved in its root (openat2(2) with
    RESOLVE_IN_ROOT), never on the host's tree.  Without them gdb would
    read the program, its libraries and /proc/PID files from the host's
    own filesystem (remote_target::filesystem_is_local)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fds: dict[int, int] = {}
        self._next = 1

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _resolve(self, path: bytes, flags: int) -> int:
        root = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _openat2(root, path, flags)
        finally:
            os.close(root)

    def packet(self, text: str, raw: bytes) -> str | bytes:
        verb, _, args = text.partition(":")
        try:
            if verb == "setfs":
                return "F0"  # always the process's own root
            if verb == "open":
                name_hex, flags_t, _mode = args.split(",")
                if int(flags_t, 16) & 3 != 0:
                    return "F-1,d"  # read-only: EACCES
                if len(self._fds) >= _MAX_FILES:
                    return "F-1,18"  # EMFILE
                fd = self._resolve(bytes.fromhex(name_hex), os.O_RDONLY)
                handle = self._next
                self._next += 1
                self._fds[handle] = fd
                return f"F{handle:x}"
            if verb == "close":
                closing = self._fds.pop(int(args, 16), -1)
                if closing < 0:
                    return "F-1,9"
                os.close(closing)
                return "F0"
            if verb == "pread":
                h, count, offset = (int(x, 16) for x in args.split(","))
                got = self._fds.get(h)
                if got is None:
                    return "F-1,9"
                data = os.pread(got, min(count, PACKET_SIZE // 2), offset)
                return f"F{len(data):x};".encode() + data
            if verb == "fstat":
                got = self._fds.get(int(args, 16))
                if got is None:
                    return "F-1,9"
                st = os.fstat(got)
                m32 = 0xFFFFFFFF
                packed = struct.pack(
                    ">IIIIIIIQQQIII",
                    st.st_dev & m32, st.st_ino & m32, st.st_mode, st.st_nlink & m32,
                    st.st_uid, st.st_gid, st.st_rdev & m32, st.st_size, st.st_blksize,
                    st.st_blocks, int(st.st_atime) & m32, int(st.st_mtime) & m32,
                    int(st.st_ctime) & m32,
                )  # fmt: skip
                return f"F{len(packed):x};".encode() + packed
            if verb == "readlink":
                fd = self._resolve(bytes.fromhex(args), os.O_PATH | os.O_NOFOLLOW)
                try:
                    # An O_PATH|O_NOFOLLOW descriptor of a symlink is the
                    # link itself: readlinkat(fd, "") reads it (readlink(2)).
                    target_b = _readlink_empty(fd)
                finally:
                    os.close(fd)
                return f"F{len(target_b):x};".encode() + target_b
        except OSError as exc:
            err = exc.errno or 0
            code = err if err in _FILEIO_ERRNO else (91 if err == errno.ENAMETOOLONG else 9999)
            return f"F-1,{code:x}"
        except ValueError:
            return "F-1,16"  # EINVAL
        return ""


def _readlink_empty(fd: int) -> bytes:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(4096)
    n = libc.readlinkat(fd, b"", buf, len(buf))
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:n]


def _unescape(body: bytes) -> bytes:
    """A packet's binary data: '}' escapes the next byte (xor 0x20)."""
    if b"}" not in body:
        return body
    out = bytearray()
    it = iter(body)
    for b in it:
        if b == 0x7D:
            out.append(next(it, 0x20) ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def _escape_reply(data: bytes) -> bytes:
    if not any(b in data for b in (b"#", b"$", b"}", b"*")):
        return data
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)
