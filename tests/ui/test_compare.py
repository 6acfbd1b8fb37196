"""The same program and the same keys, natively in tmux and under
`umld run --tty`, screens compared (issue 12).

tmux is the reference terminal (tests/ui/reference.py): each program runs
natively in a detached tmux session of the guest's size, gets its keys
through `tmux send-keys`, and is read with `tmux capture-pane`; under umld
the same words are written to ``ui/keys`` and the screen read from
``ui/screen`` by a separate process.  After each step the test waits until
both screens are the same (trailing blanks normalised) and fails with both
when they do not become so.  Both sides get the same TERM, environment,
file names and working directory name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ui.reference import TMUX, Reference, cells, normal, wait_until

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.uses_fuse,
    pytest.mark.skipif(TMUX is None, reason="needs tmux (make install)"),
]

COLS, ROWS = 80, 24
TERM = "xterm-256color"


def words(text: str) -> list[str]:
    """``text`` as send-keys words: a space is the key Space (the
    separators of ui/keys are not typed, tmux's arguments are words)."""
    out: list[str] = []
    for i, part in enumerate(text.split(" ")):
        if i:
            out.append("Space")
        if part:
            out.append(part)
    return out


def environment(home: Path) -> dict[str, str]:
    return {
        "TERM": TERM,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PS1": "prompt$ ",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class Guest:
    """``argv`` under `umld run --tty --mount`, driven through ui/."""

    def __init__(self, workdir: Path, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.mnt = workdir / "mnt"
        self.mnt.mkdir()
        self.ui = self.mnt / "ui"
        cmd = [sys.executable, "-m", "umld", "run", "--tty", f"--mount={self.mnt}",
               "-C", str(cwd), "--", *argv]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=cwd,
        )
        wait_until(
            lambda: (self.ui / "screen").exists() or self.proc.poll() is not None,
            "the machine's ui/",
        )
        assert self.proc.poll() is None, self.proc.communicate()

    def screen(self) -> list[str]:
        r = subprocess.run(["cat", str(self.ui / "screen")], capture_output=True, text=True)
        return normal(r.stdout)

    def screen_ansi(self) -> str:
        r = subprocess.run(["cat", str(self.ui / "screen.ansi")], capture_output=True, text=True)
        return r.stdout

    def send_keys(self, *keys: str) -> None:
        with open(self.ui / "keys", "w") as f:
            f.write(" ".join(keys) + "\n")

    def close(self) -> None:
        # SIGTERM: umld ends the machine and removes its mount (SIGKILL
        # would leave a dead one).
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=30)


class Pair:
    """One program natively in tmux and in a machine, stepped together."""

    def __init__(self, tmp: Path, argv: Sequence[str], files: dict[str, str] | None = None) -> None:
        self.dirs = []
        for side in ("tmux", "umld"):
            # The same path length and name on both sides: programs show
            # their working directory and file names.
            d = tmp / side / "work"
            (d / "home").mkdir(parents=True)
            for name, text in (files or {}).items():
                (d / name).write_text(text)
            self.dirs.append(d)
        native, guest = self.dirs
        self.ref = Reference(tmp / "tmux", argv, cols=COLS, rows=ROWS,
                             env=environment(native / "home"), cwd=native)  # fmt: skip
        self.guest = Guest(tmp / "umld", argv, environment(guest / "home"), guest)

    def same(self, what: str, until: str = "", timeout: float = 20) -> list[str]:
        """Wait until both screens are the same and show ``until`` (the
        screens before the keys took effect are the same too); return it."""
        native_dir, guest_dir = (str(d) for d in self.dirs)

        def both() -> tuple[list[str], list[str]]:
            guest = [row.replace(guest_dir, native_dir) for row in self.guest.screen()]
            return self.ref.screen(), guest

        def done() -> bool:
            a, b = both()
            return a == b and bool(a) and until in "\n".join(a)

        def differ() -> str:
            a, b = both()
            return (
                f"{what} (showing {until!r}): the screens differ\n--- tmux\n"
                + "\n".join(a)
                + ("\n--- umld\n" + "\n".join(b))
            )

        wait_until(done, differ, timeout)
        return both()[0]

    def keys(self, *keys: str) -> None:
        self.ref.send_keys(*keys)
        self.guest.send_keys(*keys)

    def ended(self) -> None:
        """Both programs end (with status 0)."""
        wait_until(self.ref.dead, "the program in tmux to end")
        assert self.guest.proc.wait(timeout=30) == 0, self.guest.proc.communicate()

    def close(self) -> None:
        self.ref.close()
        self.guest.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for p in made:
        p.close()


def start(pairs: list[Pair], tmp: Path, argv: Sequence[str], **kw: dict[str, str]) -> Pair:
    p = Pair(tmp, argv, **kw)
    pairs.append(p)
    return p


PAGE = "".join(
    f"line {i}: mail the report to ana.lopez@example.org\n" if i == 57 else f"line {i}\n"
    for i in range(200)
)


def test_less_pages_and_searches(pair: list[Pair], tmp_path: Path) -> None:
    p = start(pair, tmp_path, ["less", "page.txt"], files={"page.txt": PAGE})
    assert p.same("less starts", "line 0")[0] == "line 0"
    p.keys("Space")
    p.same("a page down", "line 23")
    p.keys(*words("/example"), "Enter")
    screen = p.same("a search", "line 57: mail")
    assert screen[0].startswith("line 57: mail")
    p.keys("G")
    p.same("the end", "line 199")
    p.keys("g", "Down", "Down")
    p.same("back to the start, two lines down", "line 2\n")


def test_vi_edits_and_saves_a_file(pair: list[Pair], tmp_path: Path) -> None:
    p = start(pair, tmp_path, ["vi", "-u", "NONE", "-N", "notes.txt"],
              files={"notes.txt": "first line\n"})  # fmt: skip
    p.same("vi starts", "first line")
    p.keys("G", "o", *words("a second line, typed"), "Escape")
    p.same("a line typed", "typed")
    p.keys("g", "g", "d", "d", *words(":w"), "Enter")
    p.same("the first line deleted and the file written", "written")
    native, guest = p.dirs
    assert (native / "notes.txt").read_text() == "a second line, typed\n"
    # The guest wrote its copy (the default root is copy-on-write): the
    # file as the guest sees it, through the export, while it runs.
    seen = (p.guest.mnt / "fs" / str(guest / "notes.txt").lstrip("/")).read_text()
    assert seen == "a second line, typed\n"
    assert (guest / "notes.txt").read_text() == "first line\n"
    p.keys(*words(":q"), "Enter")
    p.ended()


def test_python_repl_with_readline_history(pair: list[Pair], tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin") or "python3"
    p = start(pair, tmp_path, [python, "-q"])
    p.same("the prompt", ">>>")
    p.keys(*words("x = 6 * 7"), "Enter", "x", "Enter")
    assert p.same("two lines run", "42")[-2] == "42"
    p.keys("Up", "Up", "Enter")
    p.same("the history recalled", ">>> x = 6 * 7\n>>>")
    p.keys(*words("print(x + 1)"), "Left", "Left", "BSpace", "2", "Enter")
    assert p.same("an edit in the middle of a line", "63")[-2] == "63"  # print(x +21)
    p.keys("C-d")
    p.ended()


# A job that says when it is continued (dash runs the trap once the
# current sleep is over).
JOB = "trap 'echo resumed' CONT\necho working\nwhile :; do sleep 0.2; done\n"


def test_bash_prompt_ctrl_c_and_job_control(pair: list[Pair], tmp_path: Path) -> None:
    p = start(pair, tmp_path, ["bash", "--norc", "--noprofile", "-i"], files={"job.sh": JOB})
    p.same("the prompt", "prompt$")
    p.keys(*words("echo $((6 * 7))"), "Enter")
    p.same("a command", "\n42\n")
    # The keys wait for the job to run (its line on both screens): a
    # Ctrl-C typed while bash still reads would reach bash, not the job.
    # (No word ends in ";": tmux takes that for a command separator.)
    p.keys(*words("sh -c 'echo started && exec sleep 1000'"), "Enter")
    p.same("a job runs", "\nstarted")
    p.keys("C-c")
    p.same("Ctrl-C ends the foreground job", "^C\nprompt$")
    p.keys(*words("sh job.sh"), "Enter")
    p.same("another job runs", "\nworking")
    p.keys("C-z")
    p.same("Ctrl-Z stops it", "Stopped")
    p.keys("jobs", "Enter")
    p.same("jobs lists it", "prompt$ jobs\n[1]+  Stopped")
    p.keys("fg", "Enter")
    p.same("fg continues it", "\nresumed")
    p.keys("C-c")
    p.same("Ctrl-C ends it", "resumed\n^C\nprompt$")
    p.keys(*words("exit 0"), "Enter")
    p.ended()


def test_top_batch_and_interactive(pair: list[Pair], tmp_path: Path) -> None:
    p = start(pair, tmp_path, ["bash", "--norc", "--noprofile", "-i"])
    p.same("the prompt", "prompt$")
    # The processes and the load differ (a machine has its own processes;
    # "%Cpu(s):100.0" has no space at full load): compare what does not.
    p.keys(*words("top -b -n 1 | head -7 | awk 'NR<7{print substr($0,1,3)} NR==7'"), "Enter")
    screen = p.same("top -b -n 1's header", "PID USER")
    assert any("PID USER" in row for row in screen)
    p.keys("clear", "Enter", "top", "Enter")
    for side in (p.ref, p.guest):
        wait_until(_shows(side, "PID USER"), "top's process list")
    p.keys("h")
    screen = p.same("top's help screen", "Help for Interactive Commands")
    assert any("Help for Interactive Commands" in row for row in screen)
    p.keys("q")  # leaves the help screen
    for side in (p.ref, p.guest):
        wait_until(_shows(side, "PID USER"), "top's process list again")
    p.keys("q")
    # Back at the prompt (top's last screen above it differs).
    for side in (p.ref, p.guest):
        wait_until(_at_prompt(side), "the prompt after top")


def _shows(side: Reference | Guest, text: str) -> Callable[[], bool]:
    return lambda: any(text in row for row in side.screen())


def _at_prompt(side: Reference | Guest) -> Callable[[], bool]:
    return lambda: side.screen()[-1:] == ["prompt$"]


CURSES = textwrap.dedent(
    """
    import curses

    def main(w):
        curses.start_color()
        curses.use_default_colors()
        pairs = [(curses.COLOR_RED, -1), (curses.COLOR_GREEN, curses.COLOR_BLACK),
                 (curses.COLOR_YELLOW, curses.COLOR_BLUE),
                 (curses.COLOR_WHITE, curses.COLOR_MAGENTA)]
        for i, (fg, bg) in enumerate(pairs, 1):
            curses.init_pair(i, fg, bg)
            w.addstr(i, 2, f"colour pair {i}", curses.color_pair(i))
        w.addstr(6, 2, "bold", curses.A_BOLD)
        w.addstr(6, 8, "reverse", curses.A_REVERSE)
        w.addstr(8, 2, "press a key")
        w.refresh()
        k = w.getkey()
        w.addstr(9, 2, f"got {k!r}", curses.color_pair(3) | curses.A_BOLD)
        w.refresh()
        w.getkey()

    curses.wrapper(main)
    """
)


def test_a_curses_program_with_colours(pair: list[Pair], tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin") or "python3"
    p = start(pair, tmp_path, [python, "colours.py"], files={"colours.py": CURSES})
    p.same("the colours drawn", "press a key")
    p.keys("x")
    p.same("a key read", "got 'x'")

    def colours() -> tuple[object, object]:
        return (
            cells(p.ref.screen_ansi(), COLS, ROWS),
            cells(p.guest.screen_ansi(), COLS, ROWS),
        )

    wait_until(lambda: colours()[0] == colours()[1], lambda: _cell_diff(*colours()))
    native = colours()[0]
    assert isinstance(native, list)
    assert native[1][2][1] == "red" and native[3][2][2] == "blue" and native[6][2][3]


def _cell_diff(a: object, b: object) -> str:
    assert isinstance(a, list) and isinstance(b, list)
    for y, (ra, rb) in enumerate(zip(a, b, strict=True)):
        for x, (ca, cb) in enumerate(zip(ra, rb, strict=True)):
            if ca != cb:
                return f"cells differ first at row {y + 1} column {x + 1}: tmux {ca}, umld {cb}"
    return "no difference"


COMPOSE = textwrap.dedent(
    """
    print("Compose a message")
    to = input("To: ")
    subject = input("Subject: ")
    print(f"ready to send to <{to}> about {subject!r}")
    input("press Enter to quit")
    """
)


def test_copy_from_one_machines_screen_into_anothers_keys(tmp_path: Path) -> None:
    """The seed's scenario: machine A shows a page with an address (less);
    machine B asks for a recipient.  A host script that reads only A's
    ui/screen and writes only B's ui/keys fills it in."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "page.txt").write_text(PAGE)
    (tmp_path / "b" / "compose.py").write_text(COMPOSE)
    env = environment(tmp_path)
    a = Guest(tmp_path / "a", ["less", "+57", "page.txt"], env, tmp_path / "a")
    b = Guest(tmp_path / "b", ["python3", "compose.py"], env, tmp_path / "b")
    try:
        wait_until(lambda: "To:" in "\n".join(b.screen()), "B's form")
        wait_until(lambda: "@" in "\n".join(a.screen()), "A's page")
        script = textwrap.dedent(
            """
            import re, sys
            a_screen, b_keys = sys.argv[1], sys.argv[2]
            text = open(a_screen).read()
            address = re.search(r"[\\w.+-]+@[\\w-]+(?:\\.[\\w-]+)+", text).group(0)
            with open(b_keys, "w") as f:
                f.write(address + " Enter\\n")
            """
        )
        r = subprocess.run(
            [sys.executable, "-c", script, str(a.ui / "screen"), str(b.ui / "keys")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "Subject:" in "\n".join(b.screen()), "B's next question")
        b.send_keys("report", "Space", "due", "Enter")
        wait_until(
            lambda: (
                "ready to send to <ana.lopez@example.org> about 'report due'"
                in "\n".join(b.screen())
            ),
            lambda: "B's screen:\n" + "\n".join(b.screen()),
        )
    finally:
        a.close()
        b.close()


def test_the_reference_itself_sees_a_difference(tmp_path: Path) -> None:
    """The comparison can fail: two different programs never compare the
    same (a guard against a harness that reads the same side twice)."""
    ref = Reference(tmp_path, ["sh", "-c", "echo native; sleep 100"], env=environment(tmp_path))
    try:
        wait_until(lambda: ref.screen() == ["native"], "the reference")
        assert ref.screen() != normal("guest\n")
        assert re.fullmatch(r"\d+", str(ref.cursor()[0]))
        assert os.path.exists(ref.socket)
    finally:
        ref.close()
