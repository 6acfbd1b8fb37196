"""The C tracer backend (the default): a thin layer over c_tracer/.

Everything ptrace is done in C (c_tracer/tracer.c, c_tracer/mem.c, bound
through cffi in API mode as ``umld.tracer._c_tracer``): spawning, the wait
loop, every stop the core never sees (initial stops of new children,
PTRACE_LISTEN of group-stops, the restarts after fork/clone/exec events),
parking of events that arrive before the Cloned announcing their thread.
This module only turns ``struct umld_event`` into the dataclasses of
:mod:`umld.tracer.events` and C error codes into TracerError.

It is the hot path (one ``wait`` and one ``complete``/``resume`` per trapped
syscall), so the per-call work is kept to a few attribute reads: bound C
functions, one preallocated event record, no per-call allocation besides
the event object itself.  cffi drops the GIL around every C call, so a
``wait`` sleeping in sigtimedwait(2) does not hold it.

The extension is built by the package build (setup.py: ``pip install .``,
or ``make install`` in a checkout).
"""

from __future__ import annotations

import errno as _errno
import math
import os
import signal
import struct
import time
from collections.abc import Sequence
from typing import Any

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

try:
    from umld.tracer._c_tracer import ffi as _ffi_mod, lib as _lib_mod
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        f"the C tracer is not built ({exc}); install umld (pip install ., or make install)"
    ) from exc

# The cffi boundary: untyped by nature.
_ffi: Any = _ffi_mod
_lib: Any = _lib_mod

_EV_SYSCALL: int = _lib.UMLD_EV_SYSCALL
_EV_SYSEXIT: int = _lib.UMLD_EV_SYSEXIT
_EV_SIGNAL: int = _lib.UMLD_EV_SIGNAL
_EV_CLONED: int = _lib.UMLD_EV_CLONED
_EV_EXECED: int = _lib.UMLD_EV_EXECED
_EV_EXITED: int = _lib.UMLD_EV_EXITED
_EV_GROUPSTOP: int = _lib.UMLD_EV_GROUPSTOP
_EV_CONTINUED: int = _lib.UMLD_EV_CONTINUED
_EV_HOSTSIG: int = _lib.UMLD_EV_HOSTSIG
_EV_WAKEUP: int = _lib.UMLD_EV_WAKEUP
_EV_INTERRUPTED: int = _lib.UMLD_EV_INTERRUPTED
_EV_SYSENTRY: int = _lib.UMLD_EV_SYSENTRY
_EV_EVENTSTOP: int = _lib.UMLD_EV_EVENTSTOP
_NOT_OWNER: int = -_lib.UMLD_ERR_NOT_OWNER

# struct umld_event read in one go (one struct.unpack beats a dozen cdata
# attribute reads): kind tid arch signo child clone_kind status spawn_stage
# spawn_errno, padding, nr result, args[6].
_EVENT = struct.Struct("=9i4xqq6Q")
if (
    _EVENT.size != _ffi.sizeof("struct umld_event")
    or _ffi.offsetof("struct umld_event", "args") != _EVENT.size - 48
):  # pragma: no cover - a header change without this
    raise ImportError("umld.tracer._c_tracer: struct umld_event layout changed")
_F_TID, _F_ARCH, _F_SIGNO, _F_CHILD, _F_CLONE, _F_STATUS, _F_STAGE, _F_ERRNO = range(1, 9)
_F_NR, _F_RESULT = 9, 10

_ARCHES = (Arch.X86_64, Arch.I386, Arch.X32)
# Events are named tuples; tuple.__new__ with all fields is what
# namedtuple's _make does, without the Python-level __new__ frame.
_tuple_new = tuple.__new__
_CLONE_KINDS = (CloneKind.FORK, CloneKind.VFORK, CloneKind.THREAD, CloneKind.PROCESS)
_STAGES = ("", "setup", "seccomp", "exec")
_U64 = 1 << 64
#: struct ptrace_syscall_info (linux/ptrace.h) as of Linux 6.x: 88 bytes.
_SYSCALL_INFO_SIZE = 88
_S64_MAX = (1 << 63) - 1
_INT_MAX = (1 << 31) - 1
_EINTR = -_errno.EINTR
_ESRCH = -_errno.ESRCH
_WAKEUP = Wakeup()
if _lib.UMLD_NREGS != NREGS or _lib.UMLD_SIGINFO_SIZE != SIGINFO_SIZE:  # pragma: no cover
    raise ImportError("umld.tracer._c_tracer: register or siginfo size changed")
_REGS = struct.Struct(f"={NREGS}Q")


class TracerThreads:
    """The process's list of tracer threads (c_tracer/tracer.c,
    ``umld_threads_*``), among which kernel-sent SIGCHLDs are passed on:
    C tracers are in it by themselves; the Python backend adds its
    tracers' threads, so that the two backends forward to each other."""

    def add(self, tid: int) -> bool:
        return bool(_lib.umld_threads_add(tid) == 0)

    def remove(self, tid: int) -> None:
        _lib.umld_threads_remove(tid)

    def forward(self, from_tid: int) -> None:
        _lib.umld_threads_forward(from_tid)


TRACER_THREADS = TracerThreads()


def _cstrings(items: Sequence[bytes | str], keep: list[Any]) -> Any:
    """A NULL-terminated char *[] of ``items``; ``keep`` holds the buffers."""
    bufs = [_ffi.new("char[]", os.fsencode(s)) for s in items]
    keep.extend(bufs)
    arr = _ffi.new("char *[]", [*bufs, _ffi.NULL])
    keep.append(arr)
    return arr


class CTracer:
    """The C tracer.  See :class:`umld.tracer.platform.TracerPlatform`.

    Every method but ``wake`` must be called from the thread that created
    the object (ptrace(2): requests come from the attached thread); that
    thread gets SIGCHLD blocked here, and ``set_host_signals`` blocks the
    host signals in it (every other thread of umld must block them too)."""

    name = "c"

    def __init__(self, *, orphan_delay: float = ORPHAN_DELAY) -> None:
        if not 0 <= orphan_delay <= _INT_MAX / 1000:
            raise ValueError(f"orphan_delay must be between 0 and {_INT_MAX // 1000} s")
        # sigtimedwait(2) only sees a blocked signal: an unblocked SIGCHLD
        # (default action: ignore) would be discarded, not queued.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        t = _lib.umld_tracer_new()
        if t == _ffi.NULL:
            err = _ffi.errno or _errno.ENOMEM
            raise TracerError(f"cannot create the C tracer: {os.strerror(err)}", err)
        self._t: Any = t
        self._closed = False
        self.orphan_delay = orphan_delay
        _lib.umld_set_orphan_delay(t, math.ceil(orphan_delay * 1000))
        self._tids: set[int] = set()
        self._ev: Any = _ffi.new("struct umld_event *")
        self._evbuf: Any = _ffi.buffer(self._ev)
        self._unpack_event = _EVENT.unpack_from
        self._out: Any = _ffi.new("const char **")
        self._args: Any = _ffi.new("uint64_t[6]")
        self._regs: Any = _ffi.new(f"uint64_t[{NREGS}]")
        self._regsbuf: Any = _ffi.buffer(self._regs)
        self._siginfo: Any = _ffi.new(f"unsigned char[{SIGINFO_SIZE}]")
        self._sigmask: Any = _ffi.new("uint64_t[1]")
        self._word: Any = _ffi.new("uint64_t[1]")
        # Bound once: attribute lookups on the cffi lib are not free.
        self._c_wait = _lib.umld_wait
        self._c_resume = _lib.umld_resume
        self._c_complete = _lib.umld_complete
        self._c_rewrite = _lib.umld_rewrite
        self._c_set_result = _lib.umld_set_result
        self._c_read = _lib.umld_read_mem
        self._c_write = _lib.umld_write_mem
        self._c_read_string = _lib.umld_read_string
        self._c_kill = _lib.umld_kill
        self._c_wake = _lib.umld_wake
        self._unpack = _ffi.unpack

    # --- errors ------------------------------------------------------------

    def _error(self, rc: int, what: str) -> TracerError:
        if rc == _NOT_OWNER:
            return TracerError(
                f"{what}: tracer used from a thread other than its owner", _errno.EPERM
            )
        err = -rc
        if err == _errno.EBADF and self._closed:
            return TracerError(f"{what}: tracer is closed", err)
        if err == _errno.EDEADLK:
            return TracerError(
                f"{what}: SIGCHLD and the host signals must be blocked in the tracer "
                "thread (signal.pthread_sigmask) for sigtimedwait(2) to see them",
                err,
            )
        if err == _errno.ENOTSUP:
            return TracerError(
                f"{what}: SIGCHLD is ignored or has SA_NOCLDSTOP, so ptrace stops "
                "send no SIGCHLD; restore its default disposition",
                err,
            )
        return TracerError(f"{what}: {os.strerror(err)}", err)

    def _answer_failed(self, rc: int, tid: int, what: str) -> None:
        # ESRCH for a thread the core still knows (its Exited is on the way)
        # is not an error: it was killed in its stop (ptrace(2), "Death
        # under ptrace").
        if rc == _ESRCH and tid in self._tids:
            return
        if rc == _ESRCH:
            raise TracerError(f"{what}: thread {tid} is not traced", _errno.ESRCH)
        if rc == -_errno.EINVAL:
            raise TracerError(f"{what}: thread {tid} is not in a suitable stop", _errno.EINVAL)
        raise self._error(rc, f"{what} {tid}")

    # --- spawn and signals -------------------------------------------------

    def spawn(self, spec: SpawnSpec) -> Tid:
        """Fork, PTRACE_SEIZE, release the child into setup + exec (in C)."""
        keep: list[Any] = []
        argv = _cstrings(spec.argv, keep)
        envp = _ffi.NULL if spec.env is None else _cstrings(spec.env, keep)
        cwd = _ffi.NULL if spec.cwd is None else _ffi.new("char[]", os.fsencode(spec.cwd))
        flt = bytes(spec.seccomp_filter)
        reset = [int(s) for s in spec.reset_signals]
        mask = 0
        for s in spec.sigmask:
            mask |= 1 << (int(s) - 1)
        flags = (
            (_lib.UMLD_SPAWN_NEW_PGRP if spec.new_process_group else 0)
            | (_lib.UMLD_SPAWN_SUBREAPER if spec.subreaper else 0)
            | (_lib.UMLD_SPAWN_NEW_SESSION if spec.new_session else 0)
        )
        tty = -1 if spec.foreground_tty is None else int(spec.foreground_tty)
        out = _ffi.new("int *")
        rc = _lib.umld_spawn(
            self._t,
            os.fsencode(spec.path),
            argv,
            envp,
            cwd,
            _ffi.from_buffer(flt) if flt else _ffi.NULL,
            len(flt),
            flags,
            tty,
            _ffi.new("int[]", reset) if reset else _ffi.NULL,
            len(reset),
            mask,
            out,
        )
        if rc in (-_errno.EPERM, -_errno.EACCES, -_errno.ENOSYS):
            raise TracerUnavailable(ptrace_refused_reason(-rc), -rc)
        if rc < 0:
            raise self._error(rc, f"spawn {spec.path!r}")
        pid: int = out[0]
        self._tids.add(pid)
        return Tid(pid)

    def set_host_signals(self, signals: Sequence[int]) -> None:
        """Signals ``wait`` reports as HostSignal; blocked here in the
        calling (owner) thread too."""
        sigs = [int(s) for s in signals]
        if sigs:
            signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        rc = _lib.umld_set_host_signals(
            self._t, _ffi.new("int[]", sigs) if sigs else _ffi.NULL, len(sigs)
        )
        if rc < 0:
            raise self._error(rc, "set_host_signals")

    # --- wait --------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Event | None:
        """Next event; None when ``timeout`` seconds pass without one."""
        ev = self._ev
        buf = self._evbuf
        if timeout is None:
            ms = -1
            deadline = 0.0
        elif timeout <= 0:
            ms = 0
            deadline = 0.0
        else:
            ms = min(math.ceil(timeout * 1000), _INT_MAX)
            deadline = time.monotonic() + timeout
        while True:
            k = self._c_wait(self._t, ev, ms)
            if k == _EV_SYSCALL:
                f = self._unpack_event(buf)
                stop: SyscallStop = _tuple_new(SyscallStop, (f[1], f[9], f[11:17], _ARCHES[f[2]]))
                return stop
            if k > 0:
                return self._convert(k, self._unpack_event(buf))
            if k == 0:
                return None
            if k != _EINTR:
                raise self._error(k, "wait")
            # A signal handler ran in this thread (it returns to Python
            # here and may raise, e.g. KeyboardInterrupt); go on.
            if ms > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    ms = 0
                else:
                    ms = min(math.ceil(left * 1000), _INT_MAX)

    def _convert(self, k: int, f: tuple[Any, ...]) -> Event:
        tid = f[_F_TID]
        if k == _EV_SYSEXIT:
            return SyscallExit(tid, f[_F_NR], f[_F_RESULT])
        if k == _EV_SIGNAL:
            return SignalStop(tid, f[_F_SIGNO])
        if k == _EV_CLONED:
            child = f[_F_CHILD]
            self._tids.add(child)
            return Cloned(tid, child, _CLONE_KINDS[f[_F_CLONE]])
        if k == _EV_EXITED:
            self._tids.discard(tid)
            stage = f[_F_STAGE]
            err: tuple[str, int] | None = (_STAGES[stage], f[_F_ERRNO]) if stage else None
            return Exited(tid, f[_F_STATUS], err)
        if k == _EV_EXECED:
            former = f[_F_CHILD]
            if former != tid:
                self._tids.discard(former)
            return Execed(tid, former)
        if k == _EV_GROUPSTOP:
            return GroupStopped(tid, f[_F_SIGNO])
        if k == _EV_CONTINUED:
            return Continued(tid)
        if k == _EV_HOSTSIG:
            return HostSignal(f[_F_SIGNO])
        if k == _EV_WAKEUP:
            return _WAKEUP
        if k == _EV_INTERRUPTED:
            return Interrupted(tid, f[_F_SIGNO])
        if k == _EV_SYSENTRY:
            return SyscallEntry(tid, f[_F_NR], f[11:17], _ARCHES[f[_F_ARCH]])
        if k == _EV_EVENTSTOP:
            return EventStop(tid, f[_F_SIGNO], f[_F_RESULT] % _U64)
        raise TracerError(f"wait: unknown event kind {k}", _errno.EPROTO)

    def wake(self) -> None:
        """Make the owner's current or next ``wait`` return Wakeup.  Any
        thread: sets a flag, then a thread-directed SIGCHLD ends the sleep."""
        if self._closed:
            return
        self._c_wake(self._t)

    # --- answers to stops --------------------------------------------------

    def resume(self, tid: Tid, signo: int = 0, *, stop_at_exit: bool = False) -> None:
        rc = self._c_resume(self._t, tid, signo, stop_at_exit)
        if rc:
            self._answer_failed(rc, tid, "resume")

    def complete(self, tid: Tid, result: int) -> None:
        if result > _S64_MAX:
            result -= _U64
        rc = self._c_complete(self._t, tid, result)
        if rc:
            self._answer_failed(rc, tid, "complete")

    def rewrite(
        self, tid: Tid, nr: int, args: Sequence[int], *, stop_at_exit: bool = False
    ) -> None:
        n = min(len(args), 6)
        a = self._args
        for i in range(n):
            a[i] = args[i] % _U64
        if nr > _S64_MAX:
            nr -= _U64
        rc = self._c_rewrite(self._t, tid, nr, a, n, stop_at_exit)
        if rc:
            self._answer_failed(rc, tid, "rewrite")

    def set_result(self, tid: Tid, result: int) -> None:
        if result > _S64_MAX:
            result -= _U64
        rc = self._c_set_result(self._t, tid, result)
        if rc:
            self._answer_failed(rc, tid, "set_result")

    # --- registers and siginfo ---------------------------------------------

    def get_regs(self, tid: Tid) -> Regs:
        rc = _lib.umld_get_regs(self._t, tid, self._regs)
        if rc:
            self._stop_failed(rc, tid, "get_regs")
        return Regs._make(_REGS.unpack(self._regsbuf))

    def set_regs(self, tid: Tid, regs: Regs) -> None:
        self._regsbuf[:] = _REGS.pack(*(v % _U64 for v in regs))
        rc = _lib.umld_set_regs(self._t, tid, self._regs)
        if rc:
            self._stop_failed(rc, tid, "set_regs")

    def get_siginfo(self, tid: Tid) -> SigInfo:
        rc = _lib.umld_get_siginfo(self._t, tid, self._siginfo)
        if rc:
            self._stop_failed(rc, tid, "get_siginfo")
        return SigInfo.from_raw(_ffi.buffer(self._siginfo)[:])

    def set_siginfo(self, tid: Tid, raw: bytes) -> None:
        if len(raw) != SIGINFO_SIZE:
            raise ValueError(f"a siginfo is {SIGINFO_SIZE} bytes, not {len(raw)}")
        _ffi.buffer(self._siginfo)[:] = raw
        rc = _lib.umld_set_siginfo(self._t, tid, self._siginfo)
        if rc:
            self._stop_failed(rc, tid, "set_siginfo")

    def get_sigmask(self, tid: Tid) -> int:
        rc = _lib.umld_get_sigmask(self._t, tid, self._sigmask)
        if rc:
            self._stop_failed(rc, tid, "get_sigmask")
        return int(self._sigmask[0])

    def set_sigmask(self, tid: Tid, mask: int) -> None:
        rc = _lib.umld_set_sigmask(self._t, tid, mask % _U64)
        if rc:
            self._stop_failed(rc, tid, "set_sigmask")

    def listen(self, tid: Tid) -> None:
        rc = _lib.umld_listen(self._t, tid)
        if rc:
            self._stop_failed(rc, tid, "listen")

    def interrupt(self, tid: Tid) -> None:
        rc = _lib.umld_interrupt(self._t, tid)
        if rc:
            raise self._error(rc, f"interrupt {tid}")

    def set_resume_mode(self, tid: Tid, mode: ResumeMode) -> None:
        rc = _lib.umld_set_resume_mode(self._t, tid, int(mode))
        if rc:
            raise self._error(rc, f"set_resume_mode {tid}")

    def set_event_stops(self, tid: Tid, events: frozenset[int]) -> None:
        mask = 0
        for e in events:
            mask |= 1 << e
        rc = _lib.umld_set_event_stops(self._t, tid, mask)
        if rc:
            self._stop_failed(rc, tid, "set_event_stops")

    def peek_user(self, tid: Tid, offset: int) -> int:
        rc = _lib.umld_peek_user(self._t, tid, offset, self._word)
        if rc:
            self._stop_failed(rc, tid, "peek_user")
        return int(self._word[0])

    def poke_user(self, tid: Tid, offset: int, value: int) -> None:
        rc = _lib.umld_poke_user(self._t, tid, offset, value % _U64)
        if rc:
            self._stop_failed(rc, tid, "poke_user")

    def get_regset(self, tid: Tid, kind: int, size: int) -> bytes:
        buf = _ffi.new("unsigned char[]", max(size, 1))
        n = _lib.umld_get_regset(self._t, tid, kind, buf, size)
        if n < 0:
            self._stop_failed(n, tid, "get_regset")
        return bytes(_ffi.buffer(buf, n))

    def set_regset(self, tid: Tid, kind: int, data: bytes) -> None:
        rc = _lib.umld_set_regset(self._t, tid, kind, data, len(data))
        if rc:
            self._stop_failed(rc, tid, "set_regset")

    def get_syscall_info(self, tid: Tid) -> bytes:
        buf = _ffi.new("unsigned char[]", _SYSCALL_INFO_SIZE)
        n = _lib.umld_get_syscall_info(self._t, tid, buf, _SYSCALL_INFO_SIZE)
        if n < 0:
            self._stop_failed(n, tid, "get_syscall_info")
        return bytes(_ffi.buffer(buf, min(n, _SYSCALL_INFO_SIZE)))

    def _stop_failed(self, rc: int, tid: int, what: str) -> None:
        """Unlike an answer, a read or write at a stop has no result to
        give when the thread vanished: ESRCH is always raised."""
        if rc == _ESRCH:
            raise TracerError(f"{what}: thread {tid} is gone", _errno.ESRCH)
        self._answer_failed(rc, tid, what)

    # --- memory ------------------------------------------------------------

    def _mem_error(self, rc: int, tid: int, addr: int, what: str) -> TracerError:
        if rc == _ESRCH:
            return TracerError(f"{what}: thread {tid} is gone", _errno.ESRCH)
        if rc == -_errno.ENAMETOOLONG:
            return TracerError(f"{what} at {addr:#x}: no NUL within the limit", -rc)
        if rc in (-_errno.EFAULT, -_errno.EIO, -_errno.EPERM):
            return TracerError(
                f"{what}: guest memory at {addr:#x} is not accessible", _errno.EFAULT
            )
        return self._error(rc, what)

    def read_memory(self, tid: Tid, addr: int, size: int) -> bytes:
        if size <= 0:
            return b""
        out = self._out
        n = self._c_read(self._t, tid, addr % _U64, size, out)
        if n < 0:
            raise self._mem_error(n, tid, addr, "read_memory")
        data: bytes = self._unpack(out[0], n)
        return data

    def write_memory(self, tid: Tid, addr: int, data: bytes, *, force: bool = False) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        rc = self._c_write(self._t, tid, addr % _U64, data, len(data), int(force))
        if rc < 0:
            raise self._mem_error(rc, tid, addr, "write_memory")

    def read_string(self, tid: Tid, addr: int, limit: int = 4096) -> bytes:
        out = self._out
        n = self._c_read_string(self._t, tid, addr % _U64, max(limit, 0), out)
        if n < 0:
            raise self._mem_error(n, tid, addr, "read_string")
        data: bytes = self._unpack(out[0], n)
        return data

    # --- misc --------------------------------------------------------------

    def kill(self, tid: Tid, signo: int) -> None:
        rc = self._c_kill(self._t, tid, signo)
        if rc < 0:
            raise self._error(rc, f"kill {tid}")

    def tids(self) -> frozenset[Tid]:
        """Threads announced and not yet Exited (as delivered by ``wait``)."""
        return frozenset(Tid(t) for t in self._tids)

    def stats(self) -> dict[str, int]:
        """Counters of the C core (for benchmarks and tests)."""
        out = _ffi.new("uint64_t[5]")
        _lib.umld_stats(self._t, out)
        names = ("statuses", "events", "parked", "sleeps", "spurious")
        return {name: int(out[i]) for i, name in enumerate(names)}

    def close(self) -> None:
        """SIGKILL every tracee, reap them all, close fds.  Idempotent."""
        if self._closed:
            return
        rc = _lib.umld_close(self._t)
        if rc < 0:
            raise self._error(rc, "close")
        self._closed = True
        self._tids.clear()

    def __enter__(self) -> CTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        t = getattr(self, "_t", None)
        if t is None:
            return
        try:
            if not self._closed:
                # Kills and reaps when on the owner thread; elsewhere the C
                # side refuses, and EXITKILL ends the tracees when the owner
                # thread exits.
                _lib.umld_close(t)
            _lib.umld_tracer_free(t)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
        self._t = None


def host_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The host CPU's CPUID for ``leaf``/``subleaf``: eax, ebx, ecx, edx
    (umld_cpuid in c_tracer/mem.c).  Any thread."""
    out = _ffi.new("uint32_t[4]")
    _lib.umld_cpuid(leaf & 0xFFFFFFFF, subleaf & 0xFFFFFFFF, out)
    return (int(out[0]), int(out[1]), int(out[2]), int(out[3]))
