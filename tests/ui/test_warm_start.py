"""`umld run` started warm (the ``umld`` front end, c_tracer/front.c, and
the warm umld, umld/_warm.py).

Differential: the same command with the same caller state, cold
(UMLD_WARM=0: the front end runs Python's umld itself) and warm
(UMLD_WARM=1: a warm umld must serve it, or the front end fails), gives
the same output and status.  The adversarial half: a caller in another
network namespace is refused, another user cannot reach the socket, and a
killed front end leaves no guest behind.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_BINDS, User, live_pids_with, wait_for

pytestmark = pytest.mark.uses_ptrace

FRONT = Path(sys.executable).with_name("umld")


def _is_front_end(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


if not _is_front_end(FRONT):
    pytest.skip(f"{FRONT} is not umld's compiled front end", allow_module_level=True)


class Warm:
    """A warm umld of the test's own (UMLD_WARM_DIR), for a caller made
    by ``wrap`` (the test's own by default)."""

    def __init__(
        self,
        directory: Path,
        wrap: Callable[[list[str]], list[str]] | None = None,
        binds: list[str] | None = None,
    ) -> None:
        self.dir = directory
        self.wrap = wrap or (lambda argv: argv)
        self.binds = TEST_BINDS if binds is None else binds

    def argv(self, mode: str, *cmd: str) -> list[str]:
        """``umld run CMD`` through the front end: UMLD_WARM=``mode``."""
        env = ["env", f"UMLD_WARM={mode}", f"UMLD_WARM_DIR={self.dir}"]
        return self.wrap([*env, str(FRONT), "run", *self.binds, "--", *cmd])

    def start(self) -> None:
        """The first run starts it (cold); wait until it serves."""
        subprocess.run(self.argv("auto", "true"), check=True, timeout=60)
        wait_for(self.socket, "the warm umld's socket")

        def serves() -> bool:
            r = subprocess.run(self.argv("1", "true"), capture_output=True)
            return r.returncode == 0

        wait_for(serves, "a warm run")

    def socket(self) -> Path | None:
        found = list(self.dir.glob("*.sock")) if self.dir.exists() else []
        return found[0] if found else None

    def stop(self) -> None:
        """Every warm umld of this directory ends (one a failed run may
        have started is found by its command line)."""
        mine = str(self.dir).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    words = f.read().split(b"\0")
            except OSError:
                continue
            if b"_warm" in words and any(w.startswith(mine) for w in words):
                try:
                    os.kill(int(entry), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[Warm]:
    w = Warm(tmp_path / "warm")
    w.start()
    yield w
    w.stop()


def _caller_state() -> None:
    """A caller that differs from the test's own in every inherited way
    the run must take over (preexec_fn: in the child, before the exec)."""
    os.umask(0o027)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    os.nice(3)


SCRIPT = """
echo "args: $*"
echo "stdin: $(cat)"
echo "env: $GUEST_VALUE"
echo "cwd: $(pwd)"
echo "umask: $(umask)"
echo "nofile: $(ulimit -n)"
grep -E '^(SigIgn|SigBlk)' /proc/self/status
echo "nice: $(cut -d' ' -f19 /proc/self/stat)"
echo "to stderr" >&2
exit 7
"""


def test_a_warm_run_is_the_cold_run(warm: Warm, tmp_path: Path) -> None:
    where = tmp_path / "here"
    where.mkdir()
    got = {}
    for mode in ("0", "1"):
        env = dict(os.environ, GUEST_VALUE="a b  c")
        r = subprocess.run(
            warm.argv(mode, "sh", "-c", SCRIPT, "sh", "one", "two words"),
            input="from the caller\n",
            capture_output=True,
            text=True,
            env=env,
            cwd=where,
            preexec_fn=_caller_state,
            timeout=60,
        )
        got[mode] = (r.returncode, r.stdout, r.stderr)
    assert got["1"] == got["0"]
    code, out, err = got["1"]
    assert code == 7 and err == "to stderr\n"
    assert "args: one two words" in out and "stdin: from the caller" in out
    assert f"cwd: {where}" in out and "umask: 0027" in out and "nofile: 512" in out


def test_a_signal_to_the_front_end_reaches_the_guest(warm: Warm, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f'trap "echo got TERM; exit 3" TERM; touch {ready}; while :; do sleep 0.05; done'
    got = {}
    for mode in ("0", "1"):
        ready.unlink(missing_ok=True)
        with subprocess.Popen(
            warm.argv(mode, "sh", "-c", script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            wait_for(lambda: ready.exists() or proc.poll() is not None, "the guest's trap")
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            got[mode] = (proc.returncode, out)
    assert got["1"] == got["0"]
    assert got["1"][1] == "got TERM\n"


def test_a_killed_front_end_leaves_no_guest(warm: Warm, no_strays: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"touch {ready}; exec -a {no_strays} sleep 1000"
    with subprocess.Popen(warm.argv("1", "bash", "-c", script), stdin=subprocess.DEVNULL) as proc:
        wait_for(lambda: live_pids_with(no_strays) or proc.poll() is not None, "the guest")
        assert proc.poll() is None
        # Served warm: the front end is still itself (a cold run execs Python).
        assert os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(FRONT)
        proc.kill()
    wait_for(lambda: not live_pids_with(no_strays), "the guest to end with its front end")


#: A request made from wherever this runs: what the warm umld answers.
ASK = """
import array, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
fds = array.array("i", [0, 1, 2])
s.sendmsg([b"run 0\\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
s.settimeout(10)
print(s.recv(64))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare(1) of a network namespace: root's")
def test_a_caller_in_another_namespace_is_refused(warm: Warm) -> None:
    path = warm.socket()
    assert path is not None
    here = subprocess.run(
        [sys.executable, "-c", ASK, str(path)], capture_output=True, text=True, timeout=30
    )
    other = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", ASK, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # From here: served (this script is no `umld run`: its run ends with a
    # usage error); from another network namespace: "cold".
    assert here.stdout.startswith("b'pid "), here
    assert other.stdout.strip() == "b'cold\\n'", other


def test_another_user_cannot_reach_the_socket(warm: Warm, ordinary_user: User) -> None:
    path = warm.socket()
    assert path is not None
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(path)!r})\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
    )
    r = subprocess.run(
        ordinary_user.argv([sys.executable, "-c", code]), capture_output=True, text=True
    )
    assert r.stdout.strip() == "Permission denied", r


def test_an_ordinary_users_run_is_warm_too(ordinary_user: User) -> None:
    w = Warm(ordinary_user.work / "warm", ordinary_user.argv, binds=[])
    try:
        w.start()
        r = subprocess.run(
            w.argv("1", "sh", "-c", "id -u; exit 4"),
            capture_output=True,
            text=True,
            cwd=ordinary_user.work,
        )
        assert (r.returncode, r.stdout, r.stderr) == (4, f"{ordinary_user.uid}\n", "")
    finally:
        w.stop()
