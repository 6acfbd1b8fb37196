"""A machine's terminal: the guest's pty, kept on screen by pyte.

With the ``tty`` setting the guest's first process runs on a
pseudo-terminal of the guest's own devpts instance (``/dev/pts/0`` in the
guest; the caller's terminal is never given to it).  ``umld-sandbox``
opens it in the stage, once the guest's /dev is mounted, and sends the
master here over a socket pair with SCM_RIGHTS (unix(7); the ``tty``
operation of sandbox.c, as runc's console socket does).

:class:`MachineTerminal` owns that master and a terminal emulator: a
:class:`pyte.Screen` (pyte, the VT100/xterm emulator on PyPI) fed by a
:class:`pyte.ByteStream`, under one lock.  A reader thread the machine
owns (started with the machine, joined by :meth:`MachineTerminal.close`)
waits in poll(2) on the master and a wake-up pipe, feeds what the guest
writes to the emulator and tells its listeners what changed, one line per
change (the export's ``ui/events``).  A read of the screen first drains,
under the lock, whatever the master holds (non-blocking: n_tty's read
waits for the pty's pending flip buffers, so everything a guest write(2)
that returned put there is read), so :meth:`snapshot` reflects every byte
the program wrote before it was called.

What reaches the host is sanitised: the screen holds only what pyte drew
(control characters and escape sequences are interpreted, never stored),
and a title the guest sets (OSC 0/2) loses every control and format
character; :meth:`TerminalSnapshot.ansi` and :meth:`TerminalSnapshot.frame`
emit only sequences generated here (SGR, cursor position), never the
guest's own, so an OSC 52 clipboard write or a title report request of
the guest never reaches a terminal that shows them.

Input goes to the master from the writer's own thread, never under the
screen lock, in pieces as the pty takes them (poll(2) for POLLOUT): the
reader thread keeps draining the guest's output meanwhile (its echo, say),
so a writer of megabytes waits only for the guest to read, never for
itself.  A resize sets the master's window size (TIOCSWINSZ: the kernel
sends SIGWINCH to the terminal's foreground process group, ioctl_tty(2))
and the emulator's.

When every guest process has closed the terminal (the program ended), the
master reads EIO: the reader says so (``exit``) and stops reading; the
final screen stays readable until :meth:`close` (the machine's end), and
after it too from this object (the export then removes the files).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple, final

from pyte import graphics

from umld.core.screen import Terminal
from umld.errors import get_logger

log = get_logger("umld.tty")

#: Lines kept of what scrolled off the top of the screen (``ui/scrollback``).
SCROLLBACK_LINES = 10_000
#: The size of a terminal when nobody says otherwise (a daemon's machine).
DEFAULT_SIZE = (80, 24)
#: Bounds of a terminal's columns and rows.
MAX_COLUMNS = 1000
MAX_ROWS = 1000
#: At most this much of the guest's output is read per pass (the pty holds
#: less than this: what a drain at a read leaves is written after it).
_DRAIN = 256 << 10
#: A program that writes this much between two passes of the reader floods
#: its terminal: the reader gathers up to _BATCH more, for at most _LINGER
#: seconds, before pyte sees it, so that screen.Terminal's fast path skips
#: most of it (umld/core/screen.py).  A read of the screen meanwhile feeds
#: what was gathered at once.
_FLOOD = 16 << 10
_BATCH = 4 << 20
_LINGER = 0.02
#: xterm's private mode 1 (DECCKM, application cursor keys), pyte-shifted.
_DECCKM = 1 << 5
#: A title longer than this is cut (pyte keeps whatever an OSC holds).
_TITLE_MAX = 1024

# C0, DEL and C1: never in what the host reads.
_CONTROLS = {c: "\ufffd" for c in (*range(0x20), *range(0x7F, 0xA0))}


class TerminalEnded(Exception):
    """The terminal is gone (the program ended, or the machine did)."""


class TerminalSnapshot(NamedTuple):
    """One consistent view of the screen."""

    #: Each row: exactly ``columns`` cells (pyte Chars; a wide character's
    #: second cell has empty data).
    rows: tuple[tuple[Any, ...], ...]
    #: 0-based (row, column) of the cursor.
    cursor: tuple[int, int]
    cursor_visible: bool
    title: str
    columns: int
    lines: int
    #: Every guest process has closed the terminal.
    ended: bool

    def text(self) -> str:
        """The screen as text: one line per row, trailing spaces removed."""
        return "".join(_row_text(row) + "\n" for row in self.rows)

    def ansi(self) -> str:
        """The screen with colours and attributes as SGR sequences, one
        line per row, so that ``cat`` draws it again."""
        return "".join(_row_ansi(row, strip=True) + "\n" for row in self.rows)

    def frame(self, columns: int | None = None, lines: int | None = None) -> str:
        """What an attached terminal draws: every row at its place (cut to
        ``columns`` x ``lines``, the attached terminal's size), the rest
        cleared, the cursor at its place."""
        cols = self.columns if columns is None else columns
        rows = self.rows if lines is None else self.rows[:lines]
        out = ["\x1b[?25l"]
        for y, row in enumerate(rows):
            out.append(f"\x1b[{y + 1};1H\x1b[0m")
            out.append(_row_ansi(row[:cols], strip=False))
            out.append("\x1b[0m\x1b[K")
        out.append("\x1b[J" if len(rows) == self.lines else "")
        y, x = self.cursor
        out.append(f"\x1b[{y + 1};{min(x, cols - 1) + 1}H")
        if self.cursor_visible:
            out.append("\x1b[?25h")
        return "".join(out)


def _row_text(row: tuple[Any, ...]) -> str:
    return "".join(c.data for c in row).translate(_CONTROLS).rstrip(" ")


#: pyte's colour names -> SGR offsets (30+n / 90+n; brown is yellow).
_COLOURS = {
    name: n
    for n, name in enumerate(("black", "red", "green", "brown", "blue", "magenta", "cyan", "white"))
}
# pyte turns 256-colour indices into hex: back to the index (16 up first:
# the cube and greys are what 38;5;N usually names).
_INDEX = {h: i for i, h in reversed(list(enumerate(graphics.FG_BG_256[:16])))}
_INDEX.update({h: i for i, h in reversed(list(enumerate(graphics.FG_BG_256))) if i >= 16})


def _colour(name: str, base: int, bright: int, extended: int) -> str:
    if name == "default":
        return ""
    if name in _COLOURS:
        return f";{base + _COLOURS[name]}"
    if name.startswith("bright") and name[6:] in _COLOURS:
        return f";{bright + _COLOURS[name[6:]]}"
    index = _INDEX.get(name)
    if index is not None:
        return f";{extended};5;{index}"
    if len(name) == 6:
        try:
            r, g, b = (int(name[i : i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            return ""
        return f";{extended};2;{r};{g};{b}"
    return ""


def _sgr(c: Any) -> str:
    out = "".join(
        code
        for flag, code in (
            (c.bold, ";1"),
            (c.italics, ";3"),
            (c.underscore, ";4"),
            (c.blink, ";5"),
            (c.reverse, ";7"),
            (c.strikethrough, ";9"),
        )
        if flag
    )
    return out + _colour(c.fg, 30, 90, 38) + _colour(c.bg, 40, 100, 48)


def _row_ansi(row: tuple[Any, ...], *, strip: bool) -> str:
    end = len(row)
    if strip:
        while end and row[end - 1].data in (" ", "") and not _sgr(row[end - 1]):
            end -= 1
    out: list[str] = []
    current = ""
    for c in row[:end]:
        sgr = _sgr(c)
        if sgr != current:
            out.append(f"\x1b[0{sgr}m")
            current = sgr
        out.append(c.data.translate(_CONTROLS))
    if current:
        out.append("\x1b[0m")
    return "".join(out)


def clean_title(title: str) -> str:
    """A title as the host may show it: no control or format characters
    (no escape sequence, no bidirectional override), one line, bounded."""
    kept = "".join(
        ch for ch in title if unicodedata.category(ch)[0] != "C" and ch not in "\u2028\u2029"
    )
    return kept[:_TITLE_MAX]


Listener = Callable[[str | None], None]


@final
class MachineTerminal:
    """The master of a machine's terminal and its emulator.  Any thread."""

    def __init__(
        self, columns: int = DEFAULT_SIZE[0], lines: int = DEFAULT_SIZE[1], *,
        scrollback: int = SCROLLBACK_LINES,
    ) -> None:  # fmt: skip
        check_size(columns, lines)
        self.initial_size = (columns, lines)
        self._lock = threading.Lock()
        self._terminal = Terminal(columns, lines, scrollback)
        self._screen = self._terminal.screen
        #: Read from the master, not yet fed (in order: every read of the
        #: master appends here under the lock).
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._title = ""
        self._cursor = (0, 0)
        # Close-on-exec both (PEP 446); the stage's end is made inheritable
        # for the sandbox alone (stage_fd) and closed here once it runs.
        self._ours, self._stage_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._master: int | None = None
        self._ready = threading.Event()
        self._hung_up = False
        self._exit_said = False
        self._closing = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._write_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None

    # -- the machine's side ------------------------------------------------------

    def stage_fd(self) -> int:
        """The sandbox's end of the socket the master comes on (its ``tty``
        operation), inheritable until :meth:`start`."""
        fd = self._stage_end.fileno()
        os.set_inheritable(fd, True)
        return fd

    def start(self) -> None:
        """The sandbox runs: wait for the master and read it, in a thread
        this object owns (joined by :meth:`close`)."""
        self._stage_end.close()
        self._thread = threading.Thread(target=self._run, name="umld-tty", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """The machine has ended: read what the guest left, stop the
        reader, close the master.  The screen stays readable."""
        if self._closing:
            return
        self._closing = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(10)
        self._stage_end.close()
        self._ours.close()
        with self._write_lock:  # no writer is using the descriptors now
            with self._lock:
                master, self._master = self._master, None
            if master is not None:
                os.close(master)
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._ready.set()
        # The machine has ended, so every process of it has closed the
        # terminal, whether or not the reader saw the hang-up before it
        # was told to stop (both can come in one poll).
        with self._lock:
            last = [] if self._exit_said else [_exit_line()]
            self._exit_said = True
        self._emit(last, closed=True)

    def subscribe(self, listener: Listener) -> None:
        """``listener(line)`` for each change (``TIME KIND TEXT``), on the
        thread that saw it: it must be quick; ``listener(None)`` once the
        terminal is closed."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    # -- reading -----------------------------------------------------------------------

    def snapshot(self) -> TerminalSnapshot:
        """The screen, after every byte the guest wrote before this call."""
        with self._lock:
            changes = self._drain()
            s = self._screen
            cols = s.columns
            rows = tuple(tuple(s.buffer[y][x] for x in range(cols)) for y in range(s.lines))
            snap = TerminalSnapshot(
                rows=rows,
                cursor=(min(s.cursor.y, s.lines - 1), min(s.cursor.x, cols - 1)),
                cursor_visible=not s.cursor.hidden,
                title=self._title,
                columns=cols,
                lines=s.lines,
                ended=self._hung_up,
            )
        self._emit(changes)
        return snap

    def scrollback(self) -> list[str]:
        """The lines that scrolled off the top, oldest first (at most
        SCROLLBACK_LINES), as text."""
        with self._lock:
            changes = self._drain()
            lines = [line.translate(_CONTROLS) for line in self._screen.scrollback]
        self._emit(changes)
        return lines

    def app_cursor(self) -> bool:
        """Whether the program asked for application cursor keys (DECCKM)."""
        with self._lock:
            changes = self._drain()
            on = _DECCKM in self._screen.mode
        self._emit(changes)
        return on

    @property
    def size(self) -> tuple[int, int]:
        """(columns, rows)."""
        return self._screen.columns, self._screen.lines

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal, all of it: waits while the
        guest does not read (as a pipe's writer does).  TerminalEnded when
        the terminal is gone first."""
        self._ready.wait(10)
        with self._write_lock:
            view = memoryview(data)
            while view:
                master = self._usable_master()
                try:
                    n = os.write(master, view[: 64 << 10])
                except BlockingIOError:
                    self._wait_writable(master)
                    continue
                except OSError as exc:
                    raise TerminalEnded(os.strerror(exc.errno or errno.EIO)) from None
                view = view[n:]

    def resize(self, columns: int, lines: int) -> None:
        """A new size: the emulator's and the pty's (the guest's foreground
        group gets SIGWINCH)."""
        check_size(columns, lines)
        with self._lock:
            changes = self._drain()
            self._terminal.resize(columns, lines)
            if self._master is not None and not self._hung_up:
                _set_winsize(self._master, columns, lines)
        self._emit([*changes, _line("size", f"{columns} {lines}")])

    def note(self, kind: str, text: str) -> None:
        """A line for the listeners (a refused write, say)."""
        self._emit([_line(kind, text)])

    # -- internals ----------------------------------------------------------------------

    def _usable_master(self) -> int:
        if self._closing or self._hung_up or self._master is None:
            raise TerminalEnded("the terminal is closed")
        return self._master

    def _wait_writable(self, master: int) -> None:
        poller = select.poll()
        poller.register(master, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        for fd, _ in poller.poll():
            if fd == self._wake_r:
                raise TerminalEnded("the terminal is closed")

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._ours.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            poller.poll()
            with self._lock:
                master = self._take_master()
            if master is None:  # the stage failed first, or the machine ended
                return
            self._ready.set()
            poller = select.poll()
            poller.register(master, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while True:
                ready = {fd for fd, _ in poller.poll()}
                with self._lock:
                    got = self._take()
                if got >= _FLOOD:
                    self._gather(master)
                with self._lock:
                    changes = self._feed()
                self._emit(changes)
                if self._wake_r in ready:
                    return
                if self._hung_up:
                    poller.unregister(master)
        except Exception:
            log.exception("the terminal's reader failed")
        finally:
            self._ready.set()

    def _take_master(self) -> int | None:
        """The master, once the sandbox's stage sent it (it does before
        the guest's first instruction: whatever the guest wrote is behind
        it); None before, or if it never will.  Non-blocking, under the
        lock: the reader thread and a read that finds none yet both take
        it."""
        if self._master is not None or self._closing:
            return self._master
        # Not socket.recv_fds: Python 3.11's ignores its flags argument, and
        # so waited here, on the export's thread, for a master the stage
        # sends only after its mount set-up, which may ask the export (a
        # deadlock seen once in CI: a reader of ui/screen before the
        # guest's first instruction).
        fd_size = array.array("i").itemsize
        try:
            _, anc, _, _ = self._ours.recvmsg(1, socket.CMSG_SPACE(fd_size), socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError among them: not sent yet
            return None
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fd_size])
        if not fds:
            return None
        master = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        os.set_blocking(master, False)
        if self.size != self.initial_size:  # resized before it came
            _set_winsize(master, *self.size)
        self._master = master
        return master

    def _drain(self) -> list[str]:
        """Feed the emulator what the master holds now; the change lines.
        Under the lock."""
        self._take()
        return self._feed()

    def _take(self) -> int:
        """Read what the master holds now into the pending output; how
        much.  Under the lock."""
        master = self._take_master()
        if master is None or self._hung_up:
            return 0
        size = 0
        while size < _DRAIN:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            except OSError:  # EIO: no guest process has the terminal open
                self._hung_up = True
                break
            if not chunk:
                self._hung_up = True
                break
            self._pending.append(chunk)
            size += len(chunk)
        self._pending_size += size
        return size

    def _gather(self, master: int) -> None:
        """More of a flood, while it lasts (up to _BATCH, _LINGER seconds);
        the lock is free while waiting."""
        poller = select.poll()
        poller.register(master, select.POLLIN)
        deadline = time.monotonic() + _LINGER
        while self._pending_size < _BATCH and not self._hung_up:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return
            with self._lock:
                if self._take() == 0:
                    return

    def _feed(self) -> list[str]:
        """Feed the pending output to the emulator; the change lines.
        Under the lock."""
        out: list[str] = []
        if self._pending:
            s = self._screen
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._terminal.feed(data)
            if s.replies:
                self._reply("".join(s.replies).encode())
                s.replies.clear()
            cursor = (s.cursor.y, s.cursor.x)
            if s.dirty or cursor != self._cursor:
                out.append(
                    _line("screen", f"rows={len(s.dirty)} cursor={cursor[0] + 1},{cursor[1] + 1}")
                )
                s.dirty.clear()
                self._cursor = cursor
            title = clean_title(s.title)
            if title != self._title:
                self._title = title
                out.append(_line("title", title))
        if self._hung_up and not self._exit_said:
            self._exit_said = True
            out.append(_exit_line())
        return out

    def _reply(self, data: bytes) -> None:
        # The terminal's answers (a cursor position report): best effort,
        # as a terminal whose input is full drops them too.
        assert self._master is not None
        try:
            os.write(self._master, data)
        except OSError:
            pass

    def _emit(self, lines: list[str], *, closed: bool = False) -> None:
        for listener in list(self._listeners):
            try:
                for line in lines:
                    listener(line)
                if closed:
                    listener(None)
            except Exception:
                log.exception("a terminal listener failed")


def _line(kind: str, text: str) -> str:
    return f"{time.time():.6f} {kind} {text}"


def _exit_line() -> str:
    return _line("exit", "every process of the machine closed its terminal")


def _set_winsize(master: int, columns: int, lines: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))


def check_size(columns: int, lines: int) -> None:
    if not (1 <= columns <= MAX_COLUMNS and 1 <= lines <= MAX_ROWS):
        raise ValueError(
            f"a size of 1 to {MAX_COLUMNS} columns and 1 to {MAX_ROWS} rows, not {columns} {lines}"
        )


def parse_size(text: str) -> tuple[int, int]:
    """``COLS ROWS`` (what ``ui/size`` takes); ValueError says why not."""
    words = text.split()
    if len(words) != 2 or not all(w.isdigit() and len(w) <= 6 for w in words):
        raise ValueError(f"COLS ROWS expected, not {text.strip()[:40]!r}")
    columns, lines = int(words[0]), int(words[1])
    check_size(columns, lines)
    return columns, lines


__all__ = [
    "DEFAULT_SIZE",
    "SCROLLBACK_LINES",
    "MachineTerminal",
    "TerminalEnded",
    "TerminalSnapshot",
    "clean_title",
    "parse_size",
]
