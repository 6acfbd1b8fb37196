"""The I/O bus's devices in the live export (``dev/ttyS0``, ``dev/post``,
``ioport`` events) and signals with a value from ``proc/PID/ctl``.

Every access to a mount is made by another process (``tail -f``, a
shell, a Python one-liner), never by the process that serves it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import umld
from tests.conftest import GUEST_SRC, User
from tests.fuse.test_export_as_ordinary_user import Export, wait_for
from tests.kernel.test_cow_root import Who

pytestmark = [pytest.mark.uses_fuse, pytest.mark.uses_ptrace]

COM1 = 0x3F8
LSR = COM1 + 5


def stream(path: Path) -> str:
    """What a stream (events, dev/ttyS0) holds so far, read by another
    process (the export is served by this one)."""
    script = (
        "import sys; from tests.conftest import read_available as r; print(r(sys.argv[1]), end='')"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        timeout=10,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return r.stdout.decode(errors="replace")


class Follower:
    """``tail -f`` of a file (its last ten lines, then what comes), its
    output collected by a thread."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            ["tail", "-f", "-s", "0.05", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.data += chunk

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def api_export(tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    """An idle machine of the Python API (this process) and its export
    mounted by this process, for other processes to use: (machine, its
    control, mountpoint)."""
    from umld.fusefs import ExportThread

    old = __import__("signal").pthread_sigmask(__import__("signal").SIG_BLOCK, set())
    mnt = tmp_path / "mnt"
    cfg = umld.Config(name=f"dev-{os.getpid()}-{tmp_path.name}", state_dir=str(tmp_path))
    try:
        with umld.machine(cfg) as m:
            # The export is the command line's (umld run --mount); the API
            # has none of its own, so the test mounts one on the machine's
            # control.
            control = m._control
            export = ExportThread(control, str(mnt), name="devtest")
            export.start()
            try:
                yield m, control, mnt
            finally:
                export.stop()
    finally:
        __import__("signal").pthread_sigmask(__import__("signal").SIG_SETMASK, old)


def test_ttys0_follows_the_uart_output_with_tail_f(api_export: tuple[Any, Any, Path]) -> None:
    """Bytes a polling driver writes to COM1's THR appear in dev/ttyS0,
    followed by ``tail -f`` in another process: what was written before
    the reader came, then each byte as it is written.

    Until the guest's port I/O (the CPU side of issue 15) is merged, the
    driver is this test, through the machine's bus (machine.iobus, the
    same IoBus.write calls a guest's ``out`` becomes)."""
    m, _control, mnt = api_export
    bus = m.iobus

    def putc(b: int) -> None:
        while not bus.read(LSR, 1) & 0x20:
            pass
        bus.write(COM1, 1, b)

    for b in b"before\n":
        putc(b)
    tail = Follower(mnt / "dev" / "ttyS0")
    try:
        wait_for(lambda: tail.data == b"before\n", "tail -f to show the earlier output", 10)
        for b in b"after\n":
            putc(b)
        wait_for(lambda: tail.data == b"before\nafter\n", "tail -f to follow", 10)
        assert tail.proc.poll() is None
    finally:
        tail.stop()


def test_host_writes_to_ttys0_reach_the_receive_fifo(api_export: tuple[Any, Any, Path]) -> None:
    """A write to dev/ttyS0 is the UART's input: LSR DR, then RBR; a
    flood beyond the 16-byte FIFO returns at once, keeps 16 and sets OE,
    with an ``ioport`` event."""
    m, _control, mnt = api_export
    bus = m.iobus
    bus.write(COM1 + 3, 1, 0x03)  # 8N1
    bus.write(COM1 + 2, 1, 0x07)  # FIFOs on, cleared
    tty = mnt / "dev" / "ttyS0"
    subprocess.run(["sh", "-c", f"printf hello > {tty}"], check=True, timeout=10)
    assert bus.read(LSR, 1) & 0x01
    got = bytes(bus.read(COM1, 1) for _ in range(5))
    assert got == b"hello" and not bus.read(LSR, 1) & 0x01
    start = time.monotonic()
    subprocess.run(
        ["sh", "-c", f"head -c 4096 /dev/zero | tr '\\0' x > {tty}"], check=True, timeout=10
    )
    assert time.monotonic() - start < 5
    assert bus.read(LSR, 1) & 0x03 == 0x03  # DR, OE
    assert bytes(bus.read(COM1, 1) for _ in range(16)) == b"x" * 16
    assert not bus.read(LSR, 1) & 0x01
    events = wait_for(
        lambda: (e := stream(mnt / "events")) and "overrun" in e and e, "the overrun event"
    )
    assert re.search(r" ioport pid=0 ttyS0 overrun: \d+ of \d+ bytes lost", events), events


def test_dev_post_and_post_events(api_export: tuple[Any, Any, Path]) -> None:
    m, _control, mnt = api_export
    bus = m.iobus
    assert (mnt / "dev").is_dir() is not None  # (stat from this process is fine: no read)
    first = subprocess.run(["cat", str(mnt / "dev" / "post")], capture_output=True, timeout=10)
    assert first.returncode == 0 and first.stdout == b""
    for code in (0x01, 0x2A):
        bus.write(0x80, 1, code)
    got = subprocess.run(["cat", str(mnt / "dev" / "post")], capture_output=True, timeout=10)
    assert got.stdout == b"0x2a\n"
    events = wait_for(
        lambda: (e := stream(mnt / "events")) and "post 0x2a" in e and e, "the POST events"
    )
    assert re.search(r" ioport pid=0 post 0x01\n.* ioport pid=0 post 0x2a\n", events, re.S)
    bus.read(0x2F8, 1)
    wait_for(lambda: "ioport pid=0 unknown 0x02f8" in stream(mnt / "events"), "unknown port")


# -- signals with a value from proc/PID/ctl ----------------------------------------------


class _Who(Who):
    """``who`` running ``umld run`` with the given tracer backend."""

    def __init__(self, who: str, user: User, backend: str) -> None:
        super().__init__(who, user)
        self.backend = backend

    def umld(self, *options: str) -> list[str]:
        return [sys.executable, "-m", "umld", "run", f"--tracer={self.backend}", *options, "--"]


@pytest.fixture(params=["root", "user"])
def sender(request: pytest.FixtureRequest, ordinary_user: User, backend: str) -> _Who:
    return _Who(request.param, ordinary_user, backend)


@pytest.fixture
def started() -> Iterator[Callable[[_Who, list[str], Path], Export]]:
    made: list[tuple[Export, Path]] = []

    def start(who: _Who, cmd: list[str], d: Path) -> Export:
        e = Export(who, d, cmd)
        made.append((e, d))
        e.wait_ready()
        return e

    try:
        yield start
    finally:
        left = [str(e.mnt) for e, _ in made if not e.stop()]
        for _, d in made:
            shutil.rmtree(d, ignore_errors=True)
    assert not left, left


def test_signal_with_a_value_is_queued_with_si_queue(
    sender: _Who, started: Callable[[_Who, list[str], Path], Export]
) -> None:
    """``signal USR1 42`` in proc/PID/ctl: a handler installed with
    SA_SIGINFO gets si_code SI_QUEUE, sival_int 42, si_pid 0 (a sender
    outside the machine's pid namespace) and si_uid 0 (the machine's
    root; the user's own uid in an ordinary user's machine, which has
    that one id); ``signal USR1`` without a value: SI_USER.  A bad name or value
    is EINVAL with the reason in events."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = Path("/var/tmp") / f"umld-siginfo-{os.getpid()}-{os.urandom(4).hex()}"
    d.mkdir()
    prog = d / "siginfo"
    subprocess.run(
        [cc, "-O1", "-Wall", "-Werror", "-o", str(prog), str(GUEST_SRC / "siginfo.c")], check=True
    )
    sender.own(d)
    e = started(sender, [str(prog)], d)
    ready = wait_for(lambda: re.search(r"ready (\d+)", e.output()), "the guest's handler")
    pid = int(ready.group(1))
    ctl = f"proc/{pid}/ctl"
    assert e.write(ctl, "signal USR1 nope\n") == "EINVAL"
    assert e.write(ctl, "signal NOSUCH 1\n") == "EINVAL"
    assert e.write(ctl, "signal USR1 4294967296\n") == "EINVAL"
    events = e.op("stream", "events")["ok"]
    assert "refused 'signal USR1 nope': the value 'nope' is not an integer" in events, events
    assert "refused 'signal NOSUCH 1': unknown signal 'NOSUCH'" in events, events
    assert e.write(ctl, "signal USR1 42\n") is None
    wait_for(lambda: "code=SI_QUEUE" in e.output(), "the queued signal's handler")
    assert e.write(ctl, "signal USR1\n") is None
    wait_for(lambda: "code=SI_USER" in e.output(), "the sent signal's handler")
    lines = [ln for ln in e.output().splitlines() if ln.startswith("signo=")]
    # The machine's root sent it; an ordinary user's machine has one id,
    # its user's, and no root: that user sent it.
    uid = 0 if sender.user is None else sender.user.uid
    assert lines[0] == f"signo=10 code=SI_QUEUE(-1) value=42 pid=0 uid={uid}", e.output()
    # As kill(2) from outside the machine: pid 0, the sender's uid as
    # the guest's namespace maps it (overflowuid where it does not).
    assert lines[1].startswith("signo=10 code=SI_USER(0) value=0 pid=0 uid="), e.output()
    events = e.op("stream", "events")["ok"]
    assert f"signal pid={pid} SIGUSR1 value=42 queued by the export" in events, events
    assert f"signal pid={pid} SIGUSR1 sent by the export" in events, events
