"""Fixtures for the shared tracer-backend suite.

``backend`` (tests/conftest.py) parametrizes over every backend and skips
one that ``umld.tracer.available`` rejects, with its reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from umld.tracer import TracerPlatform, open_tracer

GUEST_SRC = Path(__file__).resolve().parent.parent / "guest"


@pytest.fixture(scope="session")
def tracer_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guest/tracer_*.c compiled once per session into a tmp dir.

    Only the tracer suite's own guests: the suite must not fail because an
    unrelated guest program does not build."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the guest programs")
    out = tmp_path_factory.mktemp("tracer-guests")
    for src in sorted(GUEST_SRC.glob("tracer_*.c")):
        subprocess.run(
            [
                cc,
                "-O1",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pthread",
                "-o",
                str(out / src.stem),
                str(src),
            ],
            check=True,
        )
    return out


def traced_by(native_tid: int) -> list[int]:
    """Processes whose ptrace tracer is thread ``native_tid`` (TracerPid in
    /proc/PID/status names the tracing thread)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"TracerPid:"):
                        if int(line.split()[1]) == native_tid:
                            found.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return found


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """SIGCHLD blocked for the whole protocol of every tracer test.

    wait() sleeps in sigtimedwait(2), so every thread must block SIGCHLD
    (platform.py): a thread that does not can be handed the tracer's
    SIGCHLD by the kernel and discard it (default action: ignore), and the
    wait sleeps on.  Blocking it here, before the other plugins' wrappers
    run, makes the threads they start during the test (faulthandler's
    watchdog, created per test with the creator's mask, blocks signals
    only once it first runs) inherit the block."""
    # A hook of a conftest.py runs for every test of the session, not only
    # this directory's: leave the others (and the programs they start,
    # which would inherit the mask) alone.
    if Path(str(item.path)).parent != Path(__file__).parent:
        return (yield)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        return (yield)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@pytest.fixture
def tracer(backend: str) -> Iterator[TracerPlatform]:
    """A tracer of ``backend`` owned by the test thread; closed afterwards,
    and nothing may still be traced by this thread then."""
    t = open_tracer(backend)
    try:
        yield t
    finally:
        t.close()
    left = traced_by(threading.get_native_id())
    assert not left, f"close() left traced processes behind: {left}"
