"""A guest's polling COM1 driver, unmodified, against the machine's own
devices (issue 15): its output in the export's dev/ttyS0 (followed by
``tail -f`` from another process), the host's input echoed back through
the UART, the POST code in dev/post, the RTC reading the machine's clock.
Natively the same binary dies of SIGSEGV at its first port access.
"""

from __future__ import annotations

import datetime
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User, run, wait_for

pytestmark = [pytest.mark.uses_ptrace, pytest.mark.uses_fuse]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """The driver, built where an ordinary user can run it."""
    d = Path("/var/tmp") / f"umld-com1-{os.getpid()}"
    d.mkdir(mode=0o755)
    try:
        subprocess.run(
            ["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(d / "com1"),
             str(GUEST_SRC / "com1.c")],
            check=True,
        )  # fmt: skip
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_natively_the_driver_dies_of_sigsegv(workdir: Path) -> None:
    r = run([str(workdir / "com1")])
    assert r.returncode == -signal.SIGSEGV, r


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> User | None:
    return None if request.param == "root" else ordinary_user


def _as(who: User | None, argv: list[str]) -> list[str]:
    return who.argv(argv) if who else argv


def test_a_polling_driver_talks_to_the_host_through_dev_ttys0(
    backend: str, who: User | None, workdir: Path, tmp_path: Path
) -> None:
    mnt = workdir / f"mnt-{backend}-{'user' if who else 'root'}"
    mnt.mkdir(mode=0o755)
    if who is not None:
        os.chown(mnt, who.uid, who.gid)
    # The guest's root may ask for ports (CAP_SYS_RAWIO in its machine).
    argv = [sys.executable, "-m", "umld", "run", f"--tracer={backend}", f"--mount={mnt}",
            "--uid=0", "--", str(workdir / "com1")]  # fmt: skip
    proc = subprocess.Popen(
        _as(who, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
    )
    follower = None
    try:
        assert proc.stdout is not None
        rtc = proc.stdout.readline()
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        # The RTC: the machine's clock (the host's realtime), in UTC.
        shown = datetime.datetime.strptime(rtc.strip(), "rtc %Y-%m-%d %H:%M:%S")
        assert abs((shown - now).total_seconds()) <= 1.5, (rtc, now)
        # Another process follows the UART's output.
        follower = subprocess.Popen(
            _as(who, ["tail", "-f", str(mnt / "dev/ttyS0")]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert follower.stdout is not None
        seen = b""

        def more(want: bytes) -> bool:
            nonlocal seen
            assert follower is not None and follower.stdout is not None
            if select.select([follower.stdout], [], [], 0.1)[0]:
                seen += os.read(follower.stdout.fileno(), 4096)
            return want in seen

        wait_for(lambda: more(b"hello from COM1\n"), "the driver's output in dev/ttyS0")
        post = subprocess.run(_as(who, ["cat", str(mnt / "dev/post")]), capture_output=True,
                              text=True)  # fmt: skip
        assert post.stdout.strip() == "0x2a", post
        # The host types lines: the driver echoes them through the UART.
        for line in ("ping", "bye"):
            r = subprocess.run(
                _as(who, ["sh", "-c", 'printf "%s\\n" "$2" > "$1"', "sh",
                          str(mnt / "dev/ttyS0"), line]),
                capture_output=True,
                text=True,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            if line == "ping":
                wait_for(lambda: more(b"hello from COM1\nping\n"), "the echo in dev/ttyS0")
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (0, "echoed 9\n"), err
    finally:
        if follower is not None:
            follower.kill()
            follower.wait()
            if follower.stdout is not None:
                follower.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        mnt.rmdir()


def test_hlt_returns_when_the_uart_receives(backend: str, workdir: Path) -> None:
    """A halted CPU wakes for COM1's input (its interrupt)."""
    mnt = workdir / f"mnt-hlt-{backend}"
    mnt.mkdir(mode=0o755)
    argv = [sys.executable, "-m", "umld", "run", f"--tracer={backend}", f"--mount={mnt}",
            "--uid=0", "--", str(workdir / "com1"), "hlt"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "halting\n", proc.stderr.read() if proc.stderr else ""
        (mnt / "dev/ttyS0").write_bytes(b"x")
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (0, "woke x\n"), err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        mnt.rmdir()
