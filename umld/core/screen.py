"""A machine's terminal screen: pyte, fed fast enough to keep up.

umld keeps the screen of a machine's terminal with pyte, the VT100/xterm
emulator on PyPI, and writes none of an emulator itself.  Two things are
added here around it.

**What pyte lacks.**  Full-screen programs (vi, less, top under
TERM=xterm-256color) switch to the alternate screen (xterm's private modes
1049, 1047 and 47) and back; pyte 0.8 ignores those modes, so the program's
last screen would stay after it quits.  ``Screen`` keeps the normal
screen's cells and cursor aside while the alternate one shows.  It also
keeps the rows that scroll off the top as text (the scrollback, bounded),
and a title with no control characters in it (a title is shown to host
programs and terminals: it must not carry escape sequences).

**Speed.**  pyte draws a character at a time in Python, about 1 MB/s here,
while a program can write hundreds of MB/s to a terminal (`seq`, a build
log).  A terminal that reads slower than the program writes makes the
program wait: its write(2) blocks once the pty's buffer is full.  So
``Terminal.feed`` gives pyte only the bytes whose effect it cannot know
without it.  A long run of *plain lines* (printable ASCII ended by CR LF,
as a program's output lines come from the pty with ONLCR) on a screen
without scroll margins, in autowrap mode and on the normal screen, has an
effect that is known exactly: every line lands on a fresh row at the
bottom and the rows above scroll off, in order, into the scrollback.  The
first 2*ROWS lines of the run are fed to pyte (they bring the cursor to the
bottom row, column 0, with every row a fresh one, from whatever state the
screen was in); the lines after them but for the last ROWS-1 go straight
into the scrollback as the rows they would have made (with the rows on
the screen before them), the screen is cleared and homed, and the last
ROWS-1 lines and the rest are fed to pyte, which draws them on the same
fresh rows it would have had.  The screen, the cursor and the scrollback
are then exactly those of feeding every byte (tests/unit/test_screen.py
checks this against pyte fed every byte); everything else (colours, cursor
motion, other controls) goes through pyte as it is.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

import pyte
from pyte import modes as mo
from pyte.screens import Margins, StaticDefaultDict

#: Rows kept in the scrollback (ui/scrollback).
SCROLLBACK_ROWS = 10_000

# The alternate screen: xterm's private modes, as pyte numbers them (a
# private mode is shifted left by 5, see pyte.modes).
_ALT_SAVE_CURSOR = 1049 << 5  # and clear on entry
_ALT_CLEAR_ON_EXIT = 1047 << 5
_ALT = 47 << 5
_ALT_MODES = (_ALT_SAVE_CURSOR, _ALT_CLEAR_ON_EXIT, _ALT)

# C0, DEL and C1 controls: never in a title a host reads.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")

# A run of plain lines long enough to fast-forward; see the docstring.
_LINE = rb"[\x20-\x7e]*\r\n"

#: Bytes kept of an OSC string (a title) and of a CSI's parameters: pyte
#: keeps either whole, in memory, until it ends, and a guest could send
#: one that never does (the rest is dropped: SequenceGuard).
OSC_MAX = 4096
CSI_PARAMS_MAX = 256
_SEQUENCE_START = re.compile(rb"\x1b[\[\]]|\xc2[\x9b\x9d]")
_OSC_END = re.compile(rb"\x07|\x1b\\|\xc2\x9c")
# A CSI's parameter bytes as pyte reads them (digits, ";", "?", and what
# may decode to a digit), and the C0 controls it carries out inside one.
_CSI_PARAMS = re.compile(rb"[\x30-\x3f\x80-\xff\x07-\x0d]*")


class Screen(pyte.Screen):
    """pyte's screen, with the alternate screen, a scrollback of text rows
    and a sanitised title."""

    def __init__(self, columns: int, lines: int, scrollback: int = SCROLLBACK_ROWS) -> None:
        self.scrollback: deque[str] = deque(maxlen=scrollback)
        #: The terminal's answers to the program (device attributes, cursor
        #: position reports), for the master's owner to write back.
        self.replies: list[str] = []
        self._normal: tuple[Any, pyte.screens.Cursor] | None = None
        super().__init__(columns, lines)

    @property
    def alternate(self) -> bool:
        """Whether the alternate screen shows."""
        return self._normal is not None

    def row_text(self, y: int) -> str:
        row = self.buffer[y]
        return "".join(row[x].data for x in range(self.columns)).rstrip(" ")

    # pyte's hooks --------------------------------------------------------

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        # A row leaves the screen for the scrollback when the whole screen
        # scrolls (as xterm: not within margins, not on the alternate one).
        if self.cursor.y == bottom and top == 0 and bottom == self.lines - 1 and not self.alternate:
            self.scrollback.append(self.row_text(0))
        super().index()

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        super().erase_in_display(how, *args, **kwargs)
        if how == 3:  # xterm's "erase saved lines" (clear(1) sends it)
            self.scrollback.clear()

    def write_process_input(self, data: str) -> None:
        self.replies.append(data)

    def set_title(self, param: str) -> None:
        super().set_title(_CONTROLS.sub("", param))

    def set_icon_name(self, param: str) -> None:
        super().set_icon_name(_CONTROLS.sub("", param))

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        rest = self._alternate_modes(modes, kwargs, on=True)
        if rest:
            super().set_mode(*rest, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        rest = self._alternate_modes(modes, kwargs, on=False)
        if rest:
            super().reset_mode(*rest, **kwargs)

    def reset(self) -> None:
        self._normal = None
        super().reset()

    # the alternate screen ------------------------------------------------

    def _alternate_modes(self, modes: Iterable[int], kwargs: dict[str, Any], on: bool) -> list[int]:
        if not kwargs.get("private"):
            return list(modes)
        rest = []
        for mode in modes:
            if mode << 5 not in _ALT_MODES:
                rest.append(mode)
            elif on:
                self._enter_alternate(mode << 5)
            else:
                self._leave_alternate(mode << 5)
        return rest

    def _fresh_buffer(self) -> Any:
        # As pyte.Screen.__init__ makes its buffer.
        return defaultdict(lambda: StaticDefaultDict(self.default_char))

    def _enter_alternate(self, mode: int) -> None:
        if self.alternate:
            return
        cursor = pyte.screens.Cursor(self.cursor.x, self.cursor.y, self.cursor.attrs)
        cursor.hidden = self.cursor.hidden
        self._normal = (self.buffer, cursor)
        self.buffer = self._fresh_buffer()
        if mode == _ALT_SAVE_CURSOR:
            self.cursor.x = self.cursor.y = 0
        self.dirty.update(range(self.lines))

    def _leave_alternate(self, mode: int) -> None:
        if self._normal is None:
            return
        buffer, cursor = self._normal
        self._normal = None
        # The normal screen as it was, cut to the size it has now.
        for y in [y for y in buffer if y >= self.lines]:
            del buffer[y]
        for row in buffer.values():
            for x in [x for x in row if x >= self.columns]:
                del row[x]
        self.buffer = buffer
        if mode == _ALT_SAVE_CURSOR:
            self.cursor.x = min(cursor.x, self.columns - 1)
            self.cursor.y = min(cursor.y, self.lines - 1)
            self.cursor.attrs = cursor.attrs
        self.dirty.update(range(self.lines))


class SequenceGuard:
    """Bounds what pyte keeps of one escape sequence: a guest's terminal
    output is untrusted, and pyte holds an OSC string (ESC ] ... BEL) and a
    CSI's parameters (ESC [ 1;2;3...) in memory until they end, so an
    endless one would grow umld without bound.  A byte-level tracker of
    just those two (found with regular expressions, not byte by byte)
    drops what goes beyond OSC_MAX and CSI_PARAMS_MAX bytes; every other
    byte passes in order.  A lone ESC or 0xC2 at the end of a chunk waits
    for the next one (it may start a terminator)."""

    def __init__(self) -> None:
        self._state = "ground"
        self._count = 0
        self._carry = b""

    def __call__(self, data: bytes) -> bytes:
        data = self._carry + data
        self._carry = b""
        if data[-1:] in (b"\x1b", b"\xc2"):
            data, self._carry = data[:-1], data[-1:]
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self._state == "ground":
                m = _SEQUENCE_START.search(data, i)
                if m is None:
                    out.append(data[i:])
                    break
                out.append(data[i : m.end()])
                i = m.end()
                self._state = "osc" if m.group()[-1:] in (b"]", b"\x9d") else "csi"
                self._count = 0
            elif self._state == "osc":
                m = _OSC_END.search(data, i)
                end = m.start() if m else n
                self._keep(out, data[i:end], OSC_MAX)
                if m is None:
                    break
                out.append(m.group())
                i = m.end()
                self._state = "ground"
            else:
                m = _CSI_PARAMS.match(data, i)
                assert m is not None  # the pattern matches the empty string
                self._keep(out, m.group(), CSI_PARAMS_MAX)
                i = m.end()
                if i < n:  # the byte that ends the parameters: pyte's to take
                    self._state = "ground"
        return b"".join(out)

    def _keep(self, out: list[bytes], body: bytes, most: int) -> None:
        room = most - self._count
        if room > 0:
            out.append(body[:room])
        self._count += len(body)


class Terminal:
    """A Screen and the stream that feeds it, with the fast path for runs
    of plain lines (module docstring)."""

    def __init__(self, columns: int, lines: int, scrollback: int = SCROLLBACK_ROWS) -> None:
        self.screen = Screen(columns, lines, scrollback)
        self.stream = pyte.ByteStream(self.screen)
        self.guard = SequenceGuard()
        self._resize_pattern()

    def resize(self, columns: int, lines: int) -> None:
        self.screen.resize(lines, columns)
        self._resize_pattern()

    def _resize_pattern(self) -> None:
        # A run worth the fast path: the head, at least one line to skip,
        # and the ROWS-1 fed after it.
        rows = self.screen.lines
        self._run = re.compile(b"(?:" + _LINE + b"){%d,}" % (3 * rows + 1))

    def _fast_forward_ok(self) -> bool:
        s = self.screen
        return (
            s.margins in (None, Margins(0, s.lines - 1)) and mo.DECAWM in s.mode and not s.alternate
        )

    def _parser_at_rest(self) -> bool:
        """Whether pyte's parser waits for text, not inside a sequence (an
        OSC string takes CR LF in).  A private attribute of pyte's Stream:
        without it the fast path is only not taken."""
        return getattr(self.stream, "_taking_plain_text", None) is True

    def feed(self, data: bytes) -> None:
        """The program's output, in order: the screen afterwards is that
        of pyte fed every byte (but for the tail of an overlong sequence,
        SequenceGuard)."""
        rows = self.screen.lines
        data = self.guard(data)
        while data:
            m = self._run.search(data) if self._fast_forward_ok() else None
            if m is None:
                self._pyte(data)
                return
            self._pyte(data[: m.start()])
            lines = data[m.start() : m.end()].split(b"\r\n")[:-1]
            data = data[m.end() :]
            cut = len(lines) - (rows - 1)
            head, skipped, kept = lines[: 2 * rows], lines[2 * rows : cut], lines[cut:]
            self._pyte(b"".join(line + b"\r\n" for line in head))
            if self._fast_forward_ok() and self._parser_at_rest():
                self._skip(skipped)
            else:
                self._pyte(b"".join(line + b"\r\n" for line in skipped))
            self._pyte(b"".join(line + b"\r\n" for line in kept))

    def _pyte(self, data: bytes) -> None:
        """pyte fed ``data``.  A sequence pyte cannot take (a CSI ending in
        a byte it has no meaning for, a parameter too large for int())
        raises out of its parser, which then starts afresh: the rest of
        that piece is lost, as a terminal drops garbage, and the reader
        goes on."""
        try:
            self.stream.feed(data)
        except (KeyError, ValueError, IndexError, TypeError):
            pass

    def _skip(self, lines: list[bytes]) -> None:
        """The effect of ``lines`` fed from the bottom row, column 0, of a
        screen of fresh rows: the rows on the screen and those the lines
        make scroll off, and the screen is left blank, homed."""
        s = self.screen
        cols = s.columns
        back = s.scrollback
        keep = back.maxlen or 0
        for y in range(s.lines - 1):
            back.append(s.row_text(y))
        # Only the rows the scrollback keeps are worth making.
        made = 0
        tail: list[bytes] = []
        for line in reversed(lines):
            tail.append(line)
            made += max(1, -(-len(line) // cols))
            if made >= keep:
                break
        for line in reversed(tail):
            if not line:
                back.append("")
            for x in range(0, len(line), cols):
                back.append(line[x : x + cols].decode("ascii").rstrip(" "))
        s.buffer.clear()
        s.cursor.x = s.cursor.y = 0
        s.dirty.update(range(s.lines))
