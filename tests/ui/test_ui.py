"""A machine's own terminal (``--tty``): its ``ui/`` files and ``umld attach``.

Real programs under real ptrace on the guest's own pty; the export is
read and written by separate processes of the machine's user, as root
and as the ordinary user.  The reference terminal is tmux (keys: the
bytes tmux send-keys types, for every key name, against ours).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kernel.test_cow_root import Who
from tests.ui.conftest import Tmux, TtyMachine, mounted, wait_for

pytestmark = [pytest.mark.uses_fuse, pytest.mark.uses_ptrace]

Start = Callable[..., TtyMachine]

#: Raw mode, then every byte read appended to FILE; prints READY first
#: (with "app": after asking for application cursor keys, DECCKM).
DUMP = r"""
import os, sys, termios, tty
out, mode = sys.argv[1], sys.argv[2]
tty.setraw(0)
if mode == "app":
    os.write(1, b"\033[?1h")
os.write(1, b"READY\r\n")
with open(out, "ab", buffering=0) as f:
    while True:
        data = os.read(0, 4096)
        if not data:
            break
        f.write(data)
"""

#: Every key name of the issue, modifiers, and words that are text.
KEY_WORDS = [
    "Enter", "Space", "Escape", "Tab", "BSpace", "Up", "Down", "Left", "Right",
    "Home", "End", "PageUp", "PageDown", "PgUp", "PgDn", "NPage", "PPage",
    *[f"F{n}" for n in range(1, 13)],
    *[f"C-{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
    "M-x", "M-Enter", "M-Up", "C-Up", "S-Up", "C-M-Up", "S-F1", "C-F5", "M-Home",
    "DC", "IC", "Delete", "Insert", "BTab", "M-BTab", "C-Space", "C-@", "^a", "^^",
    "C-]", "C-?", "C--", "C-\\", "C-M-a", "M-é", "é", "0x41", "0x263a", "KP1", "KPEnter",
    "enter", "ESCAPE", "S-a", "C-S-a", "S-Enter", "C-Enter", "C-1", "C-BSpace",
    "None", "Any", "F13", "hello", "tput", "x-y", "C-",
]  # fmt: skip


def _tmux_bytes(tmux: Callable[..., Tmux], tmp: Path, words: list[str], mode: str) -> bytes:
    out = tmp / f"tmux-{mode}.bin"
    out.touch()
    t = tmux(f"{sys.executable} -c '{DUMP}' {out} {mode}")
    wait_for(lambda: "READY" in t.capture(), "the dumper in tmux")
    t.send_keys(*words, "END.")
    return wait_for(lambda: out.read_bytes() if out.read_bytes().endswith(b"END.") else b"",
                    "tmux's keys")  # fmt: skip


@pytest.mark.parametrize("mode", ["normal", "app"])
def test_keys_are_what_tmux_send_keys_types(
    who: Who, tty_machine: Start, tmux: Callable[..., Tmux], tmp_path: Path, mode: str
) -> None:
    """ui/keys with every named key (and modifiers, and words that are
    text) types exactly the bytes tmux send-keys types for the same
    words, with and without application cursor keys."""
    if who.name == "user" and mode == "app":
        pytest.skip("the key table is the same for every user")
    words = KEY_WORDS
    native = _tmux_bytes(tmux, tmp_path, words, mode)
    m = tty_machine(who, [sys.executable, "-c", DUMP, "shared/keys.bin", mode])
    m.wait_screen("READY")
    # One write of every word, separated by spaces and newlines (neither typed).
    m.keys(" ".join(words[:40]) + "\n" + " ".join(words[40:]) + " END.\n")
    got = wait_for(
        lambda: (
            (m.base / "shared/keys.bin").read_bytes().endswith(b"END.")
            and (m.base / "shared/keys.bin").read_bytes()
        ),
        "the guest's keys",
    )
    assert got == native, f"\numld: {got!r}\ntmux: {native!r}"


def test_bad_keys_are_refused_and_type_nothing(who: Who, tty_machine: Start) -> None:
    """Not UTF-8, or a NUL: EINVAL, nothing typed, the reason in events."""
    m = tty_machine(who, [sys.executable, "-c", DUMP, "shared/keys.bin", "normal"])
    m.wait_screen("READY")
    assert m.write("ui/keys", b"abc \xff\xfe Enter") == "EINVAL"
    assert m.write("ui/keys", b"abc\x00def") == "EINVAL"
    m.keys("ok Enter")
    wait_for(lambda: (m.base / "shared/keys.bin").read_bytes() == b"ok\r", "the good keys")
    events = m.op("stream", "ui/events")["ok"]
    assert "refused ui/keys: not UTF-8" in events and "NUL" in events, events
    assert "ui/keys: refused" in m.op("stream", "events")["ok"]


def test_the_terminal_is_the_guests_own(who: Who, tty_machine: Start) -> None:
    """tty prints /dev/pts/0 of the guest's own devpts, which holds no
    other terminal; the guest owns it; it is its controlling terminal
    (its own session); TIOCSTI into it is refused as into any terminal."""
    script = (
        "tty; ls /dev/pts; stat -c 'owner=%u' /dev/pts/0; id -u; "
        "ps -o sid=,tty= -p $$; "
        'python3 -c \'import fcntl,termios\ntry: fcntl.ioctl(0, termios.TIOCSTI, b"x")\n'
        'except OSError as e: print("TIOCSTI", e.errno)\'; echo END; sleep 600'
    )
    m = tty_machine(who, ["/bin/sh", "-c", script])
    screen = m.wait_screen("END")
    lines = screen.split("\n")
    assert lines[0] == "/dev/pts/0", screen
    assert lines[1].split() == ["0", "ptmx"], screen
    uid = lines[3].strip()
    assert lines[2] == f"owner={uid}", screen
    assert lines[4].split()[1] == "pts/0", screen
    assert "TIOCSTI 1" in screen, screen  # EPERM


def test_every_ui_file(who: Who, tty_machine: Start) -> None:
    """screen, screen.ansi (colours), cursor, size, title (sanitised:
    escape sequences in a title never reach the host), events, scrollback
    and frame, all from a guest that prints colours, a title, and more
    lines than the screen holds."""
    script = (
        "seq 1 40; printf '\\033[31mred\\033[0m \\033[1;44mbold\\033[0m\\n'; "
        "printf '\\033]0;T\\033[31mi\\302\\233tle\\033]52;c;aGk=\\007\\n'; "
        "printf 'at end'; sleep 600"
    )
    m = tty_machine(who, ["/bin/sh", "-c", script])
    screen = m.wait_screen("at end")
    rows = screen.split("\n")
    assert len(rows) == 25 and rows[-1] == "", rows  # 24 rows, each with a newline
    assert rows[23] == "at end", rows
    assert rows[21] == "red bold" and rows[22] == "", rows  # the title's line is empty
    assert rows[0] == "20", rows  # 1..40, red bold, the title's line, "at end"
    assert m.read("ui/cursor") == "24 7\n"
    assert m.read("ui/size") == "80 24\n"
    title = m.read("ui/title")
    assert all(c == "\n" or c.isprintable() for c in title), repr(title)
    assert "\x1b" not in title and "\x9b" not in title and title.startswith("T"), repr(title)
    for text in (screen, m.read("ui/screen.ansi"), m.read("ui/frame")):
        assert "\x1b]" not in text and "\x07" not in text and "\x9b" not in text
    ansi = m.read("ui/screen.ansi").split("\n")
    assert ansi[21] == "\x1b[0;31mred\x1b[0m \x1b[0;1;44mbold\x1b[0m", repr(ansi[21])
    assert ansi[0] == "20"
    assert m.read("ui/scrollback").split("\n")[:3] == ["1", "2", "3"]
    assert m.read("ui/scrollback").split("\n")[17] == "18"
    events = m.op("stream", "ui/events")["ok"]
    assert " screen rows=" in events and " title T" in events, events
    frame = m.read("ui/frame")
    assert frame.startswith("\x1b[?25l\x1b[1;1H") and frame.endswith("\x1b[24;7H\x1b[?25h")
    # Read-only files refuse writes; input and keys refuse reads.
    assert m.write("ui/screen", "x") == "EACCES"
    assert m.op("read", "ui/input").get("err") == "EACCES"
    assert m.op("read", "ui/keys").get("err") == "EACCES"


def test_a_read_sees_every_byte_written_before_it(who: Who, tty_machine: Start) -> None:
    """No stale screen: once the guest's write returned (it says so in a
    file), the next read of ui/screen shows it, every time."""
    script = (
        "i=0; while [ $i -lt 30 ]; do i=$((i+1)); read x; echo line-$i-$x; "
        "echo $i > shared/n; done; sleep 600"
    )
    m = tty_machine(who, ["/bin/bash", "-c", script])
    n = m.base / "shared/n"
    for i in range(1, 31):
        m.keys(f"v{i} Enter")
        wait_for(lambda i=i: n.exists() and n.read_text() == f"{i}\n", f"write {i}")
        assert f"line-{i}-v{i}" in m.screen()


def test_resize_reaches_the_program(who: Who, tty_machine: Start) -> None:
    """A write of ui/size resizes the terminal: tput cols and lines say
    the new size (SIGWINCH reached a running program too); a bad size is
    EINVAL, the old size kept, the reason in events."""
    m = tty_machine(who, ["/bin/bash", "--norc", "--noprofile", "-i"], "--hostname=ui")
    m.wait_screen("bash-")
    m.keys("trap Space 'echo Space WINCH' Space WINCH Enter")
    assert m.write("ui/size", "100 30\n") is None
    assert m.read("ui/size") == "100 30\n"
    m.keys("tput Space cols Enter tput Space lines Enter")
    screen = m.wait_screen(lambda s: "\n100\n" in s and "\n30\n" in s)
    assert "WINCH" in screen
    assert len(screen.split("\n")) == 31
    for bad in ("0 10\n", "abc\n", "100\n", "5000 20\n"):
        assert m.write("ui/size", bad) == "EINVAL", bad
    assert m.read("ui/size") == "100 30\n"
    assert "refused ui/size" in m.op("stream", "ui/events")["ok"]


def test_a_megabyte_typed_at_once(who: Who, tty_machine: Start) -> None:
    """1 MiB written to ui/input in one write(2) reaches the program whole,
    and with echo on (the reader drains the echo while the writer waits)."""
    data = bytes((i * 7 + i // 253) % 94 + 33 for i in range(1 << 20))
    # Typed once the terminal is raw: before, the line discipline would
    # take it as lines of at most 4095 bytes and drop the rest.
    script = "stty raw -echo; echo READY; head -c 1048576 > shared/got; echo GOT; sleep 600"
    m = tty_machine(who, ["/bin/sh", "-c", script])
    m.wait_screen("READY")
    m.input(data)
    m.wait_screen("GOT", timeout=60)
    assert (m.base / "shared/got").read_bytes() == data
    lines = b"".join(b"%063d\n" % i for i in range(1 << 14))  # 1 MiB of lines, echoed
    m2 = tty_machine(who, ["/bin/sh", "-c", "wc -c > shared/wc; echo WC; sleep 600"])
    m2.input(lines + b"\x04")
    m2.wait_screen("WC", timeout=120)
    assert (m2.base / "shared/wc").read_text().strip() == str(len(lines))


def test_program_exit(who: Who, tty_machine: Start) -> None:
    """When the program ends the machine ends: a follower of ui/events
    sees `exit` and then end of file, umld exits with the program's status,
    and the ui/ files are gone with the export (ENOENT)."""
    m = tty_machine(who, ["/bin/sh", "-c", "echo bye; read x; exit 3"])
    m.wait_screen("bye")
    with subprocess.Popen(
        m.who.argv(["cat", str(m.mnt / "ui/events")]),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as follower:
        try:
            # The key ends the program, and with it the export: the write
            # is still answered (the export drains writes before it goes).
            m.keys("Enter")
            out, _ = follower.communicate(timeout=30)
        finally:
            follower.kill()
    assert b" exit " in out, out
    assert m.proc.wait(30) == 3
    assert not mounted(m.mnt)
    assert m.op("read", "ui/screen").get("err") == "ENOENT"


def _read_pty(fd: int, until: Callable[[bytes], bool], seen: bytearray, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until(bytes(seen)):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; the attached terminal got:\n{bytes(seen)[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                return


def test_attach_never_passes_guest_escape_sequences(who: Who, tty_machine: Start) -> None:
    """umld attach draws from the emulator: a guest that writes an OSC 52
    clipboard write, a title and a report request never gets them to the
    attached terminal (read here from a pty of our own); keys typed there
    reach the program; C-] detaches and the program goes on."""
    evil = (
        "printf '\\033]52;c;ZXZpbA==\\007\\033]0;EVIL\\007\\033[21t\\033]2;X\\033\\\\'; "
        "echo shown; read line; echo got-$line; sleep 600"
    )
    m = tty_machine(who, ["/bin/sh", "-c", evil])
    m.wait_screen("shown")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    os.set_blocking(master, False)
    attach = subprocess.Popen(
        m.who.argv([sys.executable, "-m", "umld", "attach", "--mount", str(m.mnt)]),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        _read_pty(master, lambda b: b"shown" in b, seen, 30)
        os.write(master, b"typed\r")
        _read_pty(master, lambda b: b"got-typed" in b, seen, 30)
        os.write(master, b"\x1d")
        _read_pty(master, lambda b: b"detached" in b, seen, 30)
        assert attach.wait(30) == 0
    finally:
        if attach.poll() is None:
            attach.kill()
        os.close(master)
    out = bytes(seen)
    for bad in (b"\x1b]", b"52;", b"EVIL", b"\x1b[21t", b"\x07"):
        assert bad not in out, (bad, out[-2000:])
    assert "got-typed" in m.screen()
    assert m.proc.poll() is None  # the program goes on


def test_attach_through_a_tmux_pane(
    who: Who, tty_machine: Start, tmux: Callable[..., Tmux]
) -> None:
    """umld attach in a tmux pane: the screen is drawn there, keys typed
    there reach the program, the size follows the pane, C-] detaches
    (the program goes on), and attaching again draws the screen again."""
    m = tty_machine(who, ["/bin/bash", "--norc", "--noprofile", "-i"], "--hostname=att")
    m.wait_screen("bash-")
    attach = " ".join(m.who.argv([sys.executable, "-m", "umld", "attach", "--mount", str(m.mnt)]))
    t = tmux(
        f"{attach}; echo ATTACH-ENDED $?; read x; {attach}; echo AGAIN-ENDED $?; sleep 600",
        90, 20,
    )  # fmt: skip
    wait_for(lambda: m.read("ui/size") == "90 20\n", "the size to follow the pane")
    t.send_keys("echo one-two", "Enter")
    wait_for(lambda: "\none-two" in t.capture(), "the pane to show the output")
    assert "\none-two" in m.screen()
    t.send_keys("C-]")
    wait_for(lambda: "ATTACH-ENDED 0" in t.capture(), "attach to end")
    assert m.proc.poll() is None
    m.keys("echo Space three Enter")
    m.wait_screen("\nthree")
    t.send_keys("Enter")  # attach again
    wait_for(lambda: "\nthree" in t.capture() and "\none-two" in t.capture(), "the redraw")
    assert "ATTACH-ENDED" not in t.capture()  # drawn over, on the alternate screen
    t.send_keys("C-]")
    wait_for(lambda: "AGAIN-ENDED 0" in t.capture(), "attach to end again")
    assert m.proc.poll() is None


def test_run_tty_on_a_terminal_is_run_and_attach(tmux: Callable[..., Tmux], tmp_path: Path) -> None:
    """umld run --tty in a terminal (a tmux pane): the program's screen is
    drawn there from the emulator, the caller's terminal is never the
    guest's (tty says /dev/pts/0 of its own), keys work, and umld exits
    with the program's status."""
    t = tmux(
        f"{sys.executable} -m umld run --tty -- /bin/sh -c 'tty; read x; echo got-$x; exit 5';"
        " echo UMLD-EXIT=$?; sleep 600",
        80, 24,
    )  # fmt: skip
    wait_for(lambda: "/dev/pts/0" in t.capture(), "the guest's tty")
    t.send_keys("hello", "Enter")
    wait_for(lambda: "UMLD-EXIT=5" in t.capture(), "umld to end")
    assert "got-hello" in t.capture()


def test_attach_needs_a_terminal_and_a_tty_machine(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "umld", "attach", "--mount", str(tmp_path)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "needs a terminal" in r.stderr, r
