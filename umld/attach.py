"""``umld attach``: the caller's terminal connected to a machine's own.

Like ``tmux attach``: the caller's terminal is put in raw mode (termios(3),
cfmakeraw), its keys go to the machine's terminal as they are, its size
follows (SIGWINCH, then a write of ``ui/size``), and ``C-]`` (the byte
0x1d, telnet's and ``virsh console``'s escape) detaches, leaving the
program running.

Containment: the guest's own output never reaches the caller's terminal.
What is drawn is generated here from the emulator's screen
(:meth:`umld.core.tty.TerminalSnapshot.frame`: positioned rows with SGR
attributes and the cursor), redrawn at each change, so a guest's OSC 52
clipboard write, title or report request is never seen by the terminal
that shows it.

Two ways to reach a terminal (a :class:`Backend`):

* :class:`ExportBackend`, through a machine's export (``umld attach NAME``
  for a daemon's machine, ``umld attach --mount DIR``): ``ui/events``
  says when the screen changed (poll(2) on the export), ``ui/frame`` is
  read to draw, ``ui/input`` and ``ui/size`` are written.  Any number of
  clients and readers of ``ui/`` may use one terminal at once; the size is
  the one written last.
* :class:`LocalBackend`, the machine of this very process (``umld run
  --tty`` on a terminal): the same, through its MachineControl.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import termios
import threading
from typing import Any, Protocol

from umld.errors import UmldError, UsageError

#: The byte that detaches: C-] (ASCII GS).
DETACH = b"\x1d"
DETACH_NAME = "C-]"
#: No bound on what is drawn (a terminal that says no size).
MAX = 10_000


class Backend(Protocol):
    def change_fd(self) -> int:
        """Readable when the screen changed."""

    def drain(self) -> bool:
        """Take the pending change notes; False once the terminal is gone."""

    def frame(self, columns: int, lines: int) -> str: ...

    def write(self, data: bytes) -> None: ...

    def resize(self, columns: int, lines: int) -> None: ...

    def close(self) -> None: ...


class ExportBackend:
    """A machine's terminal through its export's ``ui/`` directory."""

    def __init__(self, ui: str) -> None:
        self.ui = ui
        try:
            self._events = os.open(
                os.path.join(ui, "events"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError as exc:
            raise UmldError(f"umld: cannot attach to {ui}: {exc.strerror}") from None
        try:
            self._input = os.open(os.path.join(ui, "input"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(self._events)
            raise UmldError(f"umld: cannot attach to {ui}: {exc.strerror}") from None
        self._reads = 0

    def change_fd(self) -> int:
        return self._events

    def drain(self) -> bool:
        while True:
            try:
                data = os.read(self._events, 1 << 16)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return False
            self._reads += 1
            if not data:
                # The stream's first read at its end is an end of file too
                # (umld.fusefs StreamFile); after it, the log is closed.
                return self._reads == 1

    def frame(self, columns: int, lines: int) -> str:
        try:
            with open(os.path.join(self.ui, "frame"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._input, view) :]

    def resize(self, columns: int, lines: int) -> None:
        try:
            with open(os.path.join(self.ui, "size"), "w") as f:
                f.write(f"{columns} {lines}\n")
        except OSError:
            pass

    def close(self) -> None:
        os.close(self._events)
        os.close(self._input)


class LocalBackend:
    """The terminal of a machine of this process (its MachineControl)."""

    def __init__(self, control: Any) -> None:
        self._control = control
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ended = False
        control.subscribe_terminal(self._changed)

    def _changed(self, line: str | None) -> None:
        if line is None:
            self._ended = True
        try:
            os.write(self._w, b"x")
        except OSError:
            pass  # full: a change is already noted

    def change_fd(self) -> int:
        return self._r

    def drain(self) -> bool:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        return not self._ended

    def frame(self, columns: int, lines: int) -> str:
        return str(self._control.terminal_snapshot().frame(columns, lines))

    def write(self, data: bytes) -> None:
        from umld.core import NoTerminal

        try:
            self._control.type_input(data)
        except NoTerminal:
            self._ended = True

    def resize(self, columns: int, lines: int) -> None:
        from umld.core import SettingError

        try:
            self._control.resize_terminal(f"{columns} {lines}")
        except SettingError:
            pass

    def close(self) -> None:
        self._control.unsubscribe_terminal(self._changed)
        os.close(self._r)
        os.close(self._w)


class WinchPipe:
    """SIGWINCH as a readable descriptor (signal.set_wakeup_fd: the C
    handler writes the signal's number there, whatever thread runs).  Made
    on the main thread, which Python's signal module requires."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self._old = signal.signal(signal.SIGWINCH, lambda signo, frame: None)

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.signal(signal.SIGWINCH, self._old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self.r)
        os.close(self.w)


def _size(fd: int) -> tuple[int, int] | None:
    """The terminal's size; None when it says none (0 x 0: a pty nobody
    sized), and the machine's is then left as it is."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    if size.columns <= 0 or size.lines <= 0:
        return None
    return size.columns, size.lines


def run(
    backend: Backend,
    winch: WinchPipe,
    *,
    stdin: int = 0,
    stdout: int = 1,
    alternate: bool = True,
    stop: threading.Event | None = None,
) -> str:
    """Connect the terminal ``stdin``/``stdout`` until the detach key
    (returns ``detached``), the terminal's end (``ended``) or the end of
    ``stdin`` (``eof``).  The caller's terminal is restored whatever
    happens."""
    saved = termios.tcgetattr(stdin)
    raw = termios.tcgetattr(stdin)
    # cfmakeraw(3): no echo, no signals, no line editing, 8 bits.
    raw[0] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    raw[1] &= ~termios.OPOST
    raw[2] &= ~(termios.CSIZE | termios.PARENB)
    raw[2] |= termios.CS8
    raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    out = os.fdopen(os.dup(stdout), "w", encoding="utf-8", errors="replace", closefd=True)
    why = "ended"
    try:
        termios.tcsetattr(stdin, termios.TCSAFLUSH, raw)
        if alternate:
            out.write("\x1b[?1049h")
        out.write("\x1b[H\x1b[2J")
        size = _size(stdout)
        if size is not None:
            backend.resize(*size)
        poller = select.poll()
        for fd in (stdin, backend.change_fd(), winch.r):
            poller.register(fd, select.POLLIN)
        dirty = True
        while stop is None or not stop.is_set():
            if dirty:
                out.write(backend.frame(*(size or (MAX, MAX))))
                out.flush()
                dirty = False
            events = dict(poller.poll(None if stop is None else 200))
            if winch.r in events:
                winch.drain()
                size = _size(stdout)
                if size is not None:
                    backend.resize(*size)
                out.write("\x1b[H\x1b[2J")
                dirty = True
            if backend.change_fd() in events:
                if not backend.drain():
                    why = "ended"
                    break
                dirty = True
            if stdin in events:
                data = os.read(stdin, 4096)
                if not data:
                    why = "eof"
                    break
                keys, detach, _ = data.partition(DETACH)
                if keys:
                    backend.write(keys)
                if detach:
                    why = "detached"
                    break
        out.write(backend.frame(*(size or (MAX, MAX))))
    finally:
        out.write("\x1b[0m\x1b[?25h")
        if alternate:
            out.write("\x1b[?1049l")
        else:
            out.write(f"\x1b[{(_size(stdout) or (0, 999))[1]};1H\r\n")
        out.flush()
        out.close()
        termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
    return why


def ui_dir(name: str | None, mount: str | None) -> str:
    """Where ``umld attach`` finds a machine's ``ui/`` (machine_entry)."""
    from umld.client import machine_entry

    return machine_entry(
        "attach", "ui", name, mount, " has no terminal of its own (start it with --tty)"
    )


def main(name: str | None, mount: str | None) -> int:
    """``umld attach``."""
    if not (os.isatty(0) and os.isatty(1)):
        raise UsageError("umld attach: needs a terminal (standard input and output)")
    path = ui_dir(name, mount)
    backend = ExportBackend(path)
    winch = WinchPipe()
    try:
        why = run(backend, winch)
    finally:
        winch.close()
        backend.close()
    label = name or mount or path
    if why == "detached":
        sys.stderr.write(f"[detached from {label}: the program goes on]\n")
    elif why == "ended":
        sys.stderr.write(f"[{label}: the program ended]\n")
    return 0
