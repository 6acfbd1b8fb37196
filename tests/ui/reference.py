"""tmux as the reference terminal: a program run natively in a detached
tmux session of a given size, driven with `tmux send-keys` and read with
`tmux capture-pane`, to compare with the same program under
`umld run --tty` read through the export's ``ui/`` files.

Each Reference has a tmux server of its own (``-L``, a socket in the
test's directory) with no user configuration (``-f /dev/null``), so the
tests neither see nor disturb a user's tmux.  Screens are compared as
lists of rows with trailing blanks removed and trailing empty rows
dropped; colours by feeding both sides' ANSI text to pyte (the terminal
emulator umld uses) and comparing its cells.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TMUX = shutil.which("tmux")


def normal(text: str) -> list[str]:
    """Rows of a screen: trailing blanks removed, trailing empty rows
    dropped."""
    rows = [row.rstrip() for row in text.split("\n")]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def wait_until(
    pred: Callable[[], bool], what: str | Callable[[], str], timeout: float = 20
) -> None:
    """Poll ``pred`` until it holds; fail with ``what`` (or what it returns)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what if isinstance(what, str) else what()}"
            )
        time.sleep(0.02)


class Reference:
    """One program in a detached tmux session of ``cols`` x ``rows``."""

    def __init__(
        self,
        workdir: Path,
        argv: Sequence[str],
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        if TMUX is None:
            raise RuntimeError("tmux is not installed (make install)")
        self.socket = workdir / "tmux.sock"
        self.cols, self.rows = cols, rows
        # The session's environment is exactly env: tmux passes its own
        # environment to the pane's program (update-environment aside), so
        # the server is started with it.
        self._env = dict(env or {})
        # One invocation: the options hold for the session's first pane.
        # TERM in the pane is default-terminal (tmux sets it), here the
        # TERM the tests give the guest; remain-on-exit keeps the final
        # screen of a program that ended (a detached session keeps -x/-y;
        # resize-window changes it).
        self._tmux(
            "start-server", ";",
            "set-option", "-g", "default-terminal", self._env.get("TERM", "xterm-256color"), ";",
            "set-option", "-g", "remain-on-exit", "on", ";",
            "set-option", "-g", "status", "off", ";",
            "new-session", "-d", "-s", "ref", "-x", str(cols), "-y", str(rows),
            "-c", str(cwd or workdir), "--", *argv,
        )  # fmt: skip

    def _tmux(self, *args: str) -> str:
        r = subprocess.run(
            [TMUX or "tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=self._env,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def send_keys(self, *words: str) -> None:
        """The words as `tmux send-keys` reads them (key names or text)."""
        self._tmux("send-keys", "-t", "ref", *words)

    def screen(self) -> list[str]:
        return normal(self._tmux("capture-pane", "-p", "-t", "ref"))

    def screen_ansi(self) -> str:
        """The visible screen with colours and attributes (`capture-pane -e`)."""
        return self._tmux("capture-pane", "-p", "-e", "-t", "ref")

    def cursor(self) -> tuple[int, int]:
        """(row, column), 1-based, as ui/cursor says it."""
        x, y = self._tmux("display-message", "-p", "-t", "ref", "#{cursor_x} #{cursor_y}").split()
        return int(y) + 1, int(x) + 1

    def title(self) -> str:
        return self._tmux("display-message", "-p", "-t", "ref", "#{pane_title}").rstrip("\n")

    def resize(self, cols: int, rows: int) -> None:
        self._tmux("resize-window", "-t", "ref", "-x", str(cols), "-y", str(rows))
        self.cols, self.rows = cols, rows

    def dead(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "ref", "#{pane_dead}").strip() == "1"

    def close(self) -> None:
        subprocess.run(
            [TMUX or "tmux", "-S", str(self.socket), "kill-server"],
            capture_output=True,
            timeout=30,
            env=self._env,
        )


def cells(ansi: str, cols: int, rows: int) -> list[list[tuple[str, str, str, bool, bool]]]:
    """(char, fg, bg, bold, reverse) of every cell, from ANSI text such as
    `capture-pane -e` or ui/screen.ansi prints, through pyte."""
    import pyte

    screen = pyte.Screen(cols, rows)
    stream = pyte.Stream(screen)
    # Each line is a row that starts at column 1 in the default attributes
    # (placed, not fed with its newline: the last one would scroll).
    for y, line in enumerate(ansi.split("\n")[:rows]):
        stream.feed(f"\x1b[0m\x1b[{y + 1};1H{line}")
    return [
        [
            (c.data, c.fg, c.bg, c.bold, c.reverse)
            for c in (screen.buffer[y][x] for x in range(cols))
        ]
        for y in range(rows)
    ]
