"""Privileged instructions of a guest thread, emulated at their fault.

A user-mode thread (CPL 3) that executes ``in``/``out``, ``ins``/``outs``
without the right in its I/O permission bitmap, or ``cli``, ``sti``,
``hlt``, takes a general-protection fault, which Linux turns into SIGSEGV
with ``si_code`` SI_KERNEL and ``si_addr`` 0 (arch/x86/kernel/traps.c,
do_general_protection).  The guest's ioperm(2) and iopl(2) never reach the
host (sys_io.py): the host never grants a guest a port, so every such
instruction faults.  At that signal-delivery-stop the guest kernel
(:func:`on_fault`, from ``GuestKernel._on_signal``) reads the siginfo and
the registers, decodes the instruction at ``rip`` (:func:`decode`), and
when the guest's *virtual* permission allows it, does it against the
machine's :class:`~umld.core.iobus.IoBus`, writes the results back (``al``,
``ax`` or ``eax`` as the CPU does, memory for ``ins``, ``rsi``/``rdi``/
``rcx`` for the string forms), moves ``rip`` past it and resumes the thread
without the signal.  Anything else (a real segfault, an instruction the
guest has no virtual right to) is delivered unchanged.

The rights (per thread, as the kernel keeps them since Linux 5.5:
arch/x86/kernel/ioport.c; inherited by every clone, kept across execve):

* the ports ioperm(2) turned on, a bitmap of 0..0xffff; an access of N
  bytes needs all N ports' bits, as the TSS bitmap check does (SDM vol. 1,
  18.5.2 "I/O Permission Bit Map");
* the I/O privilege level of iopl(2): 3 grants every port.  Levels 1 and
  2 grant nothing (CPL 3 is above them), as on Linux >= 5.5.
* ``cli``, ``sti`` and ``hlt`` need level 3.  Natively: without iopl(3)
  they fault (SIGSEGV); on a host kernel with CONFIG_X86_IOPL_IOPERM and
  iopl(3), current Linux skips ``cli``/``sti`` as no-ops
  (fixup_iopl_exception) and ``hlt`` still faults (it needs CPL 0).  This
  host's kernel (6.18, CONFIG_X86_IOPL_IOPERM not set) answers ioperm(2)
  and iopl(2) with ENOSYS, so natively nothing but the fault is seen.  In
  umld, level 3 gives what the issue asks for instead: a per-thread
  virtual interrupt flag (below) and a ``hlt`` that sleeps.

The virtual interrupt flag (:class:`ThreadIo` ``vif``): ``cli`` clears it,
``sti`` sets it.  While it is clear, asynchronous signals for the thread
are held as blocked ones are, because they are blocked: ``cli`` adds to
the thread's real signal mask (PTRACE_SETSIGMASK) every holdable signal
it did not block already (``ThreadIo.masked``), and ``sti`` takes exactly
those out again.  Held signals thus stay pending in the host kernel with
their own siginfo (a standard signal sent twice is pending once, real-time
ones queue), sigpending(2) shows them, and at ``sti`` the kernel delivers
them in its own order as the thread goes on.  Never held: SIGKILL and
SIGSTOP (cannot be blocked), the signals an instruction raises (SIGSEGV,
SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS: a blocked fault signal makes the
kernel reset the handler and kill, force_sig_info(9)), and glibc's own
signals 32 and 33 (glibc never lets a program block them; holding
SIGSETXID would hang every other thread's setuid(2)).

What that leaves different from a real CPU's IF, each a documented
decision:

* the mask the guest reads back (rt_sigprocmask(2)'s old set, SigBlk)
  includes the held signals while IF is clear;
* a signal the guest itself unblocks while IF is clear, and an
  asynchronous fault signal (sent with kill(2), si_code <= 0), reach the
  delivery stop; they are held there instead (:func:`hold_signal`) and
  resent at ``sti``: the first with its own siginfo (PTRACE_SETSIGINFO),
  any more with tgkill(2), arriving as SI_TKILL from umld;
* a signal in ``masked`` that the guest blocks itself while IF is clear is
  unblocked again at ``sti`` (its rt_sigprocmask is not trapped: a stop for
  every call of every program would cost far more than this case);
* execve starts the new program with IF set (start_thread sets it), and
  the mask is mended at the first stop the new program makes
  (:func:`release_held`, an interrupt): its first instructions may run
  before the held signals arrive, where natively a pending signal is taken
  before the first instruction.

``pushf`` cannot be trapped (it is not privileged at CPL 3 and never
faults), so it shows the host's IF (always set), not the virtual one.

``hlt`` leaves the thread stopped, ``rip`` past it, until a signal is
pending for it and not blocked (SigPnd/ShdPnd and SigBlk of
/proc/TID/status, polled every HLT_POLL seconds by the machine's loop:
nothing else tells a tracer that a signal was queued to a thread in a
ptrace stop).

A ``rep`` string instruction does at most MAX_ELEMENTS elements per fault
and leaves ``rip`` on the instruction with ``rcx`` counted down, as an
interrupted ``rep`` does (SDM vol. 2, REP): the next execution faults
again and goes on, so one huge count never holds the tracer thread.
"""

from __future__ import annotations

import enum
import errno
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, final

from umld.core import procfs
from umld.core.iobus import IoBus
from umld.tracer.platform import Regs, SigInfo, TracerError

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.task import Task

#: si_code of a signal the kernel raised for a #GP (asm-generic/siginfo.h).
SI_KERNEL = 0x80
#: si_code of SIGSEGV for an unmapped address.
SEGV_MAPERR = 1
#: Elements of a ``rep`` string instruction done per fault (see above).
MAX_ELEMENTS = 4096
#: Seconds between checks of a halted thread's pending signals.
HLT_POLL = 0.005
#: The direction flag in rflags.
DF = 1 << 10
#: Code segment selector of a 64-bit thread (__USER_CS); a 32-bit one
#: runs on __USER32_CS (0x23), where addresses and counts are 32-bit.
USER_CS_64 = 0x33
#: The longest x86 instruction.
MAX_LENGTH = 15
#: Signals raised by the instruction itself: never held by a clear IF.
_FAULTS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP, signal.SIGSYS}
)
#: glibc's SIGCANCEL and SIGSETXID (nptl/pthreadP.h): never held.
_GLIBC_INTERNAL = frozenset({32, 33})
#: Never held by a clear IF, whatever raised them.
_NEVER_HELD = frozenset({signal.SIGKILL, signal.SIGSTOP}) | _GLIBC_INTERNAL
#: Signals below this are standard ones: held twice, delivered once.
_SIGRTMIN = 34
#: The signals ``cli`` blocks (bit s-1 for signal s): all 64 but the
#: faults and the never-held ones.
HOLDABLE = sum(1 << (s - 1) for s in range(1, 65) if s not in _FAULTS | _NEVER_HELD)


class Op(enum.Enum):
    IN = "in"
    OUT = "out"
    INS = "ins"
    OUTS = "outs"
    CLI = "cli"
    STI = "sti"
    HLT = "hlt"
    CPUID = "cpuid"


class Insn(NamedTuple):
    """One decoded instruction.

    ``size`` is the operand width in bytes (1, 2, 4; 0 for cli/sti/hlt),
    ``port`` the immediate port or None for ``dx``, ``addr_size`` the
    address width of the string forms (2, 4, 8 bytes), ``segment`` a
    segment-override prefix byte (0x64 fs, 0x65 gs: they add a base to
    ``outs``'s source)."""

    op: Op
    length: int
    size: int = 0
    port: int | None = None
    rep: bool = False
    addr_size: int = 8
    segment: int = 0


_SEGMENTS = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65})
#: opcode -> (op, byte-sized, immediate port)
_OPCODES = {
    0xE4: (Op.IN, True, True),
    0xE5: (Op.IN, False, True),
    0xE6: (Op.OUT, True, True),
    0xE7: (Op.OUT, False, True),
    0xEC: (Op.IN, True, False),
    0xED: (Op.IN, False, False),
    0xEE: (Op.OUT, True, False),
    0xEF: (Op.OUT, False, False),
    0x6C: (Op.INS, True, False),
    0x6D: (Op.INS, False, False),
    0x6E: (Op.OUTS, True, False),
    0x6F: (Op.OUTS, False, False),
}
_SIMPLE = {0xFA: Op.CLI, 0xFB: Op.STI, 0xF4: Op.HLT}


def decode(code: bytes, *, long_mode: bool = True) -> Insn | None:
    """The port I/O, cli, sti or hlt instruction at the start of ``code``,
    or None for anything else (or a truncated one).

    Prefixes (SDM vol. 2, 2.1.1), in any order: 0x66 operand size (16-bit
    instead of 32), 0x67 address size (32-bit instead of 64; 16 instead of
    32 in a 32-bit thread), F3 ``rep`` (F2 too: on these instructions the
    CPU repeats for either), segment overrides; in 64-bit mode a REX
    prefix (0x40-0x4f) right before the opcode, which changes nothing
    here (port I/O has no 64-bit form).  LOCK (F0) makes them #UD, not
    #GP: not ours."""
    opsize = addr = rep = False
    segment = 0
    i = 0
    while i < len(code) and i < MAX_LENGTH:
        b = code[i]
        if b == 0x66:
            opsize = True
        elif b == 0x67:
            addr = True
        elif b in (0xF3, 0xF2):
            rep = True
        elif b in _SEGMENTS:
            segment = b
        elif long_mode and 0x40 <= b <= 0x4F:
            if i + 1 < len(code) and (
                code[i + 1] in _OPCODES or code[i + 1] in _SIMPLE or code[i + 1] == 0x0F
            ):
                i += 1
                break
            return None  # REX not right before the opcode: another instruction
        else:
            break
        i += 1
    if i >= len(code) or i >= MAX_LENGTH:
        return None
    opcode = code[i]
    if opcode == 0x0F:
        # CPUID (0F A2): the only two-byte opcode that faults here (CPUID
        # faulting, below); prefixes change nothing in it.
        if i + 1 < len(code) and code[i + 1] == 0xA2 and i + 2 <= MAX_LENGTH:
            return Insn(Op.CPUID, i + 2)
        return None
    simple = _SIMPLE.get(opcode)
    if simple is not None:
        return Insn(simple, i + 1)
    entry = _OPCODES.get(opcode)
    if entry is None:
        return None
    op, byte, imm = entry
    size = 1 if byte else 2 if opsize else 4
    length = i + 2 if imm else i + 1
    if length > len(code) or length > MAX_LENGTH:
        return None
    port = code[i + 1] if imm else None
    if long_mode:
        addr_size = 4 if addr else 8
    else:
        addr_size = 2 if addr else 4
    string = op in (Op.INS, Op.OUTS)
    return Insn(op, length, size, port, rep and string, addr_size, segment if string else 0)


# -- the thread's virtual rights -------------------------------------------------


@final
class ThreadIo:
    """A thread's I/O rights and virtual interrupt flag (``Task.io``;
    None there means none of them: no ports, level 0, IF set)."""

    __slots__ = ("held", "iopl", "masked", "ports", "unmask_due", "vif")

    def __init__(self, ports: int = 0, iopl: int = 0, vif: bool = True, masked: int = 0) -> None:
        #: Bit p set: port p granted by ioperm(2).
        self.ports = ports
        self.iopl = iopl
        self.vif = vif
        #: The signals ``cli`` added to the real mask (bit s-1), for ``sti``.
        self.masked = masked
        #: Signals that reached their delivery stop while ``vif`` was
        #: clear (see the module's notes), in arrival order.
        self.held: list[SigInfo] = []
        #: An execve set IF: ``masked`` comes out of the real mask at the
        #: thread's next stop (an interrupt was asked).
        self.unmask_due = False

    def copy(self) -> ThreadIo:
        """What a clone inherits: rights, IF and the mask (the kernel
        copies the creator's real mask); signals held at their delivery
        stop stay with the thread."""
        return ThreadIo(self.ports, self.iopl, self.vif, self.masked)

    def may_access(self, port: int, size: int) -> bool:
        if self.iopl == 3:
            return True
        mask = (1 << size) - 1
        return (self.ports >> port) & mask == mask


def thread_io(task: Task) -> ThreadIo:
    io = task.io
    if io is None:
        io = task.io = ThreadIo()
    return io


# -- emulation ---------------------------------------------------------------------


#: si_code of SIGSEGV for a mapped page the access may not make.
SEGV_ACCERR = 2


class MemoryFault(Exception):
    """A string instruction's memory operand is not accessible at ``addr``;
    ``code`` is the SIGSEGV si_code the CPU's page fault would give."""

    def __init__(self, addr: int, code: int = SEGV_MAPERR) -> None:
        super().__init__(f"guest memory at {addr:#x}")
        self.addr = addr
        self.code = code


def access_fault(pid: int, addr: int, size: int, *, write: bool) -> MemoryFault | None:
    """Where an access of ``size`` bytes at ``addr`` by process ``pid`` would
    page-fault, from its mappings (/proc/PID/maps, proc(5)): None when every
    byte is in a mapping that allows it.  Checked before the tracer touches
    guest memory: the fault's address and si_code (SEGV_MAPERR or
    SEGV_ACCERR) are what the guest's SIGSEGV carries, which a failed
    write_memory (EFAULT) does not tell."""
    need = "w" if write else "r"
    at, end = addr, addr + size
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                span, perms = line.split(None, 2)[:2]
                lo_text, hi_text = span.split(b"-")
                lo, hi = int(lo_text, 16), int(hi_text, 16)
                if hi <= at:
                    continue
                if lo > at:
                    break  # a hole at ``at``
                if need.encode() not in perms:
                    return MemoryFault(at, SEGV_ACCERR)
                at = hi
                if at >= end:
                    return None
    except (OSError, ValueError):
        return MemoryFault(at)
    return MemoryFault(at)


_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: (1 << 64) - 1}


def _with_part(old: int, new: int, size: int) -> int:
    """``old`` with its low ``size`` bytes set to ``new`` as the CPU
    writes a register of that width: 8 and 16 bits keep the rest, 32 bits
    zero the upper half (SDM vol. 1, 3.4.1.1), 64 bits replace it."""
    if size >= 4:
        return new & _ONES[size]
    mask = _ONES[size]
    return (old & ~mask & _ONES[8]) | (new & mask)


def emulate(
    insn: Insn,
    regs: Regs,
    bus: IoBus,
    read: Callable[[int, int], bytes],
    write: Callable[[int, bytes], None],
) -> Regs:
    """Do ``insn`` (IN, OUT, INS or OUTS) and return the registers after it.

    ``read(addr, n)`` and ``write(addr, data)`` reach guest memory and raise
    MemoryFault.  A port read from an unmapped source for ``outs`` faults
    before any port is written; ``ins`` reads the ports, then writes
    memory (a fault there loses what was read, as on the CPU)."""
    size = insn.size
    port = insn.port if insn.port is not None else regs.rdx & 0xFFFF
    if insn.op is Op.IN:
        value = bus.read(port, size)
        return regs._replace(rax=_with_part(regs.rax, value, size), rip=regs.rip + insn.length)
    if insn.op is Op.OUT:
        bus.write(port, size, regs.rax & _ONES[size])
        return regs._replace(rip=regs.rip + insn.length)
    asize = insn.addr_size
    amask = _ONES[asize]
    count = regs.rcx & amask if insn.rep else 1
    n = min(count, MAX_ELEMENTS)
    step = -size if regs.rflags & DF else size
    if insn.op is Op.OUTS:
        src = regs.rsi & amask
        base = 0
        if insn.segment == 0x64:
            base = regs.fs_base
        elif insn.segment == 0x65:
            base = regs.gs_base
        if n:
            data = _block(read, base, src, n, size, step, amask)
            for k in range(n):
                bus.write(port, size, int.from_bytes(data[k * size : (k + 1) * size], "little"))
        regs = regs._replace(rsi=_with_part(regs.rsi, src + n * step, asize))
    else:
        dst = regs.rdi & amask
        if n:
            values = [bus.read(port, size) for _ in range(n)]
            if step < 0:
                values.reverse()
            start = (dst + (n - 1) * step) & amask if step < 0 else dst
            write(start, b"".join(v.to_bytes(size, "little") for v in values))
        regs = regs._replace(rdi=_with_part(regs.rdi, dst + n * step, asize))
    if insn.rep:
        left = count - n
        regs = regs._replace(rcx=_with_part(regs.rcx, left, asize))
        if left:
            return regs  # interrupted rep: runs again from here
    return regs._replace(rip=regs.rip + insn.length)


def _block(
    read: Callable[[int, int], bytes], base: int, src: int, n: int, size: int, step: int, amask: int
) -> bytes:
    """The ``n`` elements ``outs`` sends, in the order it sends them."""
    if step > 0:
        return read((base + src) & _ONES[8], n * size)
    low = (src + (n - 1) * step) & amask
    data = read((base + low) & _ONES[8], n * size)
    parts = [data[k * size : (k + 1) * size] for k in range(n)]
    return b"".join(reversed(parts))


# -- the fault path ------------------------------------------------------------------


def on_fault(kernel: GuestKernel, task: Task) -> bool:
    """At a SIGSEGV stop: emulate the instruction when it is ours and the
    thread may run it; True when it was (the thread is resumed or halted),
    False to deliver the signal."""
    tracer = kernel.tracer
    tid = task.tid
    try:
        info = tracer.get_siginfo(tid)
        if info.code != SI_KERNEL:
            return False
        regs = tracer.get_regs(tid)
        code = tracer.read_memory(tid, regs.rip, MAX_LENGTH)
    except TracerError:
        return False
    insn = decode(code, long_mode=regs.cs == USER_CS_64)
    if insn is None:
        return False
    if insn.op is Op.CPUID:
        return _cpuid_fault(kernel, task, regs, insn)
    io = task.io
    if insn.op in (Op.CLI, Op.STI, Op.HLT):
        if io is None or io.iopl != 3:
            return False
        return _flag_or_halt(kernel, task, io, insn, regs)
    port = insn.port if insn.port is not None else regs.rdx & 0xFFFF
    if io is None or not io.may_access(port, insn.size):
        return False

    def read(addr: int, size: int) -> bytes:
        fault = access_fault(task.tgid, addr, size, write=False)
        if fault is not None:
            raise fault
        try:
            data = tracer.read_memory(tid, addr, size)
        except TracerError:
            data = b""
        if len(data) != size:
            raise MemoryFault(addr + len(data))
        return data

    def write(addr: int, data: bytes) -> None:
        fault = access_fault(task.tgid, addr, len(data), write=True)
        if fault is not None:
            raise fault
        try:
            tracer.write_memory(tid, addr, data)
        except TracerError:
            raise MemoryFault(addr) from None

    kernel.io_pid = task.tgid
    try:
        after = emulate(insn, regs, kernel.iobus, read, write)
    except MemoryFault as fault:
        # The page fault the CPU would have raised: SIGSEGV, SEGV_MAPERR
        # or SEGV_ACCERR, at the address (what a native run would show).
        raw = bytearray(info.raw)
        raw[8:12] = fault.code.to_bytes(4, "little")
        raw[16:24] = fault.addr.to_bytes(8, "little")
        tracer.set_siginfo(tid, bytes(raw))
        return False
    finally:
        kernel.io_pid = 0
    kernel.counters["port_io"] += 1
    tracer.set_regs(tid, after)
    tracer.resume(tid, 0)
    return True


def _flag_or_halt(kernel: GuestKernel, task: Task, io: ThreadIo, insn: Insn, regs: Regs) -> bool:
    tracer = kernel.tracer
    tid = task.tid
    on_interrupted(kernel, task)  # an execve's mending, if still due
    tracer.set_regs(tid, regs._replace(rip=regs.rip + insn.length))
    if insn.op is Op.CLI:
        if io.vif:
            mask = tracer.get_sigmask(tid)
            io.masked = HOLDABLE & ~mask
            tracer.set_sigmask(tid, mask | io.masked)
            io.vif = False
        tracer.resume(tid, 0)
    elif insn.op is Op.STI:
        _set_if(kernel, task, io)
        _deliver_held(kernel, task, io)
    elif signal_pending(task):
        tracer.resume(tid, 0)
    else:
        kernel.halted[tid] = task
    return True


def _set_if(kernel: GuestKernel, task: Task, io: ThreadIo) -> None:
    """IF on, at a stop: what ``cli`` blocked is unblocked; the kernel
    delivers what is pending of it as the thread goes on."""
    io.vif = True
    io.unmask_due = False
    if io.masked:
        tracer = kernel.tracer
        tracer.set_sigmask(task.tid, tracer.get_sigmask(task.tid) & ~io.masked)
        io.masked = 0


def _deliver_held(kernel: GuestKernel, task: Task, io: ThreadIo) -> None:
    """At ``sti`` (a SIGSEGV stop): the signals held at their delivery
    stop go on."""
    tracer = kernel.tracer
    held, io.held = io.held, []
    if not held:
        tracer.resume(task.tid, 0)
        return
    first, rest = held[0], held[1:]
    tracer.set_siginfo(task.tid, first.raw)
    for info in rest:
        tracer.kill(task.tid, info.signo)
    tracer.resume(task.tid, first.signo)


def release_held(kernel: GuestKernel, task: Task) -> None:
    """The thread execve'd with IF clear: the new program starts with IF
    set (start_thread).  Both backends have resumed it when its Execed is
    handled, so the mask is mended at a stop asked for now
    (:func:`on_interrupted`)."""
    io = task.io
    if io is None:
        return
    io.vif = True
    if io.masked or io.held:
        io.unmask_due = True
        kernel.tracer.interrupt(task.tid)


def on_interrupted(kernel: GuestKernel, task: Task) -> None:
    """At the stop :func:`release_held` asked for (the thread is resumed by
    the caller): ``masked`` leaves the mask; signals held at their
    delivery stop are sent again (tgkill(2): an event stop cannot inject
    one)."""
    io = task.io
    if io is None or not io.unmask_due:
        return
    _set_if(kernel, task, io)
    held, io.held = io.held, []
    for info in held:
        kernel.tracer.kill(task.tid, info.signo)


def hold_signal(kernel: GuestKernel, task: Task, signo: int) -> bool:
    """At a signal-delivery-stop of a thread whose virtual IF is clear:
    hold an asynchronous signal that was not blocked (True: the thread
    was resumed without it)."""
    io = task.io
    if io is None or io.vif or signo in _NEVER_HELD:
        return False
    try:
        info = kernel.tracer.get_siginfo(task.tid)
    except TracerError:
        return False
    if signo in _FAULTS and info.code > 0:
        return False  # raised by an instruction: not an interrupt
    if signo >= _SIGRTMIN or all(h.signo != signo for h in io.held):
        io.held.append(info)
    kernel.tracer.resume(task.tid, 0)
    return True


def signal_pending(task: Task) -> bool:
    """Whether a signal is pending for the thread and not blocked
    (SigPnd, ShdPnd, SigBlk in /proc/TID/status, proc(5))."""
    fields = procfs.status(f"{task.tgid}/task/{task.tid}", ("SigPnd", "ShdPnd", "SigBlk"))
    if not fields:
        return True  # gone: let its exit be seen
    try:
        pending = int(fields.get("SigPnd", "0"), 16) | int(fields.get("ShdPnd", "0"), 16)
        blocked = int(fields.get("SigBlk", "0"), 16)
    except ValueError:
        return True
    return bool(pending & ~blocked)


def wake_halted(kernel: GuestKernel) -> None:
    """Resume the halted threads that have a signal to take, and every
    halted thread while COM1 has received bytes (the UART's interrupt a
    halted CPU would wake for; level-triggered: until the guest reads
    them, hlt returns at once)."""
    uart = kernel.iobus.device("ttyS0")
    has_input = getattr(uart, "has_input", None)
    received = bool(has_input is not None and has_input())
    for tid, task in list(kernel.halted.items()):
        if received or signal_pending(task):
            del kernel.halted[tid]
            try:
                kernel.tracer.resume(tid, 0)
            except TracerError as exc:
                if exc.errno != errno.ESRCH:
                    raise


# -- CPUID of the machine's own ---------------------------------------------------
#
# With the ``cpuid`` setting ``own``, every guest program runs with CPUID
# faulting on: arch_prctl(ARCH_SET_CPUID, 0) (arch_prctl(2); the CPU
# feature ``cpuid_fault`` of /proc/cpuinfo) makes CPUID at CPL 3 raise #GP,
# which Linux turns into SIGSEGV, SI_KERNEL.  The setting is per thread,
# inherited by clone and fork, and reset by execve (arch_setup_new_exec
# re-enables CPUID), so it is set again after each exec: glibc's ld.so,
# a static glibc and musl all call arch_prctl(ARCH_SET_FS) to set up TLS
# before main, and at that call's exit stop the thread is pointed back at
# its ``syscall`` instruction (rip - 2) to run arch_prctl(ARCH_SET_CPUID,
# 0) too; at that one's exit its registers are put back as the first call
# left them (PRoot's way of injecting a call).  Until then CPUID is the
# host's: what ld.so and libc read for their own CPU-feature detection
# (ifunc choices) is the host's, which is the CPU the code runs on.
# A 32-bit program (no arch_prctl) sees the host's CPUID.

#: arch_prctl(2) codes (asm/prctl.h).
ARCH_SET_FS = 0x1002
ARCH_GET_CPUID = 0x1011
ARCH_SET_CPUID = 0x1012
#: arch_prctl's number on x86_64.
NR_ARCH_PRCTL = 158
#: The hypervisor leaves (SDM vol. 2, CPUID: 0x40000000-0x4fffffff are
#: reserved for software; hypervisors answer 0x40000000 with their highest
#: leaf in eax and a 12-byte signature in ebx, ecx, edx).
HV_BASE = 0x40000000
HV_SIGNATURE = b"umldumldumld"
_U32 = 0xFFFF_FFFF


class CpuidStep(enum.Enum):
    """Where a thread is in making its CPUID fault."""

    ARMED = "armed"  # execed: the next arch_prctl brings ARCH_SET_CPUID along
    FIRST = "first"  # in that arch_prctl: its exit injects the second
    SET = "set"  # in arch_prctl(ARCH_SET_CPUID, 0): its exit restores
    DONE = "done"


@final
class ThreadCpuid:
    """A thread's CPUID state (``Task.cpuid``; None: nothing to do)."""

    __slots__ = ("guest_faulting", "saved", "step")

    def __init__(self, step: CpuidStep = CpuidStep.DONE, guest_faulting: bool = False) -> None:
        self.step = step
        #: The registers to restore after the injected call.
        self.saved: Regs | None = None
        #: The guest asked for CPUID faulting itself (arch_prctl(2)): its
        #: CPUID then gets the SIGSEGV it asked for.
        self.guest_faulting = guest_faulting

    def copy(self) -> ThreadCpuid:
        """A clone's: the kernel copies the flag (TIF_NOCPUID)."""
        step = CpuidStep.ARMED if self.step is not CpuidStep.DONE else CpuidStep.DONE
        return ThreadCpuid(step, self.guest_faulting)


def cpuid_values(
    leaf: int, subleaf: int, vcpus: int, host: Callable[[int, int], tuple[int, int, int, int]]
) -> tuple[int, int, int, int]:
    """What CPUID answers a guest for ``leaf``/``subleaf`` (eax, ebx, ecx,
    edx): the host's (``host(leaf, subleaf)``), except

    * leaf 1: ebx bits 23:16 (maximum addressable logical processors in
      the package) the machine's vCPUs (at most 255), ecx bit 31 (a
      hypervisor is present) set;
    * leaves 0xB and 0x1F (x2APIC topology), each subleaf a level (ecx
      bits 15:8: 1 SMT, 2 core, 3 module, 4 tile, 5 die): one logical
      processor per core at the SMT level, the vCPUs at every level above
      it, with eax bits 4:0 (the x2APIC id shift to the next level) wide
      enough for them;
    * leaf 0x40000000: the highest hypervisor leaf 0x40000000 and
      ``umldumldumld``; the leaves above it zeros (not the host's own
      hypervisor's, when it runs in one).
    """
    leaf &= _U32
    subleaf &= _U32
    if leaf == HV_BASE:
        sig = HV_SIGNATURE
        return (
            HV_BASE,
            int.from_bytes(sig[0:4], "little"),
            int.from_bytes(sig[4:8], "little"),
            int.from_bytes(sig[8:12], "little"),
        )
    if HV_BASE < leaf <= 0x4FFFFFFF:
        return (0, 0, 0, 0)
    eax, ebx, ecx, edx = host(leaf, subleaf)
    if leaf == 1:
        ebx = (ebx & ~0x00FF0000 & _U32) | (min(vcpus, 255) << 16)
        ecx |= 1 << 31
    elif leaf in (0xB, 0x1F) and host(0, 0)[0] >= leaf:
        level = (ecx >> 8) & 0xFF
        if level == 1:
            eax, ebx = eax & ~0x1F & _U32, (ebx & ~0xFFFF & _U32) | 1
        elif level >= 2:
            width = max(vcpus - 1, 0).bit_length()
            eax = (eax & ~0x1F & _U32) | width
            ebx = (ebx & ~0xFFFF & _U32) | min(vcpus, 0xFFFF)
    return (eax & _U32, ebx & _U32, ecx & _U32, edx & _U32)


def host_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The host CPU's CPUID (run in umld, where it never faults)."""
    from umld.tracer import host_cpuid as c_cpuid

    return c_cpuid(leaf, subleaf)


def emulate_cpuid(regs: Regs, length: int, vcpus: int) -> Regs:
    """The registers after CPUID: eax, ebx, ecx, edx written as 32-bit
    registers are (the upper halves cleared), ``rip`` past it."""
    eax, ebx, ecx, edx = cpuid_values(regs.rax, regs.rcx, vcpus, host_cpuid)
    return regs._replace(rax=eax, rbx=ebx, rcx=ecx, rdx=edx, rip=regs.rip + length)


def _cpuid_fault(kernel: GuestKernel, task: Task, regs: Regs, insn: Insn) -> bool:
    state = task.cpuid
    if not kernel.policy.cpuid_own or (state is not None and state.guest_faulting):
        return False
    kernel.tracer.set_regs(task.tid, emulate_cpuid(regs, insn.length, kernel.policy.cpu_count()))
    kernel.counters["cpuid"] += 1
    kernel.tracer.resume(task.tid, 0)
    return True


def cpuid_exec(kernel: GuestKernel, task: Task) -> None:
    """A guest thread execed: its CPUID works natively again (and any
    faulting the guest asked for is gone)."""
    if kernel.policy.cpuid_own and kernel.cpuid_faulting is not False:
        task.cpuid = ThreadCpuid(CpuidStep.ARMED)
    else:
        task.cpuid = None


def cpuid_arch_prctl(kernel: GuestKernel, task: Task, code: int, arg: int) -> int | None:
    """At arch_prctl's entry stop (trapped only with ``cpuid`` own): None
    to let it run (and stop at its exit when one is to be injected), or
    the result of a call that is the guest's own CPUID faulting, kept
    virtual (ARCH_GET_CPUID: 1 while CPUID does not fault)."""
    state = task.cpuid
    if state is not None and state.step is CpuidStep.SET:
        return None  # the injected call
    if code == ARCH_SET_CPUID and kernel.cpuid_faulting:
        if state is None:
            state = task.cpuid = ThreadCpuid()
        state.guest_faulting = arg == 0
        return 0
    if code == ARCH_GET_CPUID and kernel.cpuid_faulting:
        return 0 if state is not None and state.guest_faulting else 1
    if state is not None and state.step is CpuidStep.ARMED:
        state.step = CpuidStep.FIRST
    return None


def cpuid_stops_at_exit(task: Task) -> bool:
    state = task.cpuid
    return state is not None and state.step in (CpuidStep.FIRST, CpuidStep.SET)


def cpuid_exit(kernel: GuestKernel, task: Task, result: int) -> None:
    """At the exit stop of the guest's arch_prctl or of the injected one;
    resumes the thread."""
    state = task.cpuid
    tracer = kernel.tracer
    assert state is not None
    if state.step is CpuidStep.FIRST:
        regs = tracer.get_regs(task.tid)
        state.saved = regs
        state.step = CpuidStep.SET
        tracer.set_regs(
            task.tid,
            regs._replace(rip=regs.rip - 2, rax=NR_ARCH_PRCTL, rdi=ARCH_SET_CPUID, rsi=0),
        )
        tracer.resume(task.tid)
        return
    saved, state.saved = state.saved, None
    state.step = CpuidStep.DONE
    if kernel.cpuid_faulting is None:
        kernel.cpuid_faulting = result == 0
        if result != 0:
            kernel.emit(
                "note",
                task.tgid,
                f"cpuid own: no CPUID faulting on this host (arch_prctl: "
                f"{errno.errorcode.get(-result, result)}); CPUID stays the host's",
            )
    if saved is not None:
        tracer.set_regs(task.tid, saved)
    tracer.resume(task.tid)
