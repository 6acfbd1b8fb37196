"""The caller's terminal, through a real one: tmux runs a shell in a
pseudo-terminal, the tests type into it and read its screen.

A guest never types into the caller's shell (TIOCSTI is refused), a guest
without the terminal is not in its session (/dev/tty is ENXIO), and an
interactive guest shell keeps its job control.  Each runs as root and as
an ordinary user; each shows first that the same thing natively does what
the guest must not (so the test can fail).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User, wait_for

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    """A tmux server (as ``user``, or as us) with one window running a
    plain interactive bash."""

    def __init__(self, work: Path, user: User | None) -> None:
        self.work = work
        self.user = user
        self.sock = work / "tmux.sock"

    def _argv(self, *args: str) -> list[str]:
        argv = ["tmux", "-S", str(self.sock), *args]
        return self.user.argv(argv, TERM="xterm") if self.user else argv

    def tmux(self, *args: str) -> str:
        r = subprocess.run(self._argv(*args), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def start(self) -> None:
        shell = "env PS1='$ ' HISTFILE=/dev/null bash --norc --noprofile"
        self.tmux("new-session", "-d", "-x", "150", "-y", "50", "-c", str(self.work), shell)
        wait_for(lambda: self.screen().rstrip().endswith("$"), "the shell's prompt")

    def type(self, line: str) -> None:
        """Type ``line`` and Enter."""
        self.tmux("send-keys", "-l", line)
        self.tmux("send-keys", "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", key)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-300")

    def wait_screen(self, text: str, what: str = "") -> str:
        return wait_for(lambda: text in self.screen() and self.screen(), what or repr(text))

    def settle(self, mark: str) -> None:
        """Run ``echo MARK`` and wait for its output: whatever the shell had
        queued before (typed, or pushed into its input) has run by then."""
        self.type(f"echo {mark}-$((6*7))")
        self.wait_screen(f"{mark}-42")

    def close(self) -> None:
        subprocess.run(self._argv("kill-server"), capture_output=True, timeout=30)


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> User | None:
    """The test runs as root (None) and as the ordinary user."""
    if request.param == "root":
        return None
    return ordinary_user


@pytest.fixture
def tmux(who: User | None, tmp_path: Path) -> Iterator[Tmux]:
    if who is None:
        work = tmp_path
    else:
        work = who.work / f"tty-{tmp_path.name}"
        work.mkdir()
        import os

        os.chown(work, who.uid, who.gid)
    t = Tmux(work, who)
    t.start()
    try:
        yield t
    finally:
        t.close()


def _build(work: Path, name: str, user: User | None) -> Path:
    out = work / name
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(GUEST_SRC / f"{name}.c")],
        check=True,
    )
    if user is not None:
        import os

        os.chown(out, user.uid, user.gid)
    return out


def _umld(backend: str, work: str, *options: str) -> str:
    argv: Sequence[str] = [
        sys.executable,
        "-m",
        "umld",
        "run",
        f"--tracer={backend}",
        f"--bind={work}",
        *options,
        "--",
    ]
    return shlex.join(argv)


def test_tiocsti_types_nothing_into_the_callers_shell(
    backend: str, tmux: Tmux, who: User | None
) -> None:
    """A guest pushes "echo INJECTED > FILE" + newline into the terminal it
    shares with the caller's shell: natively the shell runs it once the
    program exits; under umld the ioctl fails with EPERM and nothing is
    typed (the file never appears, even after the shell has read all it
    had)."""
    work = tmux.work
    probe = _build(work, "tiocsti", who)
    native, guest = work / "native-injected", work / "guest-injected"
    tmux.type(f"{probe} $'echo INJECTED > {native}\\n' {work}/native.result")
    wait_for(native.exists, "the native injection to run (TIOCSTI refused on this host?)")
    assert (work / "native.result").read_text() == "ok\n"

    inject = f"$'echo INJECTED > {guest}\\n'"
    tmux.type(f"{_umld(backend, str(work))} {probe} {inject} {work}/guest.result")
    wait_for((work / "guest.result").exists, "the guest's probe")
    tmux.settle("after-umld")
    assert (work / "guest.result").read_text() == "errno=1\n"  # EPERM
    assert not guest.exists(), tmux.screen()


def test_a_guest_without_the_terminal_is_not_in_its_session(
    backend: str, tmux: Tmux, who: User | None
) -> None:
    """umld run with stdin, stdout and stderr away from the terminal: the
    guest gets a session of its own, so /dev/tty (the caller's terminal,
    natively) fails with ENXIO."""
    work = tmux.work
    script = (
        "import os, sys\n"
        "try:\n"
        "    os.close(os.open('/dev/tty', os.O_RDWR)); got = 'opened'\n"
        "except OSError as e:\n"
        "    got = 'errno=%d' % e.errno\n"
        "open(sys.argv[1], 'w').write('%s session=%d\\n' % (got, os.getsid(0) == os.getpid()))\n"
    )
    (work / "tty.py").write_text(script)
    cmd = f"/usr/bin/python3 {work}/tty.py"
    tmux.type(f"{cmd} {work}/native.result < /dev/null > /dev/null 2>&1")
    native = wait_for(
        lambda: (work / "native.result").exists() and (work / "native.result").read_text(), "native"
    )
    assert native == "opened session=0\n"
    tmux.type(f"{_umld(backend, str(work))} {cmd} {work}/guest.result < /dev/null > /dev/null 2>&1")
    guest = wait_for(
        lambda: (work / "guest.result").exists() and (work / "guest.result").read_text(), "guest"
    )
    assert guest == "errno=6 session=0\n"  # ENXIO; the session is umld-sandbox's


def test_interactive_bash_keeps_job_control(backend: str, tmux: Tmux, who: User | None) -> None:
    """umld run -- bash in the terminal: Ctrl-C interrupts a sleep, Ctrl-Z
    stops one and fg resumes it, as in a native bash."""
    work = tmux.work
    tmux.type(f"PS1='G> ' {_umld(backend, str(work))} /bin/bash --norc --noprofile")
    tmux.wait_screen("G> ", "the guest's prompt")
    # (A list like `sleep 123; echo $?` would not go on after Ctrl-C: bash
    # drops the rest of a list whose command died of SIGINT.)
    tmux.type("sleep 123")
    wait_for(lambda: _running("sleep 123"), "the guest's sleep")
    tmux.key("C-c")
    wait_for(lambda: not _running("sleep 123"), "Ctrl-C to end the sleep")
    tmux.type("echo rc=$?")
    tmux.wait_screen("rc=130", "the sleep's status")

    tmux.type("sleep 124")
    wait_for(lambda: _running("sleep 124"), "the second sleep")
    tmux.key("C-z")
    tmux.wait_screen("Stopped", "Ctrl-Z to stop it")
    wait_for(lambda: _state("sleep 124") in ("T", "t"), "the sleep to be stopped")
    tmux.type("fg")
    wait_for(lambda: _state("sleep 124") in ("S", "R"), "fg to continue it")
    tmux.key("C-c")
    wait_for(lambda: not _running("sleep 124"), "Ctrl-C after fg")
    tmux.type("echo fg=$?")
    tmux.wait_screen("fg=130", "the status after fg")
    tmux.type("exit")
    tmux.settle("back-home")


def _pids(cmdline: str) -> list[int]:
    r = subprocess.run(["pgrep", "-x", "-f", cmdline], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _running(cmdline: str) -> bool:
    return bool(_pids(cmdline))


def _state(cmdline: str) -> str:
    for pid in _pids(cmdline):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0].decode()
        except OSError:
            continue
    return ""
