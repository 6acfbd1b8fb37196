"""Machines with a terminal of their own (``--tty``), and their ``ui/``.

Reusable by every test of the UI export (the tmux comparisons too):

* :func:`tty_machine` (fixture): ``start(who, cmd, *options, size=...)``
  runs ``umld run --tty --mount DIR -- CMD`` as root or as the ordinary
  user and returns a :class:`TtyMachine` once its export is up; each is
  ended at teardown and its mount must be gone.
* :class:`TtyMachine`: ``screen()``, ``keys(text)``, ``input(data)``,
  ``read(rel)``, ``write(rel, data)`` (None or the errno's name), and
  ``wait_screen(pred)``; every access is made by a separate process of
  the machine's user (an ordinary user's mount answers that user alone).
* :class:`Tmux`: the same program natively in a detached tmux session of
  a given size (``send_keys``, ``capture``), the reference terminal.
* :func:`wait_for`: polls a condition (never a fixed sleep).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import User
from tests.kernel.test_cow_root import Who

#: One access to the mount, as the machine's user: prints {"ok": ...}
#: (text, or hex of bytes for readhex) or {"err": "ENAME"}.
_FSOP = r"""
import errno, json, os, sys
op, path = sys.argv[1], sys.argv[2]
arg = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else b""
try:
    if op == "read":
        with open(path, "rb") as f:
            out = f.read().decode(errors="replace")
    elif op == "readhex":
        with open(path, "rb") as f:
            out = f.read().hex()
    elif op == "write":
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            n = os.write(fd, arg)
        finally:
            os.close(fd)
        out = n
    elif op == "writefrom":  # one write(2) of a whole file's content
        with open(arg.decode(), "rb") as f:
            data = f.read()
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            out = os.write(fd, data)
        finally:
            os.close(fd)
    elif op == "stream":  # what a stream (events) holds so far
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        out = b"".join(chunks).decode(errors="replace")
    elif op == "list":
        out = sorted(os.listdir(path))
    else:
        raise SystemExit(f"bad op {op}")
    print(json.dumps({"ok": out}))
except OSError as e:
    print(json.dumps({"err": errno.errorcode.get(e.errno or 0, str(e.errno))}))
"""

ACCESS_TIMEOUT = 30.0


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """``pred()``'s first true value, polled; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def mounted(path: Path) -> bool:
    target = str(path).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def strip_screen(text: str) -> list[str]:
    """A screen as lines with trailing blanks removed and trailing empty
    lines dropped (how ui/screen and tmux capture-pane are compared)."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class TtyMachine:
    """One ``umld run --tty --mount DIR`` of ``who``."""

    def __init__(self, who: Who, base: Path, cmd: Sequence[str], *options: str) -> None:
        self.who = who
        self.base = base
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        who.own(self.mnt)
        self.log = base / "umld.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                who.argv([*who.umld("--tty", f"--mount={self.mnt}", *options), *cmd]),
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def op(self, op: str, rel: str, arg: bytes = b"") -> dict[str, Any]:
        argv = [sys.executable, "-c", _FSOP, op, str(self.mnt / rel)]
        if arg or op.startswith("write"):
            argv.append(arg.hex())
        r = subprocess.run(
            self.who.argv(argv),
            capture_output=True,
            text=True,
            timeout=ACCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r
        got: dict[str, Any] = json.loads(r.stdout)
        return got

    def read(self, rel: str) -> str:
        got = self.op("read", rel)
        assert "ok" in got, (rel, got)
        return str(got["ok"])

    def write(self, rel: str, data: bytes | str) -> str | None:
        """None, or the name of the errno the write failed with."""
        raw = data.encode() if isinstance(data, str) else data
        got = self.op("write", rel, raw)
        return None if "ok" in got else str(got["err"])

    def screen(self) -> str:
        return self.read("ui/screen")

    def keys(self, text: str) -> None:
        assert self.write("ui/keys", text) is None

    def input(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) < 4096:
            assert self.write("ui/input", raw) is None
            return
        # Too long for an argument: from a file, still in one write(2).
        src = self.base / "shared" / f"input-{os.urandom(4).hex()}"
        src.write_bytes(raw)
        self.who.own(src)
        got = self.op("writefrom", "ui/input", str(src).encode())
        assert got == {"ok": len(raw)}, got

    def wait_screen(self, pred: Callable[[str], bool] | str, timeout: float = 20.0) -> str:
        """The screen once ``pred(screen)`` holds (a string: it is on it)."""
        test = (lambda s: pred in s) if isinstance(pred, str) else pred
        last: list[str] = [""]

        def check() -> bool:
            assert self.proc.poll() is None, f"umld ended:\n{self.output()}"
            last[0] = self.screen()
            return test(last[0])

        try:
            wait_for(check, f"the screen to show {pred!r}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{last[0]}") from None
        return last[0]

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"umld ended:\n{self.output()}"
            return mounted(self.mnt) and "screen" in self.op("list", "ui").get("ok", [])

        wait_for(up, "the export")

    def stop(self) -> bool:
        """End umld; True if its mount went with it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not mounted(self.mnt):
            return True
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        return False


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> Who:
    return Who(request.param, ordinary_user)


@pytest.fixture
def tty_machine() -> Iterator[Callable[..., TtyMachine]]:
    """``start(who, cmd, *options)``: a started ``--tty`` machine whose
    export is up, in a fresh directory of ``who`` under /var/tmp (the
    guest's working directory, bound into it: files there are shared)."""
    started: list[TtyMachine] = []
    made: list[Path] = []

    def start(who: Who, cmd: Sequence[str], *options: str) -> TtyMachine:
        d = Path("/var/tmp") / f"umld-ui-{os.getpid()}-{os.urandom(4).hex()}"
        d.mkdir()
        made.append(d)
        who.own(d)
        (d / "shared").mkdir()
        who.own(d / "shared")
        m = TtyMachine(who, d, cmd, f"--bind={d / 'shared'}", *options)
        started.append(m)
        m.wait_ready()
        return m

    try:
        yield start
    finally:
        left = [str(m.mnt) for m in started if not m.stop()]
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
    assert not left, f"mounts left behind (unmounted now): {left}"


class Tmux:
    """A detached tmux session (its own server) of ``columns`` x ``lines``
    running ``cmd`` natively: the reference terminal."""

    def __init__(self, cmd: str, columns: int = 80, lines: int = 24) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.socket = f"umld-test-{os.getpid()}-{os.urandom(4).hex()}"
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        subprocess.run(
            [*self._tmux(), "-f", "/dev/null", "new-session", "-d",
             "-x", str(columns), "-y", str(lines), cmd],
            check=True, env=env,
        )  # fmt: skip

    def _tmux(self) -> list[str]:
        return ["tmux", "-L", self.socket]

    def send_keys(self, *words: str) -> None:
        subprocess.run([*self._tmux(), "send-keys", *words], check=True)

    def capture(self, *options: str) -> str:
        r = subprocess.run(
            [*self._tmux(), "capture-pane", "-p", *options],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return r.stdout

    def display(self, fmt: str) -> str:
        r = subprocess.run(
            [*self._tmux(), "display-message", "-p", fmt],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return r.stdout.strip()

    def kill(self) -> None:
        subprocess.run([*self._tmux(), "kill-server"], capture_output=True)


@pytest.fixture
def tmux() -> Iterator[Callable[..., Tmux]]:
    """``tmux(cmd, columns, lines)``: a native session, killed afterwards."""
    made: list[Tmux] = []

    def start(cmd: str, columns: int = 80, lines: int = 24) -> Tmux:
        t = Tmux(cmd, columns, lines)
        made.append(t)
        return t

    yield start
    for t in made:
        t.kill()
