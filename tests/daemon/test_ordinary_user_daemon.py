"""``umld daemon`` run by an ordinary user (``umld-tester``), with no
options: its export and control socket in the user's XDG_RUNTIME_DIR, its
definitions in XDG_CONFIG_HOME, its named machines' state (their upper
layers, directories) in XDG_DATA_HOME; and the whole client command set
run as that user against it.

Before: a named machine (every daemon machine is one) failed at start (its
home was a disk image, which needed root), and ``umld exec`` into a user's
machine failed ("cannot join the machine's pid namespace: Operation not
permitted": the pid namespace's owner, the stage's user namespace, was not
joined first).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, live_pids_with
from tests.daemon.test_daemon import START_TIMEOUT, mounted, pid_alive, wait_until

pytestmark = [pytest.mark.uses_fuse, pytest.mark.uses_ptrace]


@pytest.fixture
def base(ordinary_user: User) -> Iterator[Path]:
    d = ordinary_user.work / f"daemon-{os.urandom(4).hex()}"
    for sub in ("", "run", "config", "data"):
        (d / sub).mkdir(mode=0o700)
        os.chown(d / sub, ordinary_user.uid, ordinary_user.gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_daemon_and_its_commands_as_an_ordinary_user(
    ordinary_user: User, base: Path, no_strays: str
) -> None:
    user = ordinary_user
    env = {
        "XDG_RUNTIME_DIR": str(base / "run"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
    }
    mount = base / "run" / "umld" / "daemon"

    def umld(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            user.argv([sys.executable, "-m", "umld", *args], **env),
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout, cwd=base,
        )  # fmt: skip

    def table() -> dict[str, list[str]]:
        r = umld("ls")
        assert r.returncode == 0, r
        return {row[0]: row[1:] for row in (ln.split() for ln in r.stdout.splitlines()[1:])}

    log_path = base / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            user.argv([sys.executable, "-m", "umld", "daemon"], **env),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=base,
        )  # fmt: skip
    guests: list[int] = []
    try:
        wait_until(
            lambda: "umld daemon ready" in log_path.read_text() or proc.poll() is not None,
            START_TIMEOUT,
            "the user's daemon",
        )
        assert proc.poll() is None, log_path.read_text()
        assert mounted(mount) and Path(f"{mount}.sock").exists()

        # start NAME -- cmd: the guest's output goes to the daemon's log.
        r = umld("start", "box", "--", "bash", "-c", f"echo box-up; exec -a {no_strays} sleep 1000")
        assert r.returncode == 0, r
        wait_until(lambda: "box-up" in log_path.read_text(), 20, "the guest's first line")
        assert table()["box"][0] == "running"
        guests = live_pids_with(no_strays)
        assert guests

        # exec: in the machine's namespaces, as the user, in the user's home.
        # (The pattern's brackets keep it from matching this shell's own
        # command line.)
        seen = f"{no_strays[:-1]}[{no_strays[-1]}]"
        r = umld("exec", "box", "--", "sh", "-c",
                 "id -u; echo $HOME; for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; "
                 f"echo; done | grep -c '{seen}'; echo made > ~/made-in-box")  # fmt: skip
        assert r.returncode == 0, r
        uid, home, sleeping = r.stdout.split()
        assert (uid, home, sleeping) == (str(user.uid), str(user.home), "1"), r
        # The home is the host's, copy-on-write: the host's is unchanged.
        assert not (user.home / "made-in-box").exists()
        r = umld("diff", "box")
        assert (r.returncode, r.stdout) == (0, f"A {user.home}/made-in-box\n"), r

        # logs: the machine's events, the exec'd commands among them.
        r = umld("logs", "box")
        assert r.returncode == 0 and " exec pid=" in r.stdout and "id" in r.stdout, r

        # stop: the machine ends, its processes with it.
        r = umld("stop", "box")
        assert r.returncode == 0, r
        assert table()["box"][0].startswith("exited")
        wait_until(lambda: not live_pids_with(no_strays), 10, "the guest to end")

        # A named machine keeps its changes (its upper layer, a directory
        # in the user's XDG_DATA_HOME) into its next start.
        assert (base / "data" / "umld" / "machines" / "box" / "upper").is_dir()
        r = umld("start", "box", "--", "bash", "-c", f"exec -a {no_strays} sleep 1000")
        assert r.returncode == 0, r
        r = umld("exec", "box", "--", "cat", f"{user.home}/made-in-box")
        assert (r.returncode, r.stdout) == (0, "made\n"), r
        guests = live_pids_with(no_strays)

        # The daemon ends on SIGTERM: its machine, mount and socket go.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, log_path.read_text()
        assert not mounted(mount) and not Path(f"{mount}.sock").exists()
        assert not [p for p in guests if pid_alive(p)]
        log = log_path.read_text()
        assert "Traceback" not in log and "WARNING" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mounted(mount):
            subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False)
