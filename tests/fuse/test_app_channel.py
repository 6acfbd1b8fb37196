"""The application channel of the README (examples/app_channel.py): a guest
program publishes named values under /run/umld/export and takes the ones
the host writes there, through inotify.  The host side is a separate
process (cat, sh -c 'echo ... >') of the machine's user reading and
writing the export, as root and as the ordinary user."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT, User, run

pytestmark = [pytest.mark.uses_ptrace, pytest.mark.uses_fuse]

EXAMPLE = ROOT / "examples" / "app_channel.py"


class Host:
    """Runs programs as the machine's user."""

    def __init__(self, who: str, user: User) -> None:
        self.user = None if who == "root" else user

    def argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.user is None else self.user.argv(argv)

    def cat(self, path: Path) -> str:
        return run(self.argv(["cat", str(path)]), timeout=30).stdout

    def write(self, path: Path, text: str) -> int:
        script = 'printf "%s\\n" "$1" > "$2"'
        return run(self.argv(["sh", "-c", script, "sh", text, str(path)]), timeout=30).returncode


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(params=["root", "user"])
def channel(
    request: pytest.FixtureRequest, ordinary_user: User, tmp_path: Path
) -> Iterator[tuple[Host, Path, subprocess.Popen[str]]]:
    host = Host(request.param, ordinary_user)
    base = tmp_path if host.user is None else ordinary_user.work
    mnt = base / f"mnt-{tmp_path.name}"
    mnt.mkdir()
    if host.user is not None:
        os.chown(mnt, host.user.uid, host.user.gid)
    umld = [sys.executable, "-m", "umld", "run", f"--mount={mnt}", "-C", "/", "--"]
    p = subprocess.Popen(
        host.argv([*umld, "python3", str(EXAMPLE)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    app = mnt / "export" / "ticker"
    try:
        wait_for(lambda: host.cat(app / "ctl") == "\n" or p.poll() is not None, "the program")
        assert p.poll() is None, p.communicate()
        yield host, app, p
    finally:
        # SIGTERM: umld ends the machine and removes its mount (SIGKILL
        # would leave a dead one).
        if p.poll() is None:
            p.terminate()
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=30)


def test_the_host_reads_values_the_program_publishes(
    channel: tuple[Host, Path, subprocess.Popen[str]],
) -> None:
    host, app, _ = channel
    assert host.cat(app / "interval") == "1.0\n"
    assert host.write(app / "interval", "0.05") == 0
    # The program took the new interval: its count moves on quickly.
    wait_for(lambda: int(host.cat(app / "count") or 0) >= 5, "the count to move")
    assert host.cat(app / "interval") == "0.05\n"


def test_the_program_takes_what_the_host_writes_and_refuses_bad_values(
    channel: tuple[Host, Path, subprocess.Popen[str]],
) -> None:
    host, app, p = channel
    assert host.write(app / "message", "hello from the host") == 0
    wait_for(lambda: host.cat(app / "message") == "hello from the host\n", "the message")
    assert host.write(app / "interval", "-1") == 0
    wait_for(lambda: "interval:" in host.cat(app / "errors"), "the refusal")
    assert host.cat(app / "errors") == (
        "interval: a number of seconds from 0.01 to 3600, not '-1'\n"
    )
    assert host.cat(app / "interval") == "1.0\n"  # the old value, put back
    assert host.write(app / "ctl", "stop") == 0
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.splitlines() == [
        "app_channel: serving /run/umld/export/ticker",
        "app_channel: message 'hello from the host'",
        "app_channel: stopped by the host",
    ]
