"""The pure-Python tracer backend (``--tracer=python``), on python-ptrace.

It implements :class:`umld.tracer.platform.TracerPlatform` exactly as the
"How it works" notes of :mod:`umld.tracer.platform` describe.  python-ptrace
supplies the ``ptrace()`` binding, the x86-64 ``user_regs_struct`` and
PTRACE_GETREGS/SETREGS; ctypes supplies what it lacks (prctl(2), seccomp(2)
through syscall(2), tgkill(2), process_vm_readv(2)/process_vm_writev(2),
execve(2) with pre-built argument arrays, and the PTRACE_SEIZE, LISTEN,
GET_SYSCALL_INFO requests and their constants).

The module is x86-64 only (the seccomp filter and the register layout are);
importing it elsewhere raises ImportError, which ``umld.tracer.available``
turns into a reason.

Bookkeeping, in one place (every name below is a tid, the value waitpid(2)
and ptrace(2) use):

* ``_known``: spawned or announced (Cloned) and not yet Exited.  Only these
  get events (the ordering guarantee of :mod:`umld.tracer.events`).
* ``_parked``: raw wait statuses of tids not yet announced, kept (tracee
  left in its ptrace-stop) until the creator's clone event is reported.
* ``_stopped``: which reported stop a tid sits in (syscall entry, syscall
  exit, signal); resume/complete/rewrite/set_result check it.
* ``_at_exit``: tids whose syscall-exit-stop umld asked for (a resume
  with ``stop_at_exit`` at a seccomp stop, a rewrite); every restart uses
  PTRACE_SYSCALL until it comes (ptrace(2), "Syscall-stops": a seccomp
  stop "functions comparably to a syscall-entry-stop").
* ``_modes``, ``_held_events``: the resume mode and the kept
  PTRACE_EVENT_* stops of a thread a debugger follows; with mode SYSCALL
  or SYSEMU a SIGTRAP|0x80 stop is an entry or an exit as
  PTRACE_GET_SYSCALL_INFO's op says.
* ``_listening``: tids left in group-stop with PTRACE_LISTEN.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os
import platform as _platform
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, Protocol

from umld.tracer.diagnostics import ptrace_refused_reason
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
    ResumeMode,
    SignalStop,
    SyscallEntry,
    SyscallExit,
    SyscallStop,
    Tid,
    Wakeup,
)
from umld.tracer.platform import (
    NREGS,
    ORPHAN_DELAY,
    SIGINFO_SIZE,
    Regs,
    SigInfo,
    SpawnSpec,
    TracerError,
    TracerUnavailable,
)
from umld.tracer.seccomp import AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT

if _platform.machine() != "x86_64":  # pragma: no cover - other hosts
    raise ImportError(f"the python tracer supports x86_64 only, not {_platform.machine()}")

# python-ptrace has no type information: everything crossing into it is Any.
import ptrace.binding.func as _ptb
from ptrace.binding.linux_struct import user_regs_struct as _user_regs
from ptrace.error import PtraceError as _PtraceError

_ptrace: Any = _ptb.ptrace
_RegsStruct: Any = _user_regs

# --- ptrace(2) requests and options (linux/ptrace.h) ------------------------
PTRACE_CONT: int = _ptb.PTRACE_CONT
PTRACE_SYSCALL: int = _ptb.PTRACE_SYSCALL
PTRACE_GETREGS: int = _ptb.PTRACE_GETREGS
PTRACE_SETREGS: int = _ptb.PTRACE_SETREGS
PTRACE_POKEUSER: int = _ptb.PTRACE_POKEUSER
PTRACE_GETEVENTMSG: int = _ptb.PTRACE_GETEVENTMSG
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_SINGLESTEP = 9
PTRACE_SYSEMU = 31
PTRACE_SYSEMU_SINGLESTEP = 32
PTRACE_SETOPTIONS = 0x4200
PTRACE_PEEKUSER = 3
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
#: struct ptrace_syscall_info (linux/ptrace.h) as of Linux 6.x: 88 bytes.
SYSCALL_INFO_SIZE = 88
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B

PTRACE_SYSCALL_INFO_SECCOMP = 3

PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 1 << 20

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

#: The request of each resume mode.
_MODE_REQUESTS = {
    ResumeMode.CONT: PTRACE_CONT,
    ResumeMode.SYSCALL: PTRACE_SYSCALL,
    ResumeMode.SINGLESTEP: PTRACE_SINGLESTEP,
    ResumeMode.SYSEMU: PTRACE_SYSEMU,
    ResumeMode.SYSEMU_SINGLESTEP: PTRACE_SYSEMU_SINGLESTEP,
}
#: Modes with syscall-enter-stops.
_ENTRY_MODES = (ResumeMode.SYSCALL, ResumeMode.SYSEMU, ResumeMode.SYSEMU_SINGLESTEP)


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


SEIZE_OPTIONS = (
    PTRACE_O_TRACESYSGOOD
    | PTRACE_O_TRACEFORK
    | PTRACE_O_TRACEVFORK
    | PTRACE_O_TRACECLONE
    | PTRACE_O_TRACEEXEC
    | PTRACE_O_TRACESECCOMP
    | PTRACE_O_EXITKILL
)

# --- wait(2) flags (linux/wait.h) -------------------------------------------
WALL: int = getattr(os, "__WALL", 0x40000000)
WNOTHREAD: int = getattr(os, "__WNOTHREAD", 0x20000000)
_WAIT_FLAGS = os.WNOHANG | WALL | WNOTHREAD

# --- prctl(2), seccomp(2), syscall numbers (x86-64) -------------------------
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_SET_MODE_FILTER = 1
SYS_TGKILL = 234
SYS_SECCOMP = 317
SYS_CLONE = 56
SYS_CLONE3 = 435
SYS_I386_CLONE = 120
CLONE_THREAD = 0x00010000

_SYSGOOD_TRAP = signal.SIGTRAP | 0x80
_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_PAGE = os.sysconf("SC_PAGE_SIZE")
_IOV_MAX = 1024
_U64 = 1 << 64

#: Longest single sleep in ``wait``.  SIGCHLD ends a sleep only if no
#: thread of the process has it unblocked (the kernel may hand the signal
#: to such a thread, which discards it); a thread started with an
#: inherited mask before the owner blocked SIGCHLD is enough.  Bounding
#: the sleep turns such a lost wake-up into a delay instead of a hang.
MAX_SLEEP = 0.1

#: What the reported stop of a tid is; decides what may be done with it.
_AT_SYSCALL, _AT_EXIT, _AT_SIGNAL, _AT_INTERRUPT, _AT_ENTRY, _AT_EVENT = 1, 2, 3, 4, 5, 6
_ANY_STOP = (_AT_SYSCALL, _AT_EXIT, _AT_SIGNAL, _AT_INTERRUPT, _AT_ENTRY, _AT_EVENT)

# Registers that carry syscall arguments (events.SyscallStop).
_ARGS_64 = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_ARGS_I386 = ("rbx", "rcx", "rdx", "rsi", "rdi", "rbp")
_OFF_ORIG_RAX: int = _RegsStruct.orig_rax.offset
_OFF_RAX: int = _RegsStruct.rax.offset
if ctypes.sizeof(_RegsStruct) != NREGS * 8:  # pragma: no cover - python-ptrace changed
    raise ImportError("python-ptrace's user_regs_struct is not struct user_regs_struct")
_REGS = struct.Struct(f"={NREGS}Q")


# --- libc through ctypes ----------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _SockFprog(ctypes.Structure):
    # struct sock_fprog (linux/filter.h)
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class _SyscallInfo(ctypes.Structure):
    # struct ptrace_syscall_info (linux/ptrace.h), seccomp member of the
    # union spelled out: nr and args overlay entry.nr/args and exit.rval.
    _fields_ = (
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("nr", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
        ("ret_data", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    )


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_execve = _libc.execve
_execve.restype = ctypes.c_int
_execve.argtypes = (
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_char_p),
)
_sigdfl = _libc.signal
_sigdfl.restype = ctypes.c_void_p
_sigdfl.argtypes = (ctypes.c_int, ctypes.c_void_p)
_SIG_ERR = ctypes.c_void_p(-1).value
_vm_args = (
    ctypes.c_int,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_vm_readv = _libc.process_vm_readv
_vm_readv.restype = ctypes.c_ssize_t
_vm_readv.argtypes = _vm_args
_vm_writev = _libc.process_vm_writev
_vm_writev.restype = ctypes.c_ssize_t
_vm_writev.argtypes = _vm_args


class _Threads(Protocol):
    def add(self, tid: int) -> bool: ...
    def remove(self, tid: int) -> None: ...
    def forward(self, from_tid: int) -> None: ...


class _PythonThreads:
    """Threads of this process that own a tracer, one entry per tracer.
    SIGCHLD is process-directed: the kernel wakes whichever thread is
    waiting for it, possibly another tracer's thread, which finds nothing
    of its own (__WNOTHREAD) while the owner sleeps on.  So a tracer that
    takes a kernel-sent SIGCHLD passes it on to the others (see
    _forward_sigchld).  Used only when the C backend is not built: its
    list (c_tracer/tracer.c) is shared by the tracers of both backends."""

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, tid: int) -> bool:
        with self._lock:
            self._count[tid] = self._count.get(tid, 0) + 1
        return True

    def remove(self, tid: int) -> None:
        with self._lock:
            left = self._count.pop(tid, 0) - 1
            if left > 0:
                self._count[tid] = left

    def forward(self, from_tid: int) -> None:
        with self._lock:
            others = [t for t in self._count if t != from_tid]
        for native in others:
            _tgkill_self(native, signal.SIGCHLD)


_threads_list: _Threads | None = None
_threads_lock = threading.Lock()


def _threads() -> _Threads:
    """The process's list of tracer threads: the C backend's when it is
    built (so that tracers of both backends forward to each other), else
    one of our own.  Looked up at the first tracer, not at import."""
    global _threads_list
    if _threads_list is not None:
        return _threads_list
    with _threads_lock:
        if _threads_list is None:
            try:
                from umld.tracer.ptrace_c import TRACER_THREADS
            except ImportError:
                _threads_list = _PythonThreads()
            else:
                _threads_list = TRACER_THREADS
        return _threads_list


def _tgkill_self(native_tid: int, signo: int) -> None:
    """tgkill(2) a thread of this process; ESRCH (thread gone) is fine.
    Unlike pthread_kill(3), safe for a thread that has already exited."""
    _syscall(SYS_TGKILL, ctypes.c_int(os.getpid()), ctypes.c_int(native_tid), ctypes.c_int(signo))


def _forward_sigchld(info: Any, me: int) -> None:
    """Pass a SIGCHLD the kernel sent (si_code CLD_*, > 0) to the other
    tracer threads.  Forwards arrive as SI_TKILL (< 0) and are not
    forwarded again."""
    if info.si_code > 0:
        _threads().forward(me)


def _signed(value: int) -> int:
    """A register (unsigned 64-bit in user_regs_struct) as a signed long."""
    return value - _U64 if value >= 1 << 63 else value


def _signed32(value: int) -> int:
    """The low 32 bits of a register as a signed int (an i386 eax)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _cstrings(items: Sequence[bytes]) -> Any:
    """A NULL-terminated ``char *[]`` (the array keeps its strings alive
    through ctypes' own references)."""
    arr = (ctypes.c_char_p * (len(items) + 1))()
    for i, item in enumerate(items):
        arr[i] = item
    arr[len(items)] = None
    return arr


def _proc_status_field(tid: int, field: str) -> int | None:
    """An integer field of /proc/<tid>/status (Tgid, PPid, TracerPid)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class _SpawnPrep:
    """Everything the forked child needs, built before fork(2) so that the
    child only makes system calls (no allocation, no imports)."""

    def __init__(self, spec: SpawnSpec) -> None:
        self.parent = os.getpid()
        self.path = bytes(spec.path)
        self.argv = _cstrings([bytes(a) for a in spec.argv])
        env = (
            [bytes(e) for e in spec.env]
            if spec.env is not None
            else [k + b"=" + v for k, v in os.environb.items()]
        )
        self.envp = _cstrings(env)
        self.cwd = spec.cwd
        self.new_pgrp = spec.new_process_group
        self.new_session = spec.new_session
        self.tty = spec.foreground_tty
        self.subreaper = spec.subreaper
        self.reset = [int(s) for s in spec.reset_signals]
        self.sigmask = {signal.Signals(s) for s in spec.sigmask}
        self.ttou = {signal.SIGTTOU}
        self.filter_buf: Any = None
        self.fprog: Any = None
        if spec.seccomp_filter:
            self.filter_buf = ctypes.create_string_buffer(bytes(spec.seccomp_filter))
            # A length that is not a whole number of instructions is invalid;
            # len 0 makes the kernel say so (EINVAL) in the child, where
            # filter errors are reported.
            count = len(spec.seccomp_filter) // 8 if len(spec.seccomp_filter) % 8 == 0 else 0
            self.fprog = _SockFprog(min(count, 0xFFFF), ctypes.addressof(self.filter_buf))


def _child_main(prep: _SpawnPrep, go_r: int, go_w: int, err_w: int) -> NoReturn:
    """The forked child: wait for the tracer, set up, exec.  Never returns.

    Runs in a copy of a possibly multi-threaded process, so it stays small:
    system calls through os/ctypes on data prepared before the fork."""
    stage = "setup"
    code = _errno.EINVAL
    try:
        os.close(go_w)
        # Block until the parent has seized us (EOF: it gave up).
        if os.read(go_r, 1) != b"g":
            os._exit(127)
        os.close(go_r)
        if prep.new_session:
            os.setsid()  # a new process group too, and no terminal
        elif prep.new_pgrp:
            os.setpgid(0, 0)
        if prep.tty is not None:
            # tcsetpgrp(3) from a background group raises SIGTTOU unless
            # SIGTTOU is blocked or ignored (termios(3), "TOSTOP").
            old = signal.pthread_sigmask(signal.SIG_BLOCK, prep.ttou)
            os.tcsetpgrp(prep.tty, os.getpgrp())
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if prep.subreaper and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
        # Die with the tracer thread even before EXITKILL could apply.
        if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_PDEATHSIG")
        if os.getppid() != prep.parent:  # the parent died before prctl
            os._exit(127)
        for signo in prep.reset:
            # libc signal(2) rather than signal.signal: no Python handler
            # bookkeeping in a child that is about to exec.
            if _sigdfl(signo, 0) == _SIG_ERR:
                raise OSError(ctypes.get_errno(), "signal")
        if prep.cwd is not None:
            os.chdir(prep.cwd)
        # The mask is set before the filter goes in (the brief lists it
        # after): every call made after seccomp(2) passes through the guest's
        # filter, so the only one left there is execve(2) itself.
        signal.pthread_sigmask(signal.SIG_SETMASK, prep.sigmask)
        if prep.fprog is not None:
            stage = "seccomp"
            # seccomp(2): without CAP_SYS_ADMIN a filter requires no_new_privs.
            if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
            if _syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prep.fprog)) != 0:
                raise OSError(ctypes.get_errno(), "seccomp")
        stage = "exec"
        _execve(prep.path, prep.argv, prep.envp)
        code = ctypes.get_errno()
    except OSError as exc:
        code = exc.errno or _errno.EINVAL
    except BaseException:
        code = _errno.EINVAL
    try:
        os.write(err_w, struct.pack("=8si", stage.encode(), code))
    finally:
        os._exit(127)


class PythonTracer:
    """A tracer built on python-ptrace.  See :class:`TracerPlatform`.

    Every method but ``wake`` must be called from the thread that created
    the object (ptrace(2): requests come from the attached thread).

    Caveats:

    * ``wait`` reaps with waitpid(-1, __WALL | __WNOTHREAD): the owner
      thread must have no children of its own besides the guests (a
      subprocess started from it would be reaped here and never be seen
      by its owner).
    * Several PythonTracers in one process (one per thread) pass kernel
      SIGCHLDs on to each other, so none sleeps through its own tracee's
      stop; a thread that does not block SIGCHLD can still swallow one,
      which then costs at most MAX_SLEEP.
    * A child whose creator never reports the clone event (the creator
      was killed in that stop) waits ``orphan_delay`` seconds parked,
      then the orphan rule of :mod:`umld.tracer.platform` applies
      (``_sweep_orphans``)."""

    name = "python"

    def __init__(self, *, orphan_delay: float = ORPHAN_DELAY) -> None:
        if not orphan_delay >= 0:
            raise ValueError("orphan_delay must be 0 or more seconds")
        self.orphan_delay = orphan_delay
        self._owner = threading.get_ident()
        self._owner_native = threading.get_native_id()
        self._registered = _threads().add(self._owner_native)
        # sigtimedwait(2) only works for a blocked signal: an unblocked
        # SIGCHLD (default action: ignore) would be discarded, not queued.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        self._host: frozenset[int] = frozenset()
        self._sigset: set[int] = {signal.SIGCHLD}
        self._woken = False
        self._closed = False
        self._known: set[int] = set()
        self._tgid: dict[int, int] = {}
        self._stopped: dict[int, int] = {}
        self._arch: dict[int, Arch] = {}
        self._at_exit: set[int] = set()
        #: tids interrupt() asked to stop whose stop has not come yet.
        self._interrupts: set[int] = set()
        #: Resume modes other than CONT (set_resume_mode), by tid.
        self._modes: dict[int, ResumeMode] = {}
        #: PTRACE_EVENT_* stops kept (set_event_stops), by tid: a bit mask.
        self._held_events: dict[int, int] = {}
        #: Events to report before looking at wait statuses again (an
        #: EventStop after its Cloned or Execed).
        self._pending: deque[Event] = deque()
        #: Rewritten calls: tid -> (register names, the guest's values, whether
        #: the caller asked for the SyscallExit), restored at the exit stop.
        self._restore: dict[int, tuple[tuple[str, ...], tuple[int, ...], bool]] = {}
        self._listening: set[int] = set()
        self._parked: dict[int, list[int]] = {}
        self._parked_since: dict[int, float] = {}
        self._dropped: set[int] = set()
        self._errpipes: dict[int, int] = {}
        self._ready: deque[tuple[int, int]] = deque()
        self._last_sigpoll = time.monotonic()
        # Scratch buffers reused by every stop (one thread uses them).
        self._info = _SyscallInfo()
        self._info_addr = ctypes.addressof(self._info)
        self._regs: Any = _RegsStruct()
        self._regs_addr: int = ctypes.addressof(self._regs)
        self._msg = ctypes.c_ulong()
        self._msg_addr = ctypes.addressof(self._msg)
        self._siginfo = ctypes.create_string_buffer(SIGINFO_SIZE)
        self._siginfo_addr = ctypes.addressof(self._siginfo)
        self._sigmask = ctypes.c_uint64(0)
        self._sigmask_addr = ctypes.addressof(self._sigmask)

    # --- helpers -----------------------------------------------------------

    def _check_owner(self) -> None:
        if threading.get_ident() != self._owner:
            raise TracerError("tracer used from a thread other than its owner", _errno.EPERM)
        if self._closed:
            raise TracerError("tracer is closed", _errno.EBADF)

    def _eventmsg(self, tid: int) -> int:
        # python-ptrace's ptrace_geteventmsg hands the kernel a 4-byte c_int
        # where it stores an unsigned long; use an unsigned long of our own.
        _ptrace(PTRACE_GETEVENTMSG, tid, 0, self._msg_addr)
        return int(self._msg.value)

    def _getregs(self, tid: int) -> Any:
        _ptrace(PTRACE_GETREGS, tid, 0, self._regs_addr)
        return self._regs

    def _restart(self, tid: int, request: int, signo: int = 0) -> None:
        """PTRACE_CONT or PTRACE_SYSCALL; a tracee that vanished (ESRCH after
        we saw it stop: SIGKILL, exit_group of another thread, exec of
        another thread) is not an error, its Exited follows (ptrace(2),
        "Death under ptrace")."""
        self._stopped.pop(tid, None)
        try:
            _ptrace(request, tid, 0, signo)
        except _PtraceError as exc:
            self._at_exit.discard(tid)
            if exc.errno != _errno.ESRCH:
                raise TracerError(f"ptrace({request:#x}, {tid}): {exc}", exc.errno or 0) from None

    def _request(self, tid: int) -> int:
        """The request of the thread's next restart: PTRACE_SYSCALL while
        a syscall-exit-stop it asked for is due (``_at_exit``), else its
        resume mode's."""
        if tid in self._at_exit:
            return PTRACE_SYSCALL
        return _MODE_REQUESTS[self._modes.get(tid, ResumeMode.CONT)]

    def _continue(self, tid: int, signo: int = 0) -> None:
        """Restart after a stop: keeps a pending syscall-exit-stop
        (PTRACE_SYSCALL) when one was asked for, else the resume mode."""
        self._restart(tid, self._request(tid), signo)

    def _require_stop(self, tid: int, kinds: Iterable[int], what: str) -> int:
        kind = self._stopped.get(tid)
        if tid not in self._known:
            raise TracerError(f"{what}: thread {tid} is not traced", _errno.ESRCH)
        if kind is None or kind not in kinds:
            raise TracerError(f"{what}: thread {tid} is not in a suitable stop", _errno.EINVAL)
        return kind

    def _forget(self, tid: int) -> None:
        self._known.discard(tid)
        self._tgid.pop(tid, None)
        self._stopped.pop(tid, None)
        self._arch.pop(tid, None)
        self._at_exit.discard(tid)
        self._restore.pop(tid, None)
        self._listening.discard(tid)
        self._interrupts.discard(tid)
        self._modes.pop(tid, None)
        self._held_events.pop(tid, None)

    def _announce(self, tid: int, tgid: int) -> None:
        self._known.add(tid)
        self._tgid[tid] = tgid
        parked = self._parked.pop(tid, None)
        self._parked_since.pop(tid, None)
        if parked:
            # Delivered right after the Cloned being returned now.
            self._ready.extendleft((tid, s) for s in reversed(parked))

    # --- spawn -------------------------------------------------------------

    def spawn(self, spec: SpawnSpec) -> Tid:
        """Fork, PTRACE_SEIZE, release the child into setup + exec."""
        self._check_owner()
        if spec.new_session and spec.foreground_tty is not None:
            raise TracerError("spawn: a new session has no terminal to take", _errno.EINVAL)
        prep = _SpawnPrep(spec)
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()  # both O_CLOEXEC (PEP 446): exec closes err_w
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (go_r, go_w, err_r, err_w):
                os.close(fd)
            raise TracerError(f"fork: {exc.strerror}", exc.errno or 0) from None
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(err_r)
            _child_main(prep, go_r, go_w, err_w)
        os.close(go_r)
        os.close(err_w)
        try:
            _ptrace(PTRACE_SEIZE, pid, 0, SEIZE_OPTIONS)
        except _PtraceError as exc:
            os.close(go_w)  # EOF: the child exits 127
            os.close(err_r)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
            code = exc.errno or _errno.EPERM
            if code in (_errno.EPERM, _errno.EACCES):
                raise TracerUnavailable(ptrace_refused_reason(code), code) from None
            raise TracerError(f"PTRACE_SEIZE {pid}: {os.strerror(code)}", code) from None
        os.set_blocking(err_r, False)
        os.write(go_w, b"g")
        os.close(go_w)
        # A parked leftover under a recycled pid number is stale by now.
        self._parked.pop(pid, None)
        self._parked_since.pop(pid, None)
        self._dropped.discard(pid)
        self._known.add(pid)
        self._tgid[pid] = pid
        self._errpipes[pid] = err_r
        return Tid(pid)

    def _spawn_error(self, pid: int) -> tuple[str, int] | None:
        fd = self._errpipes.pop(pid, None)
        if fd is None:
            return None
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        finally:
            os.close(fd)
        if len(data) < 12:
            return None
        stage, code = struct.unpack("=8si", data[:12])
        return stage.rstrip(b"\0").decode(), code

    # --- wait --------------------------------------------------------------

    def set_host_signals(self, signals: Sequence[int]) -> None:
        """Signals ``wait`` reports as HostSignal (blocked here too, in the
        calling thread; the caller blocks them in every other thread)."""
        self._host = frozenset(int(s) for s in signals)
        self._sigset = {signal.SIGCHLD, *self._host}
        if self._host:
            signal.pthread_sigmask(signal.SIG_BLOCK, self._host)

    def wake(self) -> None:
        """Make the owner's ``wait`` return Wakeup.  Any thread."""
        if self._closed:
            return
        # Flag first, then the signal: wait checks the flag after every
        # wake-up, so a wake between its check and its sleep is not lost
        # (the thread-directed SIGCHLD stays pending and ends the sleep).
        self._woken = True
        _tgkill_self(self._owner_native, signal.SIGCHLD)

    def wait(self, timeout: float | None = None) -> Event | None:
        """Next event, or None after ``timeout`` seconds without one."""
        self._check_owner()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self._woken:
                self._woken = False
                return Wakeup()
            if self._pending:
                return self._pending.popleft()
            while self._ready:
                pid, status = self._ready.popleft()
                event = self._handle(pid, status)
                if event is not None:
                    return event
            now = time.monotonic()
            # Fairness: a stream of tracee stops never lets wait sleep, so
            # look at the host signals at least every 10 ms anyway.
            if self._host and now - self._last_sigpoll > 0.01:
                self._last_sigpoll = now
                info = signal.sigtimedwait(self._host, 0)
                if info is not None:
                    return HostSignal(info.si_signo)
            try:
                pid, status = os.waitpid(-1, _WAIT_FLAGS)
            except ChildProcessError:
                pid = 0
            if pid:
                event = self._handle(pid, status)
                if event is not None:
                    return event
                continue
            # Nothing to report: sleep until SIGCHLD, a host signal, wake(),
            # the timeout, or a parked orphan's deadline.
            if self._parked_since:
                event = self._sweep_orphans(now)
                if event is not None:
                    return event
                if self._ready:
                    continue
            slice_ = MAX_SLEEP if deadline is None else min(deadline - now, MAX_SLEEP)
            if self._parked_since:
                first = min(self._parked_since.values()) + self.orphan_delay - now
                slice_ = min(slice_, max(first, 0.001))
            self._last_sigpoll = now
            info = signal.sigtimedwait(self._sigset, max(slice_, 0.0))
            if info is not None:
                if info.si_signo in self._host:
                    return HostSignal(info.si_signo)
                _forward_sigchld(info, self._owner_native)
                continue  # SIGCHLD (a tracee, or wake): look again
            if deadline is not None and time.monotonic() >= deadline:
                # One last look: a stop may have landed just now.
                if self._woken:
                    self._woken = False
                    return Wakeup()
                return self._poll_once()
            # A slice ended (or a lost SIGCHLD): look again.

    def _poll_once(self) -> Event | None:
        while True:
            try:
                pid, status = os.waitpid(-1, _WAIT_FLAGS)
            except ChildProcessError:
                return None
            if not pid:
                return None
            event = self._handle(pid, status)
            if event is not None:
                return event

    def _handle(self, pid: int, status: int) -> Event | None:
        """Turn one wait status into an event, or handle it internally."""
        if pid not in self._known:
            self._park(pid, status)
            return None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._forget(pid)
            return Exited(Tid(pid), status, self._spawn_error(pid))
        if not os.WIFSTOPPED(status):
            return None  # WIFCONTINUED: not asked for (no WCONTINUED)
        sig = (status >> 8) & 0xFF
        event = status >> 16
        if sig == _SYSGOOD_TRAP:
            if self._modes.get(pid, ResumeMode.CONT) in _ENTRY_MODES:
                entry = self._syscall_entry(pid)
                if entry is not None:
                    return entry
            return self._syscall_exit(pid)
        if event == 0:
            # Signal-delivery-stop: the core injects or suppresses it.
            self._stopped[pid] = _AT_SIGNAL
            return SignalStop(Tid(pid), sig)
        if event == PTRACE_EVENT_SECCOMP:
            return self._seccomp_stop(pid)
        if event in (PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK, PTRACE_EVENT_CLONE):
            return self._cloned(pid, event)
        if event == PTRACE_EVENT_EXEC:
            return self._execed(pid)
        if event == PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:
                if pid in self._listening and pid in self._interrupts and pid in self._known:
                    # interrupt() of a thread in group-stop: it stays in
                    # this trap, reported, until resumed or listening.
                    self._interrupts.discard(pid)
                    self._listening.discard(pid)
                    self._stopped[pid] = _AT_INTERRUPT
                    return Interrupted(Tid(pid), sig)
                # Group-stop under PTRACE_SEIZE (ptrace(2), "Group-stop"):
                # PTRACE_LISTEN keeps it stopped yet lets a SIGCONT wake it
                # and be reported, as without a tracer.
                self._stopped.pop(pid, None)
                self._at_exit.discard(pid)
                try:
                    _ptrace(PTRACE_LISTEN, pid, 0, 0)
                except _PtraceError as exc:
                    if exc.errno != _errno.ESRCH:
                        raise TracerError(f"PTRACE_LISTEN {pid}: {exc}", exc.errno or 0) from None
                if pid in self._listening:
                    return None  # a re-trap while still stopped
                self._listening.add(pid)
                return GroupStopped(Tid(pid), sig)
            # SIGTRAP: the initial stop of an auto-attached child, or a
            # re-trap (JOBCTL_TRAP_NOTIFY).  A listening tracee re-traps when
            # SIGCONT ends its group-stop: that is the "Continued" edge.
            was_listening = pid in self._listening
            self._listening.discard(pid)
            if not was_listening and pid in self._interrupts and pid in self._known:
                self._interrupts.discard(pid)
                self._stopped[pid] = _AT_INTERRUPT
                return Interrupted(Tid(pid))
            self._continue(pid)
            if was_listening and pid in self._interrupts:
                # The interrupt asked during the group-stop was used up by
                # the stop LISTEN reported (ptrace(2), PTRACE_INTERRUPT):
                # ask again now that it runs.
                self._ptrace_quiet(PTRACE_INTERRUPT, pid)
            return Continued(Tid(pid)) if was_listening else None
        if event in (PTRACE_EVENT_VFORK_DONE, PTRACE_EVENT_EXIT):
            try:
                message = self._eventmsg(pid)
            except _PtraceError:
                return None
            held = self._event_stop(pid, event, message)
            if held is not None:
                return held
        # Events nobody asked to keep: just go on.
        self._continue(pid)
        return None

    def _seccomp_stop(self, pid: int) -> Event | None:
        info = self._info
        try:
            _ptrace(PTRACE_GET_SYSCALL_INFO, pid, ctypes.sizeof(info), self._info_addr)
        except _PtraceError as exc:
            if exc.errno == _errno.ESRCH:
                return None  # killed meanwhile; Exited follows
            raise TracerError(f"PTRACE_GET_SYSCALL_INFO {pid}: {exc}", exc.errno or 0) from None
        nr = _signed(int(info.nr))
        if info.arch == AUDIT_ARCH_I386:
            arch = Arch.I386
        elif info.arch == AUDIT_ARCH_X86_64 and X32_SYSCALL_BIT <= nr < 2 * X32_SYSCALL_BIT:
            # x32 numbers are 0x40000000 + n; -1 (all bits set) is not one.
            arch = Arch.X32
        else:
            arch = Arch.X86_64
        a = info.args
        self._stopped[pid] = _AT_SYSCALL
        self._arch[pid] = arch
        if arch is Arch.I386:
            # i386 arguments are 32 bits: after int 0x80 in a 64-bit
            # process the upper halves of rbx..rbp are whatever they were,
            # and the kernel's compat entry ignores them.
            m = 0xFFFFFFFF
            args = (a[0] & m, a[1] & m, a[2] & m, a[3] & m, a[4] & m, a[5] & m)
        else:
            args = (int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]))
        return SyscallStop(Tid(pid), nr, args, arch)

    def _syscall_entry(self, pid: int) -> Event | None:
        """A syscall-enter-stop in resume mode SYSCALL or SYSEMU, told from
        an exit stop by PTRACE_GET_SYSCALL_INFO's op; None if it is not
        one."""
        info = self._info
        try:
            _ptrace(PTRACE_GET_SYSCALL_INFO, pid, ctypes.sizeof(info), self._info_addr)
        except _PtraceError:
            return None
        if info.op != PTRACE_SYSCALL_INFO_ENTRY:
            return None
        nr = _signed(int(info.nr))
        a = info.args
        if info.arch == AUDIT_ARCH_I386:
            arch = Arch.I386
            m = 0xFFFFFFFF
            args = (a[0] & m, a[1] & m, a[2] & m, a[3] & m, a[4] & m, a[5] & m)
        else:
            arch = Arch.X32 if X32_SYSCALL_BIT <= nr < 2 * X32_SYSCALL_BIT else Arch.X86_64
            args = (int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]))
        self._stopped[pid] = _AT_ENTRY
        self._arch[pid] = arch
        return SyscallEntry(Tid(pid), nr, args, arch)

    def _syscall_exit(self, pid: int) -> Event | None:
        traced = self._modes.get(pid) is ResumeMode.SYSCALL
        if pid not in self._at_exit and not traced:
            # A syscall stop nobody asked for (the resume mode changed
            # while the thread was in a call).  Let it run.
            self._continue(pid)
            return None
        self._at_exit.discard(pid)
        try:
            regs = self._getregs(pid)
        except _PtraceError:
            self._restore.pop(pid, None)
            return None  # vanished; Exited follows
        restore = self._restore.pop(pid, None)
        if restore is not None:
            # The exit of a rewritten call: the guest's argument registers
            # back (a call the kernel restarts then restarts as the guest
            # made it, and stops at its seccomp stop again).
            names, saved, report = restore
            for name, value in zip(names, saved, strict=True):
                setattr(regs, name, value)
            try:
                _ptrace(PTRACE_SETREGS, pid, 0, self._regs_addr)
            except _PtraceError:
                return None
            if not report and not traced:
                self._continue(pid)
                return None
        self._stopped[pid] = _AT_EXIT
        result = _signed(regs.rax)
        if self._arch.get(pid) is Arch.I386:
            # The i386 ABI returns eax: a negative errno is its sign.
            result = _signed32(regs.rax)
        return SyscallExit(Tid(pid), _signed(regs.orig_rax), result)

    def _clone_is_thread(self, parent: int, child: int) -> bool:
        # The child's Tgid says it best; if it is already gone (reaped and
        # parked), fall back to the clone flags in the parent's registers
        # (the event stop sits inside clone/clone3, arguments intact).
        tgid = _proc_status_field(child, "Tgid")
        if tgid is not None:
            return tgid != child
        try:
            regs = self._getregs(parent)
            nr = _signed(regs.orig_rax)
            if nr == SYS_CLONE:
                return bool(regs.rdi & CLONE_THREAD)
            if nr == SYS_I386_CLONE:
                return bool(regs.rbx & CLONE_THREAD)
            if nr == SYS_CLONE3:  # struct clone_args: u64 flags first
                ptr = regs.rdi if regs.cs == 0x33 else regs.rbx
                (flags,) = struct.unpack("=Q", self.read_memory(Tid(parent), ptr, 8))
                return bool(flags & CLONE_THREAD)
        except (_PtraceError, TracerError, struct.error):
            pass
        return False

    def _cloned(self, pid: int, event: int) -> Event | None:
        try:
            child = self._eventmsg(pid)
        except _PtraceError:
            return None  # the parent vanished; its Exited follows
        if event == PTRACE_EVENT_FORK:
            kind = CloneKind.FORK
        elif event == PTRACE_EVENT_VFORK:
            kind = CloneKind.VFORK
        elif self._clone_is_thread(pid, child):
            kind = CloneKind.THREAD
        else:
            kind = CloneKind.PROCESS
        tgid = self._tgid.get(pid, pid) if kind is CloneKind.THREAD else child
        held = self._event_stop(pid, event, child)
        if held is None:
            self._continue(pid)
        elif child not in self._known:
            # It starts stopped, for the one following its creator: its
            # initial stop (parked until now) is reported as Interrupted.
            self._interrupts.add(child)
        if child in self._known:
            return held  # adopted by the orphan rule already: said once
        self._announce(child, tgid)
        if held is not None:
            self._pending.append(held)
        return Cloned(Tid(pid), Tid(child), kind)

    def _event_stop(self, pid: int, event: int, message: int) -> EventStop | None:
        """The EventStop of a PTRACE_EVENT_* stop the core keeps (the thread
        is left in it), or None when it is not kept."""
        if not self._held_events.get(pid, 0) & (1 << event):
            return None
        self._stopped[pid] = _AT_EVENT
        return EventStop(Tid(pid), event, message % _U64)

    def _execed(self, pid: int) -> Event | None:
        try:
            former = self._eventmsg(pid)
        except _PtraceError:
            return None
        if former != pid:
            # A non-leader thread exec'd and now carries the leader's id
            # (ptrace(2), "execve(2) under ptrace").  Its old id is never
            # seen again: no Exited for it.  The leader's own stop state is
            # void; the exec'ing thread's carries over.
            at_exit = former in self._at_exit
            self._forget(former)
            self._stopped.pop(pid, None)
            self._listening.discard(pid)
            if at_exit:
                self._at_exit.add(pid)
            else:
                self._at_exit.discard(pid)
        fd = self._errpipes.pop(pid, None)
        if fd is not None:
            os.close(fd)  # exec succeeded: no spawn error to come
        held = self._event_stop(pid, PTRACE_EVENT_EXEC, former)
        if held is None:
            self._continue(pid)
        else:
            self._pending.append(held)
        return Execed(Tid(pid), Tid(former))

    # --- tids not announced yet --------------------------------------------

    def _park(self, pid: int, status: int) -> None:
        dead = os.WIFEXITED(status) or os.WIFSIGNALED(status)
        if pid in self._dropped:
            if dead:
                self._dropped.discard(pid)
            return
        statuses = self._parked.setdefault(pid, [])
        if statuses and not dead:
            last = statuses[-1]
            if os.WIFEXITED(last) or os.WIFSIGNALED(last):
                statuses.clear()  # a stale death, then the pid was reused
        statuses.append(status)
        self._parked_since.setdefault(pid, time.monotonic())

    def _announced_in_group(self, tgid: int) -> int | None:
        """An announced thread of thread group ``tgid`` (its leader if
        announced), or None."""
        if tgid in self._known:
            return tgid
        return next((t for t, g in self._tgid.items() if g == tgid and t in self._known), None)

    def _sweep_orphans(self, now: float) -> Event | None:
        """The orphan rule (platform.py, "Orphans") for the parked tids that
        have waited ``orphan_delay``: the first Cloned it announces (the
        parked statuses follow through ``_ready``; the next call goes on
        with the others), or None."""
        due = [p for p, since in self._parked_since.items() if now - since >= self.orphan_delay]
        tgids = {p: _proc_status_field(p, "Tgid") for p in due}
        # Processes first: a thread of an orphan process then finds its
        # group announced (or announced by the process's parked events).
        due.sort(key=lambda p: tgids[p] not in (p, None))
        for pid in due:
            statuses = self._parked.pop(pid, [])
            del self._parked_since[pid]
            last = statuses[-1] if statuses else 0
            if statuses and (os.WIFEXITED(last) or os.WIFSIGNALED(last)):
                continue  # dead: the guest kernel never knew it
            tgid = tgids[pid]
            if tgid is None:
                continue  # gone meanwhile
            if tgid != pid:
                parent = self._announced_in_group(tgid)
                kind = CloneKind.THREAD
            else:
                ppid = _proc_status_field(pid, "PPid")
                parent = ppid if ppid in self._known else None
                kind = CloneKind.FORK
            if parent is not None:
                self._parked[pid] = statuses
                self._announce(pid, tgid)
                return Cloned(Tid(parent), Tid(pid), kind)
            # Nobody in the guest to belong to (a thread takes its unknown
            # group with it); its death is not reported.
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            self._dropped.add(pid)
        return None

    # --- stops -------------------------------------------------------------

    def resume(self, tid: Tid, signo: int = 0, *, stop_at_exit: bool = False) -> None:
        """Restart a stopped thread (PTRACE_CONT, or PTRACE_SYSCALL for a
        syscall-exit-stop when ``stop_at_exit`` at a SyscallStop)."""
        kind = self._require_stop(tid, _ANY_STOP, "resume")
        if kind in (_AT_INTERRUPT, _AT_EVENT):
            signo = 0  # PTRACE_EVENT_* stops inject no signal (ptrace(2))
        elif stop_at_exit and kind == _AT_SYSCALL:
            self._at_exit.add(tid)
        # A syscall-exit-stop asked before (an interrupt, a signal) is
        # still due; otherwise the thread's resume mode.
        self._continue(tid, signo)

    def complete(self, tid: Tid, result: int) -> None:
        """Skip the trapped call, make it return ``result``, resume.

        seccomp(2), SECCOMP_RET_TRACE: "The tracer can skip the system call
        by changing the system call number to -1 ... the system call will
        appear to return the value that the tracer puts in the return value
        register."  Two PTRACE_POKEUSER writes cost the same two system
        calls as GETREGS+SETREGS and copy less."""
        self._require_stop(tid, (_AT_SYSCALL,), "complete")
        try:
            _ptrace(PTRACE_POKEUSER, tid, _OFF_ORIG_RAX, _U64 - 1)
            _ptrace(PTRACE_POKEUSER, tid, _OFF_RAX, result % _U64)
        except _PtraceError as exc:
            if exc.errno == _errno.ESRCH:
                self._stopped.pop(tid, None)
                return
            raise TracerError(f"complete {tid}: {exc}", exc.errno or 0) from None
        self._continue(tid)

    def rewrite(
        self, tid: Tid, nr: int, args: Sequence[int], *, stop_at_exit: bool = False
    ) -> None:
        """Run syscall ``nr`` with ``args`` instead of the trapped one.
        seccomp re-runs the filter after the stop with RET_TRACE meaning
        ALLOW (ptrace(2), "PTRACE_EVENT_SECCOMP stops (since Linux 4.8)")."""
        self._require_stop(tid, (_AT_SYSCALL,), "rewrite")
        names = _ARGS_I386 if self._arch.get(tid) is Arch.I386 else _ARGS_64
        try:
            regs = self._getregs(tid)
            # The kernel preserves every register but the result's
            # (syscall(2)), and compiled code relies on it: the guest's own
            # argument registers go back at the call's exit.
            saved = tuple(int(getattr(regs, name)) for name in names)
            regs.orig_rax = nr % _U64
            wrap = 1 << 32 if names is _ARGS_I386 else _U64
            for name, value in zip(names, args, strict=False):
                setattr(regs, name, value % wrap)
            _ptrace(PTRACE_SETREGS, tid, 0, self._regs_addr)
        except _PtraceError as exc:
            if exc.errno == _errno.ESRCH:
                self._stopped.pop(tid, None)
                return
            raise TracerError(f"rewrite {tid}: {exc}", exc.errno or 0) from None
        self._restore[tid] = (names, saved, stop_at_exit)
        self._at_exit.add(tid)
        self._restart(tid, PTRACE_SYSCALL)

    def set_result(self, tid: Tid, result: int) -> None:
        """At a SyscallExit: put ``result`` in the return register."""
        self._require_stop(tid, (_AT_EXIT,), "set_result")
        try:
            _ptrace(PTRACE_POKEUSER, tid, _OFF_RAX, result % _U64)
        except _PtraceError as exc:
            if exc.errno != _errno.ESRCH:
                raise TracerError(f"set_result {tid}: {exc}", exc.errno or 0) from None

    # --- registers and siginfo ---------------------------------------------

    def _at_stop(
        self, tid: Tid, request: int, addr: int, what: str, kinds: tuple[int, ...], size: int = 0
    ) -> None:
        self._require_stop(tid, kinds, what)
        try:
            _ptrace(request, tid, size, addr)
        except _PtraceError as exc:
            raise TracerError(f"{what} {tid}: {exc}", exc.errno or 0) from None

    def get_regs(self, tid: Tid) -> Regs:
        self._at_stop(tid, PTRACE_GETREGS, self._regs_addr, "get_regs", _ANY_STOP)
        return Regs._make(_REGS.unpack(ctypes.string_at(self._regs_addr, _REGS.size)))

    def set_regs(self, tid: Tid, regs: Regs) -> None:
        ctypes.memmove(self._regs_addr, _REGS.pack(*(v % _U64 for v in regs)), _REGS.size)
        self._at_stop(tid, PTRACE_SETREGS, self._regs_addr, "set_regs", _ANY_STOP)

    def get_siginfo(self, tid: Tid) -> SigInfo:
        self._at_stop(tid, PTRACE_GETSIGINFO, self._siginfo_addr, "get_siginfo", (_AT_SIGNAL,))
        return SigInfo.from_raw(self._siginfo.raw)

    def set_siginfo(self, tid: Tid, raw: bytes) -> None:
        if len(raw) != SIGINFO_SIZE:
            raise ValueError(f"a siginfo is {SIGINFO_SIZE} bytes, not {len(raw)}")
        ctypes.memmove(self._siginfo_addr, raw, SIGINFO_SIZE)
        self._at_stop(tid, PTRACE_SETSIGINFO, self._siginfo_addr, "set_siginfo", (_AT_SIGNAL,))

    def get_sigmask(self, tid: Tid) -> int:
        self._at_stop(tid, PTRACE_GETSIGMASK, self._sigmask_addr, "get_sigmask", _ANY_STOP, 8)
        return int(self._sigmask.value)

    def set_sigmask(self, tid: Tid, mask: int) -> None:
        self._sigmask.value = mask % _U64
        self._at_stop(tid, PTRACE_SETSIGMASK, self._sigmask_addr, "set_sigmask", _ANY_STOP, 8)

    def interrupt(self, tid: Tid) -> None:
        if tid not in self._known:
            raise TracerError(f"interrupt: thread {tid} is not traced", _errno.ESRCH)
        # Asked again even when an earlier request is marked: Linux ends
        # a pending interrupt at any trap of the thread (ptrace_stop), so
        # an earlier one may have been absorbed by another stop.
        try:
            _ptrace(PTRACE_INTERRUPT, tid, 0, 0)
        except _PtraceError as exc:
            raise TracerError(f"interrupt {tid}: {exc}", exc.errno or 0) from None
        self._interrupts.add(tid)

    def set_resume_mode(self, tid: Tid, mode: ResumeMode) -> None:
        if tid not in self._known:
            raise TracerError(f"set_resume_mode: thread {tid} is not traced", _errno.ESRCH)
        if mode is ResumeMode.CONT:
            self._modes.pop(tid, None)
        else:
            self._modes[tid] = ResumeMode(mode)

    def set_event_stops(self, tid: Tid, events: frozenset[int]) -> None:
        mask = 0
        for e in events:
            if not 1 <= e <= PTRACE_EVENT_EXIT:
                raise TracerError(f"set_event_stops: no event {e}", _errno.EINVAL)
            mask |= 1 << e
        options = SEIZE_OPTIONS
        if mask & (1 << PTRACE_EVENT_VFORK_DONE):
            options |= PTRACE_O_TRACEVFORKDONE
        if mask & (1 << PTRACE_EVENT_EXIT):
            options |= PTRACE_O_TRACEEXIT
        self._require_stop(tid, _ANY_STOP, "set_event_stops")
        try:
            _ptrace(PTRACE_SETOPTIONS, tid, 0, options)
        except _PtraceError as exc:
            raise TracerError(f"set_event_stops {tid}: {exc}", exc.errno or 0) from None
        if mask:
            self._held_events[tid] = mask
        else:
            self._held_events.pop(tid, None)

    def peek_user(self, tid: Tid, offset: int) -> int:
        self._require_stop(tid, _ANY_STOP, "peek_user")
        try:
            value = _ptrace(PTRACE_PEEKUSER, tid, offset, 0, check_errno=True)
        except _PtraceError as exc:
            raise TracerError(f"peek_user {tid}: {exc}", exc.errno or 0) from None
        return int(value) % _U64

    def poke_user(self, tid: Tid, offset: int, value: int) -> None:
        self._require_stop(tid, _ANY_STOP, "poke_user")
        try:
            _ptrace(PTRACE_POKEUSER, tid, offset, value % _U64)
        except _PtraceError as exc:
            raise TracerError(f"poke_user {tid}: {exc}", exc.errno or 0) from None

    def _regset(self, tid: Tid, request: int, kind: int, buf: Any, size: int, what: str) -> int:
        self._require_stop(tid, _ANY_STOP, what)
        iov = _IoVec(ctypes.addressof(buf), size)
        try:
            _ptrace(request, tid, kind, ctypes.addressof(iov))
        except _PtraceError as exc:
            raise TracerError(f"{what} {tid}: {exc}", exc.errno or 0) from None
        return int(iov.iov_len)

    def get_regset(self, tid: Tid, kind: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(max(size, 1))
        n = self._regset(tid, PTRACE_GETREGSET, kind, buf, size, "get_regset")
        return buf.raw[:n]

    def set_regset(self, tid: Tid, kind: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        self._regset(tid, PTRACE_SETREGSET, kind, buf, len(data), "set_regset")

    def get_syscall_info(self, tid: Tid) -> bytes:
        self._require_stop(tid, _ANY_STOP, "get_syscall_info")
        buf = ctypes.create_string_buffer(SYSCALL_INFO_SIZE)
        try:
            n = _ptrace(PTRACE_GET_SYSCALL_INFO, tid, SYSCALL_INFO_SIZE, ctypes.addressof(buf))
        except _PtraceError as exc:
            raise TracerError(f"get_syscall_info {tid}: {exc}", exc.errno or 0) from None
        return buf.raw[: min(int(n), SYSCALL_INFO_SIZE)]

    def listen(self, tid: Tid) -> None:
        self._require_stop(tid, (_AT_INTERRUPT,), "listen")
        self._stopped.pop(tid, None)
        try:
            _ptrace(PTRACE_LISTEN, tid, 0, 0)
        except _PtraceError as exc:
            raise TracerError(f"listen {tid}: {exc}", exc.errno or 0) from None
        self._listening.add(tid)

    def _ptrace_quiet(self, request: int, tid: int) -> None:
        with contextlib.suppress(_PtraceError):
            _ptrace(request, tid, 0, 0)

    # --- memory ------------------------------------------------------------

    @staticmethod
    def _remote_iovecs(addr: int, size: int) -> list[tuple[int, int]]:
        # One remote iovec per page: process_vm_readv(2) stops at the first
        # element that fails, so a partial transfer ends at a page boundary.
        out: list[tuple[int, int]] = []
        end = addr + size
        while addr < end:
            step = min(end, (addr // _PAGE + 1) * _PAGE) - addr
            out.append((addr, step))
            addr += step
        return out

    def _vm_transfer(self, fn: Any, tid: int, buf: Any, addr: int, size: int) -> int:
        """Bytes moved by process_vm_readv/writev from the start; raises
        TracerError only when nothing moved."""
        done = 0
        pieces = self._remote_iovecs(addr, size)
        for i in range(0, len(pieces), _IOV_MAX):
            chunk = pieces[i : i + _IOV_MAX]
            length = sum(n for _, n in chunk)
            local = _Iovec(ctypes.addressof(buf) + done, length)
            remote = (_Iovec * len(chunk))(*[_Iovec(a, n) for a, n in chunk])
            n = fn(tid, ctypes.byref(local), 1, remote, len(chunk), 0)
            if n < 0:
                err = ctypes.get_errno()
                if done:
                    return done
                if err == _errno.ESRCH:
                    raise TracerError(f"thread {tid} is gone", err)
                raise TracerError(f"guest memory at {addr:#x}: {os.strerror(err)}", _errno.EFAULT)
            done += n
            if n < length:
                break
        return done

    def read_memory(self, tid: Tid, addr: int, size: int) -> bytes:
        """Read guest memory; fewer bytes when the range runs into an
        unmapped page; TracerError(EFAULT) when nothing is readable."""
        if size <= 0:
            return b""
        buf = ctypes.create_string_buffer(size)
        n = self._vm_transfer(_vm_readv, tid, buf, addr, size)
        if n == 0:
            raise TracerError(f"guest memory at {addr:#x} unreadable", _errno.EFAULT)
        return buf.raw[:n]

    def write_memory(self, tid: Tid, addr: int, data: bytes, *, force: bool = False) -> None:
        """Write guest memory.  process_vm_writev(2) honours page
        protections; with ``force`` the rest goes through /proc/<tid>/mem,
        which writes read-only pages as a debugger does (proc(5),
        FOLL_FORCE)."""
        if not data:
            return
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        try:
            n = self._vm_transfer(_vm_writev, tid, buf, addr, len(data))
        except TracerError as exc:
            if exc.errno == _errno.ESRCH:
                raise
            n = 0
        if n == len(data):
            return
        if not force:
            raise TracerError(f"guest memory at {addr + n:#x} not writable", _errno.EFAULT)
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TracerError(f"/proc/{tid}/mem: {exc.strerror}", exc.errno or 0) from None
        try:
            view = memoryview(data)[n:]
            pos = addr + n
            while view:
                written = os.pwrite(fd, view, pos)
                if written <= 0:
                    raise OSError(_errno.EFAULT, "short write")
                view = view[written:]
                pos += written
        except OSError as exc:
            raise TracerError(
                f"guest memory at {addr:#x} not writable: {exc.strerror}", _errno.EFAULT
            ) from None
        finally:
            os.close(fd)

    def read_string(self, tid: Tid, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string of at most ``limit`` bytes (NUL excluded).
        Reads page by page so a string ending just before an unmapped page
        is still read."""
        out = bytearray()
        want = limit + 1  # room for the NUL after ``limit`` bytes
        pos = addr
        while len(out) < want:
            step = min(want - len(out), _PAGE - pos % _PAGE)
            data = self.read_memory(tid, pos, step)
            nul = data.find(b"\0")
            if nul >= 0:
                out += data[:nul]
                return bytes(out)
            out += data
            pos += len(data)
            if len(data) < step:
                raise TracerError(f"string at {addr:#x} runs into unmapped memory", _errno.EFAULT)
        raise TracerError(f"string at {addr:#x} longer than {limit}", _errno.ENAMETOOLONG)

    # --- misc --------------------------------------------------------------

    def kill(self, tid: Tid, signo: int) -> None:
        """tgkill(2) ``signo`` to ``tid``; a thread already gone is fine."""
        tgid = self._tgid.get(tid) or _proc_status_field(tid, "Tgid")
        if tgid is None:
            return
        if _syscall(SYS_TGKILL, ctypes.c_int(tgid), ctypes.c_int(tid), ctypes.c_int(signo)) != 0:
            err = ctypes.get_errno()
            if err != _errno.ESRCH:
                raise TracerError(f"tgkill({tgid}, {tid}, {signo}): {os.strerror(err)}", err)

    def tids(self) -> frozenset[Tid]:
        """Threads announced and not yet Exited."""
        return frozenset(Tid(t) for t in self._known)

    def _our_tracees(self) -> list[int]:
        """Processes whose tracer is this thread (TracerPid in
        /proc/<pid>/status is the tracer's thread id).  Catches children
        never announced, such as one created by a parent killed mid-fork."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _proc_status_field(int(entry), "TracerPid") == (
                self._owner_native
            ):
                found.append(int(entry))
        return found

    def close(self) -> None:
        """SIGKILL every tracee, reap them all, close pipes.  Idempotent."""
        if self._closed:
            return
        if threading.get_ident() != self._owner:
            raise TracerError("close from a thread other than the owner", _errno.EPERM)
        self._closed = True
        pending = set(self._known) | set(self._dropped)
        pending |= {p for p, st in self._parked.items() if st and os.WIFSTOPPED(st[-1])}
        for tid in pending:
            with contextlib.suppress(OSError):
                os.kill(tid, signal.SIGKILL)  # the whole thread group dies
        deadline = time.monotonic() + 5.0
        scanned = False
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, _WAIT_FLAGS)
            except ChildProcessError:
                pid, status = 0, 0
            if pid:
                if os.WIFSTOPPED(status):
                    # Something we did not know about yet (a child whose
                    # clone event was never seen): kill it as well.
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    pending.add(pid)
                else:
                    pending.discard(pid)
                continue
            if not pending:
                if scanned:
                    break
                scanned = True
                for extra in self._our_tracees():
                    with contextlib.suppress(OSError):
                        os.kill(extra, signal.SIGKILL)
                    pending.add(extra)
                continue
            scanned = False
            info = signal.sigtimedwait({signal.SIGCHLD}, 0.01)
            if info is not None:
                _forward_sigchld(info, self._owner_native)
        if self._registered:
            _threads().remove(self._owner_native)
        for fd in self._errpipes.values():
            os.close(fd)
        self._errpipes.clear()
        self._known.clear()
        self._tgid.clear()
        self._stopped.clear()
        self._arch.clear()
        self._at_exit.clear()
        self._listening.clear()
        self._parked.clear()
        self._parked_since.clear()
        self._dropped.clear()
        self._ready.clear()

    def __enter__(self) -> PythonTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
