"""MachineTerminal and the keys table, on a pty of the test's own (no
ptrace, no mount): the slave plays the guest, the master is sent to the
terminal as umld-sandbox sends it (SCM_RIGHTS on the stage's socket)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import threading
import time
import tty
from collections.abc import Iterator

import pytest

from umld.core import keys
from umld.core.tty import MachineTerminal, TerminalEnded, clean_title, parse_size

#: (word, bytes tmux 3.3a's send-keys types), observed with a raw-mode
#: dumper in a tmux pane; tests/ui compares the whole list with tmux live.
TMUX_TABLE = (
    "C-a=01 C-A=01 C-z=1a Enter=0d Home=1b5b317e End=1b5b347e F1=1b4f50 F5=1b5b31357e "
    "F12=1b5b32347e M-x=1b78 M-Enter=1b0d C-Up=1b5b313b3541 S-Up=1b5b313b3241 BTab=1b5b5a "
    "BSpace=7f DC=1b5b337e IC=1b5b327e PageUp=1b5b357e PgDn=1b5b367e Escape=1b Space=20 "
    "Tab=09 enter=0d C-Space=00 C-@=00 ^a=01 M-a=1b61 M-A=1b41 C-M-a=1b01 Up=1b5b41 "
    "KPEnter=0a C-=432d Foo=466f6f é=c3a9 M-é=1bc3a9 C-i=09 C-m=0d C-[=1b 0x41=41 "
    "None=4e6f6e65 Any=416e79 C-1= C-?=7f C-]=1d C-é=c3a9 S-a=532d61 C-S-a=432d532d61 "
    "S-Enter=532d456e746572 C-Enter= C-BSpace= M-BSpace=1b7f M-BTab=1b1b5b5a C-BTab= "
    "S-Tab=532d546162 C-Tab= M-Up=1b5b313b3341 C-M-Up=1b5b313b3741 S-F1=1b5b313b3250 "
    "C-F5=1b5b31353b357e M-Home=1b5b313b3348 S-Home=1b5b313b3248 C-DC=1b5b333b357e "
    "M-Space=1b20 C-Escape= S-Escape=532d457363617065 M-Escape=1b1b 0x0=00 0x7=07 "
    "0x263a=e298ba 0xzz=30787a7a 0x41zz=41 F13=463133 KP1=31 KP/=2f C-KP1= M--=1b2d C--=1f "
    "a=61 A=41 !=21 -=2d S-1=532d31 C-M-S-Up=1b5b313b3841 M-C-a=1b01 ^=5e ^^=1e ^ab=5e6162 "
    "C-^=1e C-_=1f C-\\=1c"
).split()


@pytest.mark.parametrize("case", TMUX_TABLE)
def test_keys_table(case: str) -> None:
    word, _, want = case.rpartition("=")
    assert keys.encode(word.encode()).hex() == want


def test_keys_words_and_separators() -> None:
    assert keys.encode(b"tput Space cols Enter") == b"tput cols\r"
    assert keys.encode(b"  a\n\nb  Enter\n") == b"ab\r"
    assert keys.encode(b"Up Down", app_cursor=True) == b"\x1bOA\x1bOB"
    assert keys.encode(b"C-Up", app_cursor=True) == b"\x1b[1;5A"
    with pytest.raises(keys.BadKeys):
        keys.encode(b"a\x00b")
    with pytest.raises(keys.BadKeys):
        keys.encode(b"\xff")


def test_sizes_and_titles() -> None:
    assert parse_size("100 30\n") == (100, 30)
    for bad in ("0 10", "x y", "10", "10 10 10", "1001 10", "-1 5"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert clean_title("a\x1b[31mb\x9bc\u202ed\u2028e\x07") == "a[31mbcde"


class Pty:
    def __init__(self, columns: int = 80, lines: int = 24, scrollback: int = 100) -> None:
        master, self.slave = os.openpty()
        self.term = MachineTerminal(columns, lines, scrollback=scrollback)
        self.lines: list[str | None] = []
        self.term.subscribe(self.lines.append)
        sock = socket.socket(fileno=os.dup(self.term.stage_fd()))
        socket.send_fds(sock, [b"t"], [master])
        sock.close()
        os.close(master)
        self.term.start()

    def out(self, data: bytes) -> None:
        os.write(self.slave, data)

    def close(self) -> None:
        self.term.close()
        try:
            os.close(self.slave)
        except OSError:
            pass


@pytest.fixture
def pt() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def test_a_read_reflects_every_byte_written_before_it(pt: Pty) -> None:
    """No sleep between the guest's write and the read: the read drains
    the master itself (the reader thread has had no chance to)."""
    for i in range(300):
        pt.out(b"line-%d\r\n" % i)
        assert f"line-{i}\n" in pt.term.snapshot().text(), i


def test_screen_cursor_title_scrollback_alternate_screen(pt: Pty) -> None:
    pt.out(b"".join(b"%d\r\n" % i for i in range(130)))
    pt.out(b"\x1b]0;my\x1b[1mtitle\x07\x1b[32mgreen\x1b[0m")
    snap = pt.term.snapshot()
    rows = snap.text().split("\n")
    assert rows[0] == "107" and rows[22] == "129" and rows[23] == "green"
    assert snap.cursor == (23, 5)
    assert "\x1b" not in snap.title and snap.title.startswith("my")
    assert snap.ansi().split("\n")[23] == "\x1b[0;32mgreen\x1b[0m"
    back = pt.term.scrollback()
    assert len(back) == 100 and back[0] == "7" and back[-1] == "106"
    # The alternate screen (vi, less) and back: the main screen returns.
    pt.out(b"\x1b[?1049h\x1b[H\x1b[2Jfull-screen app")
    assert pt.term.snapshot().text().split("\n")[0] == "full-screen app"
    pt.out(b"\x1b[?1049l")
    assert pt.term.snapshot().text().split("\n")[23] == "green"
    assert pt.term.scrollback() == back  # nothing of the app's screen


def test_resize_sets_the_ptys_window_size(pt: Pty) -> None:
    pt.term.resize(100, 30)
    ws = fcntl.ioctl(pt.slave, termios.TIOCGWINSZ, b"\0" * 8)
    assert struct.unpack("HHHH", ws)[:2] == (30, 100)
    assert pt.term.snapshot().columns == 100
    assert any(line and " size 100 30" in line for line in pt.lines)


def test_a_megabyte_of_input_while_the_output_is_drained(pt: Pty) -> None:
    """1 MiB typed at once into a program that writes back what it reads
    (cat): the writer waits for the guest to read, and the guest waits for
    its output to be read, which the reader thread does meanwhile."""
    tty.setraw(pt.slave)
    got = bytearray()
    data = b"".join(b"%063d\r\n" % i for i in range(1 << 14))[: 1 << 20]

    def guest() -> None:
        while len(got) < len(data):
            chunk = os.read(pt.slave, 65536)
            got.extend(chunk)
            os.write(pt.slave, chunk)

    reader = threading.Thread(target=guest, daemon=True)
    writer = threading.Thread(target=pt.term.write, args=(data,), daemon=True)
    reader.start()
    writer.start()
    writer.join(60)
    reader.join(60)
    assert not writer.is_alive(), "the write of 1 MiB never finished"
    assert bytes(got) == data
    last = len(data) // 65 - 1  # the last whole line (65 bytes each)
    assert pt.term.snapshot().text().split("\n")[22] == f"{last:063d}"


def test_the_end_of_the_program() -> None:
    """Every slave closed: `exit`; the screen stays; writes fail; close()
    tells the listeners it is over."""
    p = Pty()
    tty.setraw(p.slave)
    p.out(b"last words")
    os.close(p.slave)
    deadline = time.monotonic() + 10
    while not any(line and " exit " in line for line in p.lines):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert p.term.snapshot().ended
    assert p.term.snapshot().text().startswith("last words")
    with pytest.raises(TerminalEnded):
        p.term.write(b"x")
    p.term.close()
    assert p.lines[-1] is None
    assert p.term.snapshot().text().startswith("last words")


def test_a_read_before_the_stage_sent_the_master_never_waits() -> None:
    """A snapshot before the stage's master arrived is the blank screen, at
    once: the export's thread reads it, and the stage may be waiting on
    that very export (its mount set-up) before it sends the master."""
    term = MachineTerminal(80, 24)
    done = threading.Event()

    def read() -> None:
        term.snapshot()
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert done.wait(5), "snapshot() waited for the stage's master"
    term.close()
