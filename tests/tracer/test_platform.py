"""The shared tracer-backend suite: every backend must pass all of it.

Real programs under real ptrace and seccomp; nothing is mocked.  Guests are
/bin programs, sh one-liners, and tests/guest/tracer_{calls,procs}.c (built
by the session fixture ``tracer_bin``).

Every event a test sees goes through :class:`Driver`, which checks the
ordering guarantee of umld.tracer.events on all of them: no event of a
thread before the Cloned announcing it, none after its Exited.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from umld.tracer import BACKENDS, SpawnSpec, TracerError, TracerPlatform
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
from umld.tracer.platform import NT_PRFPREG, NT_PRSTATUS, NT_X86_XSTATE, USER_DEBUGREG
from umld.tracer.seccomp import build_filter

from .conftest import traced_by

pytestmark = pytest.mark.uses_ptrace

NR_UNAME = 63
NR_GETPPID = 110
UNAME_FILTER = build_filter({NR_UNAME})
UTS_LEN = 65  # struct utsname: six char[65] fields (sys/utsname.h)


def spec(*argv: str | bytes | os.PathLike[str], **kw: object) -> SpawnSpec:
    args = [os.fsencode(a) for a in argv]
    return SpawnSpec(path=args[0], argv=args, **kw)  # type: ignore[arg-type]


def redirected(out: Path, *argv: str | os.PathLike[str]) -> list[str]:
    """argv running ``argv`` with stdout to ``out`` (sh execs it: same pid)."""
    return ["/bin/sh", "-c", f'exec "$@" > {out}', "sh", *map(str, argv)]


def proc_stat(pid: int) -> tuple[str, int]:
    """(state letter, utime+stime in clock ticks) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[11]) + int(fields[12])


Handler = Callable[[Event], bool]


class Driver:
    """Runs a tracer's event loop for a test and checks event ordering."""

    def __init__(self, tracer: TracerPlatform) -> None:
        self.t = tracer
        self.events: list[Event] = []
        self.known: set[int] = set()
        self.gone: set[int] = set()

    def spawn(self, s: SpawnSpec) -> Tid:
        pid = self.t.spawn(s)
        self.known.add(pid)
        assert pid in self.t.tids()
        return pid

    def next(self, timeout: float = 10.0) -> Event:
        ev = self.t.wait(timeout)
        assert ev is not None, f"no event within {timeout}s; so far {self.events[-8:]}"
        self._check(ev)
        self.events.append(ev)
        return ev

    def _check(self, ev: Event) -> None:
        if isinstance(ev, HostSignal | Wakeup):
            return
        assert ev.tid in self.known, f"event of unannounced/exited thread: {ev}"
        if isinstance(ev, Cloned):
            assert ev.child not in self.known, f"announced twice: {ev}"
            self.known.add(ev.child)
        elif isinstance(ev, Execed) and ev.former_tid != ev.tid:
            assert ev.former_tid in self.known, f"unknown former tid: {ev}"
            self.known.discard(ev.former_tid)
            self.gone.add(ev.former_tid)
        elif isinstance(ev, Exited):
            self.known.discard(ev.tid)
            self.gone.add(ev.tid)
        # tids(): exactly the threads announced and not yet Exited.
        assert self.t.tids() == self.known, (ev, self.t.tids() ^ self.known)

    def answer(self, ev: Event) -> None:
        """The default answer to a stop: let the call run, deliver the
        signal."""
        if isinstance(ev, SignalStop):
            self.t.resume(ev.tid, ev.signo)
        elif isinstance(ev, SyscallStop | SyscallEntry | SyscallExit | Interrupted | EventStop):
            self.t.resume(ev.tid)

    def run(self, root: int, on_event: Handler | None = None, timeout: float = 20.0) -> Exited:
        """Until ``root`` exits; ``on_event`` answers the stops it wants
        (returns True), the rest get the default answer."""
        end = time.monotonic() + timeout
        while True:
            ev = self.next(max(end - time.monotonic(), 0.1))
            if on_event is None or not on_event(ev):
                self.answer(ev)
            if isinstance(ev, Exited) and ev.tid == root:
                return ev

    def until(self, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """Answer events by default until one satisfies ``pred`` (that one
        is returned unanswered)."""
        end = time.monotonic() + timeout
        while True:
            ev = self.next(max(end - time.monotonic(), 0.1))
            if pred(ev):
                return ev
            self.answer(ev)

    def of(self, kind: type, tid: int | None = None) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind) and (tid is None or e.tid == tid)]


@pytest.fixture
def drv(tracer: TracerPlatform) -> Driver:
    return Driver(tracer)


# --- spawn, exec, exit --------------------------------------------------------


def test_true_execs_then_exits(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/true"))
    assert drv.next() == Execed(pid, pid)
    assert drv.next() == Exited(pid, 0)
    assert pid not in drv.t.tids()


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_codes(drv: Driver, code: int) -> None:
    pid = drv.spawn(spec("/bin/sh", "-c", f"exit {code}"))
    ex = drv.run(pid)
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == code
    assert ex.spawn_error is None


def test_death_by_signal_goes_through_signal_stop(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sh", "-c", "kill -TERM $$; sleep 5"))
    ex = drv.run(pid)
    assert SignalStop(pid, signal.SIGTERM) in drv.events
    assert os.WIFSIGNALED(ex.status) and os.WTERMSIG(ex.status) == signal.SIGTERM


def test_suppressed_signal_is_not_delivered(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sh", "-c", "kill -TERM $$; exit 4"))

    def suppress(ev: Event) -> bool:
        if isinstance(ev, SignalStop) and ev.signo == signal.SIGTERM:
            drv.t.resume(ev.tid, 0)
            return True
        return False

    ex = drv.run(pid, suppress)
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == 4


def test_sigkill_from_outside(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sleep", "10"))
    assert drv.next() == Execed(pid, pid)
    os.kill(pid, signal.SIGKILL)
    ex = drv.run(pid, timeout=5)
    assert os.WIFSIGNALED(ex.status) and os.WTERMSIG(ex.status) == signal.SIGKILL


def _procinfo(drv: Driver, tracer_bin: Path, out: Path, **kw: object) -> dict[str, str]:
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "-o", out, "procinfo", **kw))
    assert drv.run(pid).status == 0
    return dict(f.split("=", 1) for f in out.read_text().split())


def _bit(*sigs: int) -> int:
    return sum(1 << (s - 1) for s in sigs)


def test_spawn_defaults(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """umld's environment is inherited; the guest leads a new process
    group; SIGPIPE and SIGXFSZ (ignored by Python) are back to SIG_DFL."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's doing
    os.environ["UMLD_TEST_VAR"] = "inherited"
    try:
        info = _procinfo(drv, tracer_bin, tmp_path / "out")
    finally:
        del os.environ["UMLD_TEST_VAR"]
    assert info["leader"] == "1" and info["var"] == "inherited"
    assert info["session"] == "0"  # the caller's session
    assert int(info["sigign"], 16) & _bit(signal.SIGPIPE, signal.SIGXFSZ) == 0
    assert int(info["sigblk"], 16) == 0


def test_spawn_applies_its_spec(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    info = _procinfo(
        drv,
        tracer_bin,
        tmp_path / "out",
        env=[b"UMLD_TEST_VAR=given"],
        cwd=os.fsencode(tmp_path),
        new_process_group=False,
        reset_signals=(),
        sigmask=frozenset({signal.SIGUSR2, signal.SIGTERM}),
    )
    assert info == {
        "cwd": str(tmp_path),
        "leader": "0",  # stayed in our group
        "session": "0",
        "sigblk": f"{_bit(signal.SIGUSR2, signal.SIGTERM):x}",
        # Nothing reset: Python's ignored signals stay ignored over exec.
        "sigign": info["sigign"],
        "var": "given",
    }
    assert int(info["sigign"], 16) & _bit(signal.SIGPIPE) != 0


def test_spawn_in_a_new_session(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """new_session: the child leads a session (and so a process group) of
    its own, away from the caller's terminal; a terminal to hand it makes
    no sense, and is refused."""
    info = _procinfo(drv, tracer_bin, tmp_path / "out", new_session=True)
    assert (info["leader"], info["session"]) == ("1", "1")
    with pytest.raises(TracerError) as err:
        drv.t.spawn(spec("/bin/true", new_session=True, foreground_tty=0))
    assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize("subreaper", [True, False])
def test_subreaper(drv: Driver, subreaper: bool, tmp_path: Path) -> None:
    """Orphans of the guest re-parent to the spawned process when it is a
    subreaper (prctl(2), PR_SET_CHILD_SUBREAPER), not otherwise."""
    pidfile = tmp_path / "pid"
    pid = drv.spawn(
        spec(
            "/bin/sh",
            "-c",
            f'sh -c "sleep 5 & echo \\$! > {pidfile}"; sleep 5',
            subreaper=subreaper,
        )
    )
    inner = drv.until(lambda e: isinstance(e, Cloned) and e.tid == pid)
    assert isinstance(inner, Cloned)
    drv.until(lambda e: isinstance(e, Exited) and e.tid == inner.child)
    with open(f"/proc/{int(pidfile.read_text())}/status") as f:
        ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
    assert (ppid == pid) is subreaper
    drv.t.kill(pid, signal.SIGKILL)


FOREGROUND_PROBE = """
import fcntl, os, signal, sys, termios
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
os.setsid()
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # our controlling terminal
from umld.tracer import open_tracer, SpawnSpec
from umld.tracer.events import Execed, Exited, SignalStop
t = open_tracer(sys.argv[1])
pid = t.spawn(SpawnSpec(b"/bin/sleep", [b"sleep", b"5"], foreground_tty=slave))
while True:
    ev = t.wait(10)
    if isinstance(ev, Execed):
        print("foreground", os.tcgetpgrp(slave) == pid, os.getpgid(pid) == pid)
        t.kill(pid, signal.SIGKILL)
    elif isinstance(ev, SignalStop):
        t.resume(ev.tid, ev.signo)
    elif ev is None or isinstance(ev, Exited):
        break
t.close()
"""


def test_foreground_tty(backend: str) -> None:
    """The guest's new group becomes the terminal's foreground group, set
    from the background with SIGTTOU blocked (else the child would stop).
    Runs in a child interpreter that owns a pty as controlling terminal."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", FOREGROUND_PROBE, backend],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "foreground True True\n"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ("exec", errno.ENOENT)),
        ("not-executable", ("exec", errno.EACCES)),
        ("bad-filter", ("seccomp", errno.EINVAL)),
        ("bad-cwd", ("setup", errno.ENOENT)),
    ],
)
def test_spawn_errors(drv: Driver, tmp_path: Path, case: str, expected: tuple[str, int]) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    kw: dict[str, object] = {}
    path: str | Path = "/bin/true"
    if case == "missing":
        path = tmp_path / "no-such-file"
    elif case == "not-executable":
        path = plain
    elif case == "bad-filter":
        # One BPF_LD instruction and no BPF_RET: the kernel refuses it.
        kw["seccomp_filter"] = struct.pack("=HBBI", 0x20, 0, 0, 0)
    else:
        kw["cwd"] = os.fsencode(tmp_path / "no-such-dir")
    pid = drv.spawn(spec(path, **kw))
    ev = drv.next()
    assert isinstance(ev, Exited) and ev.tid == pid, ev
    assert ev.spawn_error == expected
    assert os.WIFEXITED(ev.status) and os.WEXITSTATUS(ev.status) == 127


# --- trapped system calls -----------------------------------------------------


def test_trapped_call_stops_with_its_arguments(
    drv: Driver, tracer_bin: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "rawargs"), seccomp_filter=UNAME_FILTER)
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    assert isinstance(stop, SyscallStop)
    assert (stop.tid, stop.nr, stop.arch) == (pid, NR_UNAME, Arch.X86_64)
    assert stop.args[0] != 0
    assert stop.args[1:] == (0x1111, 0x2222, 0x3333, 0x4444, 0x5555)
    drv.t.complete(stop.tid, 42)
    drv.run(pid)
    assert out.read_text() == "rawargs=42\n"


def test_complete_with_errno(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "uname:1"), seccomp_filter=UNAME_FILTER)
    )

    def deny(ev: Event) -> bool:
        if isinstance(ev, SyscallStop):
            drv.t.complete(ev.tid, -errno.EPERM)
            return True
        return False

    drv.run(pid, deny)
    assert out.read_text() == f"uname=-1 errno={errno.EPERM} node=\n"


def test_complete_after_writing_a_fake_utsname(drv: Driver, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(spec(*redirected(out, "/bin/uname", "-n"), seccomp_filter=UNAME_FILTER))
    fields = [b"Linux", b"umld-fake", b"6.0.0-umld", b"#1", b"x86_64", b"(none)"]
    fake = b"".join(f.ljust(UTS_LEN, b"\0") for f in fields)
    stops = []

    def fake_uname(ev: Event) -> bool:
        if isinstance(ev, SyscallStop) and ev.nr == NR_UNAME:
            stops.append(ev)
            drv.t.write_memory(ev.tid, ev.args[0], fake)
            drv.t.complete(ev.tid, 0)
            return True
        return False

    ex = drv.run(pid, fake_uname)
    assert stops and ex.status == 0
    assert out.read_text() == "umld-fake\n"


def test_untrapped_calls_do_not_stop(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(
        spec(tracer_bin / "tracer_calls", "getppid:20000", "uname:1", seccomp_filter=UNAME_FILTER)
    )
    ex = drv.run(pid)
    assert ex.status == 0
    stops = drv.of(SyscallStop)
    assert [(s.tid, s.nr) for s in stops] == [(pid, NR_UNAME)]  # type: ignore[attr-defined]


def test_no_filter_means_no_syscall_stops(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "getppid:100", "uname:3"))
    assert drv.run(pid).status == 0
    assert not drv.of(SyscallStop)


def test_stop_at_exit_reports_the_native_result(
    drv: Driver, tracer_bin: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "uname:1"), seccomp_filter=UNAME_FILTER)
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.resume(stop.tid, stop_at_exit=True)
    ex = drv.next()
    assert ex == SyscallExit(pid, NR_UNAME, 0)
    drv.t.resume(pid)
    drv.run(pid)
    assert out.read_text() == f"uname=0 errno=0 node={os.uname().nodename}\n"


def test_set_result_at_exit(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "uname:1"), seccomp_filter=UNAME_FILTER)
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.resume(stop.tid, stop_at_exit=True)
    assert drv.next() == SyscallExit(pid, NR_UNAME, 0)
    drv.t.set_result(pid, -errno.EIO)
    drv.t.resume(pid)
    drv.run(pid)
    assert out.read_text().startswith(f"uname=-1 errno={errno.EIO} ")


def test_rewrite_runs_another_call(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "uname:1"), seccomp_filter=UNAME_FILTER)
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.rewrite(stop.tid, NR_GETPPID, [], stop_at_exit=True)
    # The rewritten call ran natively (trapped numbers are not re-trapped).
    assert drv.next() == SyscallExit(pid, NR_GETPPID, os.getpid())
    drv.t.resume(pid)
    drv.run(pid)
    assert out.read_text().startswith(f"uname={os.getpid()} errno=0 ")


@pytest.mark.parametrize(
    "mode, nrs, event",
    [
        ("fork", {56}, Cloned),  # glibc fork(): clone(SIGCHLD)
        ("threads", {435}, Cloned),  # pthread_create: clone3
        ("exec", {59}, Execed),
    ],
)
def test_stop_at_exit_survives_process_events(
    drv: Driver, tracer_bin: Path, mode: str, nrs: set[int], event: type
) -> None:
    """A call resumed with stop_at_exit that creates a thread or execs still
    stops at its exit, after the Cloned/Execed event (the backend resumes
    the event stop itself and must keep the syscall-exit-stop)."""
    if mode == "exec":
        argv: list[str | Path] = ["/bin/sh", "-c", f"exec {tracer_bin / 'tracer_calls'}"]
    else:
        argv = [tracer_bin / "tracer_procs", mode, "1"]
    pid = drv.spawn(spec(*argv, seccomp_filter=build_filter(nrs)))
    stop = drv.until(lambda e: isinstance(e, SyscallStop) and e.tid == pid)
    assert isinstance(stop, SyscallStop) and stop.nr in nrs
    drv.t.resume(pid, stop_at_exit=True)
    ev = drv.until(lambda e: isinstance(e, event) and e.tid == pid)
    drv.answer(ev)
    ex = drv.until(lambda e: isinstance(e, SyscallExit) and e.tid == pid)
    assert isinstance(ex, SyscallExit) and ex.nr == stop.nr
    if isinstance(ev, Cloned):
        assert ex.result == ev.child  # clone returns the child's id
    else:
        assert ex.result == 0
    drv.t.resume(pid)
    assert drv.run(pid).status == 0


def test_rewrite_arguments(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """uname(NULL) -> EFAULT: the rewritten first argument reached the kernel."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(*redirected(out, tracer_bin / "tracer_calls", "uname:1"), seccomp_filter=UNAME_FILTER)
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.rewrite(stop.tid, NR_UNAME, [0])
    drv.run(pid)
    assert out.read_text() == f"uname=-1 errno={errno.EFAULT} node=\n"


def test_foreign_abis_trap_with_their_arch(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """int 0x80 from a 64-bit process (i386 ABI: nr 20 is getpid, arguments
    in ebx..ebp), an x32 call (bit 30 set) and syscall(-1) always trap;
    complete works for them too."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(
            tracer_bin / "tracer_calls",
            "-o",
            out,
            "i386",
            "x32",
            "badnr",
            seccomp_filter=UNAME_FILTER,
        )
    )
    stops: list[SyscallStop] = []

    def answer(ev: Event) -> bool:
        if isinstance(ev, SyscallStop):
            stops.append(ev)
            drv.t.complete(ev.tid, 1000 + len(stops))
            return True
        return False

    assert drv.run(pid, answer).status == 0
    assert stops == [
        SyscallStop(pid, 20, (0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666), Arch.I386),
        SyscallStop(pid, 0x40000000 | 39, stops[1].args, Arch.X32),
        # syscall(-1) traps too (as an out-of-range number) and is 64-bit.
        SyscallStop(pid, -1, stops[2].args, Arch.X86_64),
    ]
    assert out.read_text() == "i386=1001\nx32=1002\nbadnr=1003 errno=0\n"


def test_i386_arguments_are_32_bits(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """int 0x80 from a 64-bit process with garbage in the upper halves of
    rbx..rbp: the i386 ABI takes the low 32 bits, and so must the stop
    (the guest kernel's handlers and the filter's tests read them)."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(tracer_bin / "tracer_calls", "-o", out, "i386hi", seccomp_filter=UNAME_FILTER)
    )
    stops: list[SyscallStop] = []

    def answer(ev: Event) -> bool:
        if isinstance(ev, SyscallStop):
            stops.append(ev)
            drv.t.complete(ev.tid, 7)
            return True
        return False

    assert drv.run(pid, answer).status == 0
    assert stops == [
        SyscallStop(pid, 20, (0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666), Arch.I386)
    ]
    assert out.read_text() == "i386hi=7\n"


NR_I386_GETPGID = 132


def test_i386_complete_and_rewrite(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """complete and rewrite at an i386 stop use the i386 registers: an
    error result reaches the guest's eax, a rewrite's arguments its
    ebx..ebp (getpgid(ppid) instead of getpid)."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(tracer_bin / "tracer_calls", "-o", out, "i386", "i386", seccomp_filter=UNAME_FILTER)
    )
    seen = 0

    def answer(ev: Event) -> bool:
        nonlocal seen
        if isinstance(ev, SyscallStop) and ev.arch is Arch.I386:
            seen += 1
            if seen == 1:
                drv.t.complete(ev.tid, -errno.EPERM)
            else:
                drv.t.rewrite(ev.tid, NR_I386_GETPGID, [os.getpid()])
            return True
        return False

    assert drv.run(pid, answer).status == 0
    assert out.read_text() == f"i386=-{errno.EPERM}\ni386={os.getpgrp()}\n"


NR_GETPPID = 110
NR_GETPID = 39


@pytest.mark.parametrize("abi", ["regs64", "i386regs"])
def test_rewrite_leaves_the_guests_registers(
    drv: Driver, tracer_bin: Path, tmp_path: Path, abi: str
) -> None:
    """After a rewritten call the guest finds its argument registers as it
    left them, as after any call (the kernel preserves them; compiled code
    relies on it, an i386 PIC's ebx first): only the result changes."""
    out = tmp_path / "out"
    flt = build_filter({NR_GETPPID}, i386={NR_I386_GETPID: ()})
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "-o", out, abi, seccomp_filter=flt))
    rewritten = 0

    def answer(ev: Event) -> bool:
        nonlocal rewritten
        if isinstance(ev, SyscallStop) and ev.nr in (NR_GETPPID, NR_I386_GETPID):
            rewritten += 1
            nr = NR_I386_GETPGID if ev.arch is Arch.I386 else NR_GETPID
            drv.t.rewrite(ev.tid, nr, [0, 7, 7, 7, 7, 7])
            return True
        return False

    assert drv.run(pid, answer).status == 0
    assert rewritten == 1
    want = pid  # getpid, or getpgid(0) of a process in a group of its own
    assert out.read_text() == f"{abi}=1111,2222,3333,4444,5555,6666 ret={want}\n"


@pytest.fixture(scope="session")
def abi32_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guest/abi32.c as a 32-bit program (gcc -m32: gcc-multilib)."""
    out = tmp_path_factory.mktemp("abi32") / "abi32"
    src = Path(__file__).resolve().parent.parent / "guest" / "abi32.c"
    built = subprocess.run(
        ["gcc", "-m32", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build 32-bit programs (gcc-multilib): {built.stderr.strip()}")
    return out


NR_I386_CLOSE = 6
NR_I386_GETPID = 20


def test_a_32_bit_program(drv: Driver, abi32_bin: Path, tmp_path: Path) -> None:
    """A real -m32 program: its calls stop as I386 through a filter's i386
    section (only the trapped numbers stop: the dynamic loader's calls run),
    with its arguments; complete, and a stop at exit with eax's result."""
    out = tmp_path / "out"
    flt = build_filter({NR_UNAME}, i386={NR_I386_GETPID: (), NR_I386_CLOSE: ()})
    pid = drv.spawn(spec(*redirected(out, abi32_bin, "getpid", "close"), seccomp_filter=flt))
    stops: list[SyscallStop] = []
    exits: list[SyscallExit] = []

    def answer(ev: Event) -> bool:
        if isinstance(ev, SyscallStop) and ev.arch is Arch.I386:
            stops.append(ev)
            if ev.nr == NR_I386_GETPID:
                drv.t.complete(ev.tid, 4242)
            else:
                drv.t.resume(ev.tid, stop_at_exit=True)
            return True
        if isinstance(ev, SyscallExit):
            exits.append(ev)
        return False

    assert drv.run(pid, answer).status == 0
    getpid = [s for s in stops if s.nr == NR_I386_GETPID]
    assert getpid == [
        SyscallStop(pid, 20, (0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666), Arch.I386)
    ]
    closes = [s for s in stops if s.nr == NR_I386_CLOSE]
    assert closes[-1].args[0] == 0xFFFFFFFF  # close(-1): a 32-bit int
    assert exits[-1] == SyscallExit(pid, NR_I386_CLOSE, -errno.EBADF)
    assert out.read_text() == f"getpid=4242\nclose=-1 errno={errno.EBADF}\n"


def test_guest_memory_and_strings(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """tracer_calls memlayout passes: "hello" ending at a page end before an
    unmapped page, "abcd" running into it, "crossing" over two mapped
    pages, 5000 x's, a read-only page, the unmapped page."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(
            *redirected(out, tracer_bin / "tracer_calls", "memlayout"), seccomp_filter=UNAME_FILTER
        )
    )
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    assert isinstance(stop, SyscallStop)
    t, tid = drv.t, stop.tid
    edge, open_end, cross, long_, ro, hole = stop.args

    assert t.read_string(tid, edge) == b"hello"
    assert t.read_string(tid, cross) == b"crossing"
    assert t.read_string(tid, long_, 5000) == b"x" * 5000
    assert t.read_string(tid, long_ + 4990, 10) == b"x" * 10
    for addr, limit, code in [
        (open_end, 4096, errno.EFAULT),
        (hole, 4096, errno.EFAULT),
        (long_, 4096, errno.ENAMETOOLONG),
        (long_, 4999, errno.ENAMETOOLONG),
        (long_ + 4990, 9, errno.ENAMETOOLONG),
    ]:
        with pytest.raises(TracerError) as err:
            t.read_string(tid, addr, limit)
        assert err.value.errno == code, (hex(addr), limit)

    # A read running into the hole stops at the page end.
    assert t.read_memory(tid, edge, 100) == b"hello\0"
    assert t.read_memory(tid, cross, 9) == b"crossing\0"
    with pytest.raises(TracerError) as err:
        t.read_memory(tid, hole, 16)
    assert err.value.errno == errno.EFAULT
    with pytest.raises(TracerError) as err:
        t.write_memory(tid, hole, b"x")
    assert err.value.errno == errno.EFAULT

    # A read-only page: refused as copy_to_user refuses it (EFAULT, the
    # page unchanged), written as a debugger writes it with force.
    before = t.read_memory(tid, ro, 5)
    with pytest.raises(TracerError) as err:
        t.write_memory(tid, ro, b"WXYZ\0")
    assert err.value.errno == errno.EFAULT
    assert t.read_memory(tid, ro, 5) == before
    with pytest.raises(TracerError) as err:
        t.write_memory(tid, hole, b"x", force=True)
    assert err.value.errno == errno.EFAULT
    t.write_memory(tid, ro, b"WXYZ\0", force=True)
    assert t.read_memory(tid, ro, 5) == b"WXYZ\0"
    t.write_memory(tid, edge, b"!")
    t.complete(tid, 0)
    drv.run(pid)
    assert out.read_text() == "ret=0 ro=WXYZ edge=!ello\n"


# --- processes and threads ----------------------------------------------------


def _complete_unames(drv: Driver) -> Handler:
    def handler(ev: Event) -> bool:
        if isinstance(ev, SyscallStop) and ev.nr == NR_UNAME:
            drv.t.complete(ev.tid, 0)
            return True
        return False

    return handler


def test_fork_children_are_announced_before_their_events(drv: Driver, tracer_bin: Path) -> None:
    """50 children forked back to back, each trapping at once: their stops
    race their parent's fork event, and must still come after Cloned."""
    n = 50
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "fork", str(n), seccomp_filter=UNAME_FILTER))
    ex = drv.run(pid, _complete_unames(drv))
    assert ex.status == 0
    clones = drv.of(Cloned, pid)
    assert len(clones) == n
    assert {c.kind for c in clones} == {CloneKind.FORK}  # type: ignore[attr-defined]
    children = {c.child for c in clones}  # type: ignore[attr-defined]
    assert {s.tid for s in drv.of(SyscallStop)} == children
    assert {e.tid for e in drv.of(Exited)} == children | {pid}
    assert not drv.known and not drv.t.tids()


def test_vfork(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "vfork", "20"))
    assert drv.run(pid).status == 0
    clones = drv.of(Cloned, pid)
    assert len(clones) == 20
    assert {c.kind for c in clones} == {CloneKind.VFORK}  # type: ignore[attr-defined]


def test_threads(drv: Driver, tracer_bin: Path) -> None:
    n = 16
    pid = drv.spawn(
        spec(tracer_bin / "tracer_procs", "threads", str(n), seccomp_filter=UNAME_FILTER)
    )
    assert drv.run(pid, _complete_unames(drv)).status == 0
    clones = drv.of(Cloned, pid)
    assert len(clones) == n
    assert {c.kind for c in clones} == {CloneKind.THREAD}  # type: ignore[attr-defined]
    threads = {c.child for c in clones}  # type: ignore[attr-defined]
    assert {s.tid for s in drv.of(SyscallStop)} == threads
    exits = [e.tid for e in drv.of(Exited)]
    assert set(exits) == threads | {pid} and exits[-1] == pid


def test_clone_without_thread_is_a_process(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "clone"))
    assert drv.run(pid).status == 0
    [clone] = drv.of(Cloned, pid)
    assert clone.kind is CloneKind.PROCESS  # type: ignore[attr-defined]


def test_exec_from_a_non_leader_thread(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "thread-exec", "/bin/true"))
    ex = drv.run(pid)
    assert ex.status == 0
    idle, execer = (c.child for c in drv.of(Cloned, pid))  # type: ignore[attr-defined]
    execs = drv.of(Execed, pid)
    assert execs == [Execed(pid, pid), Execed(pid, execer)]
    # The exec'ing thread's old id is never reported again; the idle thread
    # dies (status 0) in the exec.
    assert all(e.tid != execer for e in drv.events[drv.events.index(execs[1]) + 1 :])
    assert not drv.of(Exited, execer)
    [idle_exit] = drv.of(Exited, idle)
    assert idle_exit.status == 0  # type: ignore[attr-defined]
    assert not drv.t.tids()


def test_leader_exits_before_its_thread(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "leader-exit"))
    ex = drv.run(pid)
    [clone] = drv.of(Cloned, pid)
    exits = drv.of(Exited)
    # The leader's death is reported last, with the group's exit status.
    assert [e.tid for e in exits] == [clone.child, pid]  # type: ignore[attr-defined]
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == 7


# --- orphans: one rule for every backend (platform.py, "Orphans") ----------------

#: The orphan delay these tests inject (the default is ORPHAN_DELAY, 2 s).
SHORT_ORPHAN_DELAY = 0.3


@pytest.fixture
def orphan_drv(backend: str) -> Iterator[Driver]:
    """A Driver over a tracer whose orphan delay is SHORT_ORPHAN_DELAY."""
    from umld.tracer import open_tracer

    t = open_tracer(backend, orphan_delay=SHORT_ORPHAN_DELAY)
    try:
        yield Driver(t)
    finally:
        t.close()
    assert not traced_by(threading.get_native_id())


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, ... (proc(5))."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except OSError:
        return None


def _wait_for(cond: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    """Poll ``cond`` until it returns something true; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)
    return value


def _stopped_in_fork(parent: int) -> int:
    """Wait until ``parent`` has forked a child and sits in a ptrace stop
    (its fork event, which nobody collected: the tracer is not waited
    on meanwhile); return the child."""

    def child() -> int | None:
        if (_stat_fields(parent) or ["?"])[0] != "t":
            return None
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (_stat_fields(int(entry)) or ["", ""])[1] == str(parent):
                return int(entry)
        return None

    return int(_wait_for(child, f"{parent} to stop in its fork event"))  # type: ignore[call-overload]


def test_an_orphan_is_adopted_by_its_reaper(orphan_drv: Driver, tracer_bin: Path) -> None:
    """The parent is SIGKILLed in its fork event stop, so that event is lost
    (ptrace(2), "Death under ptrace").  Its child, re-parented to the
    subreaper sh as natively, is announced as sh's child once it has
    waited the orphan delay for its creator's event, and runs to its end."""
    drv = orphan_drv
    prog = tracer_bin / "tracer_procs"
    sh = drv.spawn(
        spec("/bin/sh", "-c", f"{prog} fork-pause; exec sleep 100", seccomp_filter=UNAME_FILTER)
    )
    parent = drv.until(lambda e: isinstance(e, Execed) and e.tid != sh).tid
    child = _stopped_in_fork(parent)
    os.kill(parent, signal.SIGKILL)
    _wait_for(lambda: (_stat_fields(child) or ["", ""])[1] == str(sh), "the re-parenting")
    t0 = time.monotonic()
    adopted = drv.until(lambda e: isinstance(e, Cloned) and e.child == child)
    waited = time.monotonic() - t0
    assert adopted == Cloned(sh, child, CloneKind.FORK)
    assert SHORT_ORPHAN_DELAY - 0.01 <= waited < SHORT_ORPHAN_DELAY + 5, waited
    assert drv.of(Exited, parent), "the parent's death is reported (before or after)"
    ex = drv.run(child, _complete_unames(drv))
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == 3
    assert drv.of(SyscallStop, child), "the adopted child's trapped call came through"
    drv.t.kill(sh, signal.SIGKILL)
    drv.run(sh)


def test_an_orphan_whose_creator_is_killed_while_the_tracer_looks(
    orphan_drv: Driver, tracer_bin: Path
) -> None:
    """As above, but the tracer collects at once, while the parent dies and
    its child is re-parented: the child may be announced as the dying
    creator's child (before its Exited) or as sh's; either way once, in
    order, and it runs to its end."""
    drv = orphan_drv
    prog = tracer_bin / "tracer_procs"
    sh = drv.spawn(
        spec("/bin/sh", "-c", f"{prog} fork-pause; exec sleep 100", seccomp_filter=UNAME_FILTER)
    )
    parent = drv.until(lambda e: isinstance(e, Execed) and e.tid != sh).tid
    child = _stopped_in_fork(parent)
    os.kill(parent, signal.SIGKILL)
    adopted = drv.until(lambda e: isinstance(e, Cloned) and e.child == child)
    assert isinstance(adopted, Cloned) and adopted.kind is CloneKind.FORK
    assert adopted.tid in (sh, parent), adopted
    ex = drv.run(child, _complete_unames(drv))
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == 3
    drv.t.kill(sh, signal.SIGKILL)
    drv.run(sh)


def test_an_orphan_nobody_in_the_guest_can_adopt_is_killed(
    orphan_drv: Driver, tracer_bin: Path
) -> None:
    """As above, but the spawned process is the parent and no subreaper:
    the orphan goes to a reaper outside the guest.  It is killed after the
    orphan delay, never announced, and nothing stays traced."""
    drv = orphan_drv
    pid = drv.spawn(
        spec(
            tracer_bin / "tracer_procs", "fork-pause", seccomp_filter=UNAME_FILTER, subreaper=False
        )
    )
    assert drv.next() == Execed(pid, pid)
    child = _stopped_in_fork(pid)
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: (_stat_fields(child) or ["", ""])[1] != str(pid), "the re-parenting")
    ex = drv.next()
    assert isinstance(ex, Exited) and ex.tid == pid
    end = time.monotonic() + SHORT_ORPHAN_DELAY + 10
    while (_stat_fields(child) or ["Z"])[0] != "Z":
        assert time.monotonic() < end, "the orphan still runs"
        assert drv.t.wait(0.05) is None, "the orphan was announced"
    assert drv.t.wait(0) is None
    assert not drv.t.tids()
    assert not traced_by(threading.get_native_id())


# --- signals, group-stop --------------------------------------------------------


def test_group_stop_and_continue(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sh", "-c", "while :; do :; done"))
    assert drv.next() == Execed(pid, pid)
    os.kill(pid, signal.SIGSTOP)
    stop = drv.until(lambda e: isinstance(e, GroupStopped))
    assert SignalStop(pid, signal.SIGSTOP) in drv.events
    assert stop == GroupStopped(pid, signal.SIGSTOP)
    # Really stopped: a busy loop that burns no CPU.
    state, cpu = proc_stat(pid)
    time.sleep(0.3)
    state2, cpu2 = proc_stat(pid)
    assert state in "tT" and state2 in "tT"
    assert cpu2 == cpu
    assert drv.t.wait(0.1) is None  # and it stays quiet

    os.kill(pid, signal.SIGCONT)
    seen: set[type] = set()
    while seen != {Continued, SignalStop}:
        ev = drv.next()
        if isinstance(ev, SignalStop):
            assert ev.signo == signal.SIGCONT
            drv.t.resume(ev.tid, ev.signo)
        else:
            assert ev == Continued(pid)
        seen.add(type(ev))
    time.sleep(0.2)
    assert proc_stat(pid)[1] > cpu2  # running again
    drv.t.kill(pid, signal.SIGKILL)
    drv.run(pid)


def test_group_stop_of_a_threaded_process(drv: Driver, tracer_bin: Path) -> None:
    """Every thread reports its own group-stop and its own continue."""
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "pause", "3"))
    while len(drv.of(Cloned, pid)) < 3:
        drv.answer(drv.next())
    tids = {pid, *(c.child for c in drv.of(Cloned, pid))}  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGSTOP)
    while {e.tid for e in drv.of(GroupStopped)} != tids:
        drv.answer(drv.next())
    assert {e.signo for e in drv.of(GroupStopped)} == {signal.SIGSTOP}  # type: ignore[attr-defined]
    assert {proc_stat(pid)[0]} <= set("tT")
    os.kill(pid, signal.SIGCONT)
    while {e.tid for e in drv.of(Continued)} != tids:
        drv.answer(drv.next())
    drv.t.kill(pid, signal.SIGKILL)
    drv.run(pid)
    assert {e.tid for e in drv.of(Exited)} == tids


def test_signal_between_guest_processes(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sh", "-c", "sleep 5 & kill -USR1 $!; wait $!; exit $?"))
    ex = drv.run(pid)
    assert os.WEXITSTATUS(ex.status) == 128 + signal.SIGUSR1
    [child] = [c.child for c in drv.of(Cloned, pid)]  # type: ignore[attr-defined]
    assert SignalStop(child, signal.SIGUSR1) in drv.events
    [cex] = drv.of(Exited, child)
    assert os.WIFSIGNALED(cex.status) and os.WTERMSIG(cex.status) == signal.SIGUSR1  # type: ignore[attr-defined]


def test_kill_method(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sleep", "10"))
    assert drv.next() == Execed(pid, pid)
    drv.t.kill(pid, signal.SIGTERM)
    ex = drv.run(pid)
    assert SignalStop(pid, signal.SIGTERM) in drv.events
    assert os.WTERMSIG(ex.status) == signal.SIGTERM
    drv.t.kill(pid, signal.SIGTERM)  # gone: ignored


# --- wait: wake, host signals, timeout -----------------------------------------


def test_wait_timeout(drv: Driver) -> None:
    t0 = time.monotonic()
    assert drv.t.wait(0.2) is None
    assert 0.15 < time.monotonic() - t0 < 2
    assert drv.t.wait(0) is None


def test_wake_from_another_thread(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sleep", "10"))
    assert drv.next() == Execed(pid, pid)
    waker = threading.Timer(0.1, drv.t.wake)
    waker.start()
    t0 = time.monotonic()
    assert drv.t.wait(5) == Wakeup()
    assert time.monotonic() - t0 < 2
    waker.join()
    # A wake with no wait in progress makes the next wait return at once.
    drv.t.wake()
    assert drv.t.wait(5) == Wakeup()
    assert drv.t.wait(0.05) is None


def test_host_signal(drv: Driver) -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        drv.t.set_host_signals([signal.SIGUSR1])
        pid = drv.spawn(spec("/bin/sleep", "10"))
        assert drv.next() == Execed(pid, pid)
        # To the tracer's thread: a signal sent to the process goes to any
        # thread that does not block it (signal(7)), and a thread another
        # test left behind (a library Host's) is not this test's to block.
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        assert drv.t.wait(5) == HostSignal(signal.SIGUSR1)
        assert drv.t.wait(0.05) is None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- vanishing tracees, close ---------------------------------------------------


def test_sigkill_of_a_stopped_tracee(drv: Driver, tracer_bin: Path) -> None:
    for answer in ("complete", "resume", "rewrite"):
        pid = drv.spawn(spec(tracer_bin / "tracer_calls", "uname:1", seccomp_filter=UNAME_FILTER))
        stop = drv.until(lambda e: isinstance(e, SyscallStop))
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        if answer == "complete":
            drv.t.complete(stop.tid, 0)
        elif answer == "resume":
            drv.t.resume(stop.tid)
        else:
            drv.t.rewrite(stop.tid, NR_GETPPID, [])
        ex = drv.run(pid, timeout=5)
        assert os.WIFSIGNALED(ex.status) and os.WTERMSIG(ex.status) == signal.SIGKILL


def test_sigkill_of_a_group_stopped_tracee(drv: Driver) -> None:
    pid = drv.spawn(spec("/bin/sleep", "10"))
    assert drv.next() == Execed(pid, pid)
    os.kill(pid, signal.SIGSTOP)
    drv.until(lambda e: isinstance(e, GroupStopped))
    os.kill(pid, signal.SIGKILL)
    ex = drv.run(pid, timeout=5)
    assert os.WTERMSIG(ex.status) == signal.SIGKILL


def test_close_leaves_no_process_behind(tracer: TracerPlatform, tracer_bin: Path) -> None:
    drv = Driver(tracer)
    pid = drv.spawn(spec("/bin/sh", "-c", "sleep 100 & sleep 100 & exec sleep 100"))
    # A guest in group-stop, one stopped at a trapped call, forks racing.
    stopped = drv.spawn(spec("/bin/sleep", "100"))
    trapped = drv.spawn(spec(tracer_bin / "tracer_calls", "uname:1", seccomp_filter=UNAME_FILTER))
    forker = drv.spawn(spec(tracer_bin / "tracer_procs", "fork", "200"))
    os.kill(stopped, signal.SIGSTOP)
    execs = 0  # sh, its two sleeps, then sh becoming sleep: 4
    group = trap = False
    while execs < 4 or not group or not trap:
        ev = drv.next()
        family = {pid, *(c.child for c in drv.of(Cloned, pid))}  # type: ignore[attr-defined]
        if isinstance(ev, Execed) and ev.tid in family:
            execs += 1
        group = group or isinstance(ev, GroupStopped)
        if isinstance(ev, SyscallStop) and ev.tid == trapped:
            trap = True
            continue  # left stopped at the trapped call
        drv.answer(ev)
    seen = set(drv.known) | {forker}
    tracer.close()
    tracer.close()  # idempotent
    assert not traced_by(threading.get_native_id())
    for p in seen:
        try:
            state, _ = proc_stat(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
        assert state == "Z", f"{p} still alive in state {state}"


def test_tids_follow_announcements(drv: Driver, tracer_bin: Path) -> None:
    """Driver checks tids() against the announcements at every event."""
    pid = drv.spawn(spec(tracer_bin / "tracer_procs", "threads", "3", seccomp_filter=UNAME_FILTER))
    assert drv.t.tids() == {pid}
    drv.run(pid, _complete_unames(drv))
    assert len(drv.of(Cloned)) == 3 and not drv.t.tids()


def test_wrong_stop_kind_is_refused(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "uname:1", seccomp_filter=UNAME_FILTER))
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    with pytest.raises(TracerError):
        drv.t.set_result(stop.tid, 0)  # not at a syscall exit
    drv.t.complete(stop.tid, 0)
    with pytest.raises(TracerError):
        drv.t.complete(stop.tid, 0)  # running now
    drv.run(pid)


UNAVAILABLE_PROBE = """
import ctypes, errno, signal, struct, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
# A filter as a container runtime might install: ptrace(2) -> EPERM.
prog = b"".join(struct.pack("=HBBI", *i) for i in [
    (0x20, 0, 0, 0),                      # A = seccomp_data.nr
    (0x15, 0, 1, 101),                    # nr == ptrace ?
    (0x06, 0, 0, 0x00050000 | errno.EPERM),  # SECCOMP_RET_ERRNO | EPERM
    (0x06, 0, 0, 0x7FFF0000),             # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.syscall(317, 1, 0, ctypes.byref(fprog)) == 0
from umld.tracer import open_tracer, SpawnSpec, TracerUnavailable
t = open_tracer(sys.argv[1])
try:
    t.spawn(SpawnSpec(b"/bin/true", [b"true"]))
except TracerUnavailable as exc:
    print("unavailable", exc.errno, exc)
else:
    print("spawned")
t.close()
"""


def test_refused_ptrace_is_tracer_unavailable(backend: str) -> None:
    """Run in a child interpreter under a seccomp filter that denies
    ptrace(2): spawn raises TracerUnavailable and says why."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", UNAVAILABLE_PROBE, backend],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    kind, code, message = p.stdout.split(" ", 2)
    assert kind == "unavailable" and int(code) == errno.EPERM
    assert "seccomp" in message.lower(), message


def test_two_tracer_threads_in_one_process(backend: str, tracer_bin: Path) -> None:
    """Two tracers, each owned by its own thread, run trapping guests at
    the same time: each sees only its own events, and neither stalls when
    the kernel hands its SIGCHLD to the other thread's sigtimedwait."""
    from umld.tracer import open_tracer

    n = 3000
    results: dict[int, object] = {}

    def run(slot: int) -> None:
        t = open_tracer(backend)
        try:
            drv = Driver(t)
            pid = drv.spawn(
                spec(tracer_bin / "tracer_calls", f"uname:{n}", seccomp_filter=UNAME_FILTER)
            )
            t0 = time.monotonic()
            ex = drv.run(pid, _complete_unames(drv), timeout=60)
            results[slot] = (ex.status, len(drv.of(SyscallStop)), time.monotonic() - t0)
        except BaseException as exc:  # reported by the main thread
            results[slot] = exc
        finally:
            t.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    for slot in range(2):
        res = results.get(slot)
        assert isinstance(res, tuple), res
        status, stops, elapsed = res
        assert (status, stops) == (0, n)
        # ~20 us per stop; a lost wake-up costs a whole sleep slice.
        assert elapsed < 5, f"tracer {slot} took {elapsed:.1f}s for {n} stops"


@pytest.mark.parametrize("idle_backend", BACKENDS)
def test_an_idle_tracer_thread_does_not_stall_a_busy_one(
    backend: str, idle_backend: str, tracer_bin: Path
) -> None:
    """A second tracer, of either backend, that sits idle in wait in another
    thread of the process (as a library's Host does) may be handed the
    SIGCHLDs of the busy one's stops (signal(7): a process-directed signal
    goes to any thread that waits for it); the busy one must still see
    every stop at once, not after its wait times out."""
    from umld.tracer import available, open_tracer

    reason = available(idle_backend)
    if reason is not None:
        pytest.skip(f"backend {idle_backend!r} unavailable: {reason}")

    n = 3000

    def busy() -> float:
        """Seconds for a guest's n trapped calls, each answered at once."""
        drv = Driver(open_tracer(backend))
        try:
            pid = drv.spawn(
                spec(tracer_bin / "tracer_calls", f"uname:{n}", seccomp_filter=UNAME_FILTER)
            )
            t0 = time.monotonic()
            ex = drv.run(pid, _complete_unames(drv), timeout=60)
            elapsed = time.monotonic() - t0
        finally:
            drv.t.close()
        assert ex.status == 0 and len(drv.of(SyscallStop)) == n
        return elapsed

    alone = busy()
    stop = threading.Event()
    idle_tracer: list[TracerPlatform] = []

    def idle() -> None:
        t = open_tracer(idle_backend)
        idle_tracer.append(t)
        try:
            while not stop.is_set():
                assert t.wait() == Wakeup()  # no timeout, as a Host waits
        finally:
            t.close()

    th = threading.Thread(target=idle)
    th.start()
    try:
        _wait_for(lambda: idle_tracer, "the idle tracer")
        beside_idle = busy()
    finally:
        stop.set()
        idle_tracer[0].wake()
        th.join(10)
    # A SIGCHLD lost to the idle thread costs the busy one a whole sleep
    # (its wait's timeout; 0.1 s for the Python backend): a handful of them
    # is several times the time of the run alone (~0.1 s).
    assert beside_idle < 4 * alone + 0.3, f"{n} stops: {beside_idle:.2f}s, alone {alone:.2f}s"


DYING_TRACER_PROBE = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
from umld.tracer import open_tracer, SpawnSpec
from umld.tracer.events import Cloned, Execed, SignalStop, SyscallStop
t = open_tracer(sys.argv[1])
pids = [t.spawn(SpawnSpec(b"/bin/sh", [b"sh", b"-c", b"sleep 100 & exec sleep 100"]))]
execs = 0
while execs < 3:  # sh, the background sleep, sh becoming sleep
    ev = t.wait(10)
    if isinstance(ev, Cloned):
        pids.append(ev.child)
    elif isinstance(ev, Execed):
        execs += 1
    elif isinstance(ev, SignalStop):
        t.resume(ev.tid, ev.signo)
    elif isinstance(ev, SyscallStop):
        t.resume(ev.tid)
print(*pids, flush=True)
os._exit(0)  # no close(): the tracer just dies
"""


def test_guests_die_with_the_tracer(backend: str) -> None:
    """PTRACE_O_EXITKILL (ptrace(2)): when the tracer dies, every guest,
    children included, is killed."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", DYING_TRACER_PROBE, backend],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    pids = [int(x) for x in p.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if proc_stat(pid)[0] != "Z":
                    alive.append(pid)
            except FileNotFoundError:
                pass
        time.sleep(0.02)
    assert not alive, f"guests outlived their tracer: {alive}"


# --- registers and siginfo at a signal-delivery-stop ---------------------------

SI_KERNEL = 0x80
SI_USER = 0
SI_QUEUE = -1
SI_TKILL = -6


def test_a_privileged_instruction_is_seen_and_skipped(
    drv: Driver, tracer_bin: Path, tmp_path: Path
) -> None:
    """cli at CPL 3 stops with SIGSEGV, si_code SI_KERNEL; the registers
    show it at rip; written registers (rip past it, rax) are what the
    program goes on with, and the signal is never delivered."""
    out = tmp_path / "out"
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "-o", out, "cli"))
    seen: list[tuple[int, int, bytes]] = []

    def skip(ev: Event) -> bool:
        if not (isinstance(ev, SignalStop) and ev.signo == signal.SIGSEGV):
            return False
        info = drv.t.get_siginfo(ev.tid)
        regs = drv.t.get_regs(ev.tid)
        seen.append((info.signo, info.code, drv.t.read_memory(ev.tid, regs.rip, 1)))
        assert regs.rax == 0x1234 and regs.rdx == 0x5678
        drv.t.set_regs(ev.tid, regs._replace(rip=regs.rip + 1, rax=0xABCD))
        assert drv.t.get_regs(ev.tid).rax == 0xABCD
        drv.t.resume(ev.tid, 0)
        return True

    ex = drv.run(pid, skip)
    assert seen == [(signal.SIGSEGV, SI_KERNEL, b"\xfa")]
    assert ex.status == 0
    assert out.read_text() == "cli rax=0xabcd rdx=0x5678\n"


def test_siginfo_of_a_kill_and_a_replaced_one(
    drv: Driver, tracer_bin: Path, tmp_path: Path
) -> None:
    """A kill(2)'s siginfo says SI_USER and the sender; set_siginfo makes
    the handler see another one (here a sigqueue(3)-like SI_QUEUE with a
    value)."""
    out = tmp_path / "out"
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "-o", out, "usr1info"))
    infos = []

    def requeue(ev: Event) -> bool:
        if not (isinstance(ev, SignalStop) and ev.signo == signal.SIGUSR1):
            return False
        info = drv.t.get_siginfo(ev.tid)
        infos.append(info)
        raw = bytearray(info.raw)
        struct.pack_into("=i", raw, 8, SI_QUEUE)
        struct.pack_into("=q", raw, 24, 42)
        drv.t.set_siginfo(ev.tid, bytes(raw))
        assert drv.t.get_siginfo(ev.tid).code == SI_QUEUE
        drv.t.resume(ev.tid, ev.signo)
        return True

    assert drv.run(pid, requeue).status == 0
    (info,) = infos
    assert (info.signo, info.code, info.pid, info.uid) == (
        signal.SIGUSR1,
        SI_USER,
        pid,
        os.getuid(),
    )
    assert out.read_text() == f"usr1 code={SI_QUEUE} pid=same value=42\n"


def test_siginfo_only_at_a_signal_stop(drv: Driver) -> None:
    """Registers at any stop the core sees; siginfo only at a SignalStop
    (EINVAL elsewhere); a thread that is not traced: ESRCH."""
    pid = drv.spawn(spec("/bin/sh", "-c", "uname >/dev/null", seccomp_filter=UNAME_FILTER))
    ev = drv.until(lambda e: isinstance(e, SyscallStop))
    assert drv.t.get_regs(ev.tid).orig_rax == NR_UNAME
    with pytest.raises(TracerError) as err:
        drv.t.get_siginfo(ev.tid)
    assert err.value.errno == errno.EINVAL
    drv.answer(ev)
    drv.run(pid)
    with pytest.raises(TracerError) as err:
        drv.t.get_regs(pid)
    assert err.value.errno == errno.ESRCH


# --- interrupt and the signal mask ------------------------------------------------


def _status_mask(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_interrupt_stops_a_running_thread_and_its_mask_is_set_there(drv: Driver) -> None:
    """interrupt() gives one Interrupted however often it is asked; at
    that stop the mask is read and set; a signal it blocks stays pending
    in the kernel until unblocked, then arrives with its own siginfo."""
    pid = drv.spawn(spec("/bin/sh", "-c", "while :; do :; done"))
    assert drv.next() == Execed(pid, pid)
    drv.t.interrupt(pid)
    drv.t.interrupt(pid)  # asked twice before the stop: one event
    assert drv.next() == Interrupted(pid)
    assert proc_stat(pid)[0] in "tT"
    usr1 = _bit(signal.SIGUSR1)
    before = drv.t.get_sigmask(pid)
    assert before == _status_mask(pid, "SigBlk")
    drv.t.set_sigmask(pid, before | usr1 | _bit(signal.SIGKILL))
    assert drv.t.get_sigmask(pid) == before | usr1  # SIGKILL is never blocked
    drv.t.resume(pid, signal.SIGTERM)  # ignored at an event stop
    drv.t.kill(pid, signal.SIGUSR1)
    _wait_for(
        lambda: _status_mask(pid, "ShdPnd") & usr1 or _status_mask(pid, "SigPnd") & usr1,
        "SIGUSR1 pending",
    )
    assert drv.t.wait(0.2) is None  # blocked: no stop, and SIGTERM was not injected
    drv.t.interrupt(pid)
    assert drv.next() == Interrupted(pid)
    drv.t.set_sigmask(pid, before)
    drv.t.resume(pid)
    ev = drv.next()
    assert ev == SignalStop(pid, signal.SIGUSR1)
    assert drv.t.get_siginfo(pid).code == SI_TKILL
    drv.t.resume(pid, ev.signo)
    ex = drv.run(pid)
    assert os.WTERMSIG(ex.status) == signal.SIGUSR1


def _run_until(drv: Driver, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Answer events by default until ``cond()`` holds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        ev = drv.t.wait(0.05)
        if ev is not None:
            drv._check(ev)
            drv.events.append(ev)
            drv.answer(ev)


def test_interrupt_in_a_group_stop(drv: Driver) -> None:
    """Asked while the thread sits in a group-stop: an Interrupted with the
    stop's signal at once; listen() puts it back in its group-stop
    (SIGCONT then ends it); asked again, resume() makes it run as a
    tracer's PTRACE_CONT does.  A thread that is not traced: ESRCH."""
    pid = drv.spawn(spec("/bin/sh", "-c", "while :; do :; done"))
    assert drv.next() == Execed(pid, pid)
    os.kill(pid, signal.SIGSTOP)
    drv.until(lambda e: isinstance(e, GroupStopped))
    drv.t.interrupt(pid)
    assert drv.next() == Interrupted(pid, signal.SIGSTOP)
    drv.t.get_regs(pid)  # a stop where the thread can be read
    drv.t.listen(pid)
    assert drv.t.wait(0.2) is None  # stopped again, quietly
    cpu = proc_stat(pid)[1]
    os.kill(pid, signal.SIGCONT)
    _run_until(drv, lambda: proc_stat(pid)[1] > cpu, "the loop to run again")
    assert Continued(pid) in drv.events
    os.kill(pid, signal.SIGSTOP)
    drv.until(lambda e: isinstance(e, GroupStopped))
    drv.t.interrupt(pid)
    assert drv.next() == Interrupted(pid, signal.SIGSTOP)
    drv.t.resume(pid)
    cpu = proc_stat(pid)[1]
    _wait_for(lambda: proc_stat(pid)[1] > cpu, "the loop to run despite the group-stop")
    with pytest.raises(TracerError) as err:
        drv.t.interrupt(Tid(os.getpid()))
    assert err.value.errno == errno.ESRCH
    drv.t.kill(pid, signal.SIGKILL)
    drv.run(pid)


# --- what a debugger of a guest thread needs ------------------------------------

NR_GETPPID, NR_EXIT_GROUP, NR_WRITE = 110, 231, 1
TRAP_BRKPT, TRAP_TRACE = 1, 2


def test_resume_mode_syscall_reports_every_entry_and_exit(
    drv: Driver, tracer_bin: Path, tmp_path: Path
) -> None:
    """From the trapped uname on, every call stops at its entry and its
    exit (getppid is not trapped, exit_group has no exit); back to CONT,
    nothing stops."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(
            tracer_bin / "tracer_calls",
            "-o",
            out,
            "uname:1",
            "getppid:3",
            "uname:1",
            seccomp_filter=UNAME_FILTER,
        )
    )
    first = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.set_resume_mode(pid, ResumeMode.SYSCALL)
    drv.t.resume(first.tid)
    seen: list[tuple[str, int]] = []
    while True:
        ev = drv.next()
        if isinstance(ev, Exited):
            break
        if isinstance(ev, SyscallEntry):
            seen.append(("entry", ev.nr))
            if ev.nr == NR_GETPPID:
                info = drv.t.get_syscall_info(ev.tid)
                assert info[0] == 1  # PTRACE_SYSCALL_INFO_ENTRY
        elif isinstance(ev, SyscallExit):
            seen.append(("exit", ev.nr))
        elif isinstance(ev, SyscallStop):
            seen.append(("seccomp", ev.nr))
        drv.answer(ev)
    assert seen[0] == ("exit", NR_UNAME)
    assert seen.count(("entry", NR_GETPPID)) == seen.count(("exit", NR_GETPPID)) == 3
    i = seen.index(("entry", NR_UNAME))
    assert seen[i : i + 3] == [("entry", NR_UNAME), ("seccomp", NR_UNAME), ("exit", NR_UNAME)]
    assert seen[-1] == ("entry", NR_EXIT_GROUP)
    assert "uname=0" in out.read_text()


def test_resume_mode_sysemu_skips_the_call(drv: Driver, tracer_bin: Path, tmp_path: Path) -> None:
    """SYSEMU: the next uname stops at its entry and never runs; the
    result is what the debugger put in rax."""
    out = tmp_path / "out"
    pid = drv.spawn(
        spec(tracer_bin / "tracer_calls", "-o", out, "uname:2", seccomp_filter=UNAME_FILTER)
    )
    first = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.set_resume_mode(pid, ResumeMode.SYSEMU)
    drv.t.resume(first.tid)
    entry = drv.until(lambda e: isinstance(e, SyscallEntry))
    assert entry == SyscallEntry(pid, NR_UNAME, entry.args, Arch.X86_64)  # type: ignore[union-attr]
    drv.t.set_regs(pid, drv.t.get_regs(pid)._replace(rax=-errno.EPERM % (1 << 64)))
    drv.t.set_resume_mode(pid, ResumeMode.CONT)
    drv.t.resume(pid)
    drv.run(pid)
    assert out.read_text().startswith(f"uname=-1 errno={errno.EPERM} ")


def test_singlestep_stops_after_each_instruction(drv: Driver, tracer_bin: Path) -> None:
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "uname:1", seccomp_filter=UNAME_FILTER))
    stop = drv.until(lambda e: isinstance(e, SyscallStop))
    drv.t.set_resume_mode(pid, ResumeMode.SINGLESTEP)
    drv.t.resume(stop.tid)
    rips = []
    for _ in range(5):
        ev = drv.next()
        assert ev == SignalStop(pid, signal.SIGTRAP)
        # The first step ends the syscall: reported as TRAP_BRKPT by
        # user_single_step_report(), the next ones as TRAP_TRACE (#DB).
        assert drv.t.get_siginfo(pid).code == (TRAP_TRACE if rips else TRAP_BRKPT)
        rips.append(drv.t.get_regs(pid).rip)
        drv.t.resume(pid)  # the SIGTRAP suppressed, one more step
    assert len(set(rips)) == 5
    drv.t.set_resume_mode(pid, ResumeMode.CONT)
    assert os.WEXITSTATUS(drv.run(pid).status) == 0


def test_event_stops_keep_the_thread_at_fork_exec_and_exit(drv: Driver) -> None:
    """Kept PTRACE_EVENT_* stops follow their notifications, with the
    event's message; kept nowhere else (the child does not inherit)."""
    pid = drv.spawn(
        spec("/bin/sh", "-c", "/bin/true; exec /bin/sh -c 'exit 3'", seccomp_filter=UNAME_FILTER)
    )
    assert drv.next() == Execed(pid, pid)
    drv.t.interrupt(pid)
    drv.until(lambda e: isinstance(e, Interrupted))
    drv.t.set_event_stops(pid, frozenset({1, 2, 3, 4, 6}))
    drv.t.resume(pid)
    kept: list[EventStop] = []
    while True:
        ev = drv.next()
        if isinstance(ev, EventStop):
            kept.append(ev)
            assert drv.events[-2] != ev
            if ev.event in (1, 2, 3):
                assert isinstance(drv.events[-2], Cloned) and drv.events[-2].child == ev.message  # type: ignore[union-attr]
            if ev.event == 4:
                assert drv.events[-2] == Execed(pid, pid) and ev.message == pid
        if isinstance(ev, Exited) and ev.tid == pid:
            break
        drv.answer(ev)
    assert [e.event for e in kept][-2:] == [4, 6]
    assert kept[-1].message == 3 << 8  # the exit status, as wait gives it
    assert kept[0].event in (1, 2, 3)
    # The child of a kept fork started stopped: its first event is an
    # Interrupted, before anything it did (its exec of /bin/true).
    child = kept[0].message
    assert next(type(e) for e in drv.events if e.tid == child) is Interrupted
    assert os.WEXITSTATUS(drv.events[-1].status) == 3  # type: ignore[union-attr]


def test_user_area_and_register_sets(drv: Driver, tracer_bin: Path) -> None:
    """Debug registers through the user area; NT_PRSTATUS is the general
    registers; the FPU sets read and write back."""
    pid = drv.spawn(spec(tracer_bin / "tracer_calls", "uname:1", seccomp_filter=UNAME_FILTER))
    drv.until(lambda e: isinstance(e, SyscallStop))
    dr7 = USER_DEBUGREG + 7 * 8
    assert drv.t.peek_user(pid, dr7) == 0
    regs = drv.t.get_regs(pid)
    drv.t.poke_user(pid, USER_DEBUGREG, regs.rsp)  # DR0: a watch on the stack
    drv.t.poke_user(pid, dr7, 0x1 | (0b11 << 16) | (0b11 << 18))  # L0, rw, 4 bytes
    assert drv.t.peek_user(pid, USER_DEBUGREG) == regs.rsp
    assert drv.t.peek_user(pid, dr7) & 0xF0001 == 0xF0001
    drv.t.poke_user(pid, dr7, 0)
    with pytest.raises(TracerError):
        drv.t.poke_user(pid, USER_DEBUGREG, 1 << 63)  # not a user address
    prstatus = drv.t.get_regset(pid, NT_PRSTATUS, 4096)
    assert len(prstatus) == 27 * 8
    assert struct.unpack("=27Q", prstatus) == tuple(v % (1 << 64) for v in regs)
    fp = drv.t.get_regset(pid, NT_PRFPREG, 4096)
    assert len(fp) == 512
    drv.t.set_regset(pid, NT_PRFPREG, fp)
    xstate = drv.t.get_regset(pid, NT_X86_XSTATE, 1 << 16)
    assert len(xstate) >= 576 and xstate[:160] == fp[:160]
    drv.t.resume(pid)
    assert os.WEXITSTATUS(drv.run(pid).status) == 0
