"""Shared fixtures: tracer backends, guest programs, native-vs-umld runs.

Everything here runs real programs: natively, and under a real `umld run`
with real ptrace.  Nothing of the kernel interface is mocked.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from umld.tracer import BACKENDS, DEFAULT_BACKEND, available

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
GUEST_SRC = Path(__file__).resolve().parent / "guest"


# -- markers: a host that cannot is a skip with its reason, not a failure -------


@functools.cache
def ptrace_refused(backend: str) -> str | None:
    """Why tracer ``backend`` cannot run programs here (not built, ptrace
    or seccomp refused), or None: one real traced run per session."""
    return available(backend, probe=True)


@functools.cache
def fuse_refused() -> str | None:
    """Why this host cannot mount the export, or None."""
    try:
        st = os.stat("/dev/fuse")
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (10, 229):
        return "/dev/fuse is not the FUSE device (character device 10:229)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as exc:
        return f"the export extra is not installed: {exc}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``uses_ptrace`` tests skip when their backend (the ``backend``
    parameter, else the default one) cannot trace here; ``uses_fuse``
    tests when there is no usable FUSE."""
    if item.get_closest_marker("uses_ptrace") is not None:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend", DEFAULT_BACKEND) if callspec else DEFAULT_BACKEND
        reason = ptrace_refused(str(name))
        if reason is not None:
            pytest.skip(f"uses_ptrace: the {name!r} tracer cannot run here: {reason}")
    if item.get_closest_marker("uses_fuse") is not None:
        reason = fuse_refused()
        if reason is not None:
            pytest.skip(f"uses_fuse: no usable FUSE here: {reason}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    reason = available(name)
    if reason is not None:
        pytest.skip(f"tracer backend {name!r} unavailable: {reason}")
    return name


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


#: Host paths every test machine is given: the session's temporary
#: directory, where tests keep their files (the guest's own /tmp is a
#: ramdisk of its own).
TEST_BINDS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _bind_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    TEST_BINDS[:] = [f"--bind={tmp_path_factory.getbasetemp()}"]


def umld_argv(backend: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "umld", "run", f"--tracer={backend}", *TEST_BINDS, *options, "--"]


def run(argv: Sequence[str], *, timeout: float = 120, **kw: object) -> Result:
    p = subprocess.run(
        list(argv),
        stdin=kw.pop("stdin", subprocess.DEVNULL),  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )
    return Result(p.returncode, p.stdout, p.stderr)


class Compare:
    """Runs one command natively and under umld and compares them."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def native(self, argv: Sequence[str], **kw: object) -> Result:
        r = run(argv, **kw)
        if r.returncode < 0:  # as a shell reports it, and as umld does
            r.returncode = 128 - r.returncode
        return r

    def guest(self, argv: Sequence[str], *options: str, **kw: object) -> Result:
        return run([*umld_argv(self.backend, *options), *argv], **kw)

    def __call__(self, argv: Sequence[str], *, stderr: bool = True, **kw: object) -> Result:
        n = self.native(argv, **kw)
        g = self.guest(argv, **kw)
        assert (g.returncode, g.stdout) == (n.returncode, n.stdout), (
            f"native rc={n.returncode} stderr={n.stderr!r}\n"
            f"umld   rc={g.returncode} stderr={g.stderr!r}"
        )
        if stderr:
            assert g.stderr == n.stderr
        return g


@pytest.fixture
def compare(backend: str) -> Compare:
    return Compare(backend)


@pytest.fixture(scope="session")
def guest_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guest/*.c compiled once per session (gcc -O1 -pthread)."""
    out = tmp_path_factory.mktemp("guest-bin")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    for src in sorted(GUEST_SRC.glob("*.c")):
        subprocess.run(
            [cc, "-O1", "-Wall", "-Werror", "-pthread", "-o", str(out / src.stem), str(src)],
            check=True,
        )
    return out


class CountingDevice:
    """A test device of the I/O bus (umld.core.iobus.Device) on ``ports``:
    reads count up from 1 (the count repeated in each byte), writes are
    kept as (port, size, value)."""

    def __init__(self, name: str, ports: range) -> None:
        self.name, self.ports = name, ports
        self.n = 0
        self.writes: list[tuple[int, int, int]] = []

    def read(self, port: int, size: int) -> int:
        self.n += 1
        return self.n * 0x01010101

    def write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def wait_for(pred: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Polls ``pred`` until it is true and returns what it gave (a
    condition, never a fixed delay)."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_available(path: str | os.PathLike[str]) -> str:
    """What a stream file (a machine's ``events``) holds so far: it never
    ends, so it is read non-blocking, up to EAGAIN."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def wait_written(counter: Path, files: int) -> None:
    """Until a guest's writer loop says (in a file it rewrites) that it has
    written ``files`` files."""
    deadline = time.monotonic() + 30
    while True:
        text = counter.read_text().strip() if counter.exists() else ""
        if text.isdigit() and int(text) >= files:
            return
        assert time.monotonic() < deadline, f"the writer wrote {text or 'nothing'}"
        time.sleep(0.02)


def machine_cpu_usec(leaf: str) -> int:
    """CPU time used by the machine whose cgroups match ``leaf`` (a glob of
    umld-NAME-PID), from its own cgroup counters."""
    import glob

    for d in glob.glob(f"/sys/fs/cgroup/cpuacct/{leaf}") + glob.glob(
        f"/sys/fs/cgroup/unified/{leaf}"
    ):
        acct = Path(d, "cpuacct.usage")
        if acct.exists():
            return int(acct.read_text()) // 1000
        for line in Path(d, "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1])
    raise AssertionError(f"no cpu cgroup matches {leaf}")


def live_pids_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose argv[0] is ``marker``
    (guests are started with `exec -a MARKER`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if cmd.split(b"\0", 1)[0] == marker.encode() and state != b"Z":
            pids.append(int(entry))
    return pids


@pytest.fixture
def no_strays() -> Iterator[str]:
    """A unique marker; the test fails if a process carrying it survives."""
    marker = f"umld-stray-{os.getpid()}-{os.urandom(4).hex()}"
    yield marker
    left = live_pids_with(marker)
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"stray processes left behind: {left}"


# -- an ordinary user ---------------------------------------------------------

#: The account the tests run umld as when they check what an ordinary user
#: gets (created by the test set-up when the tests run as root).
ORDINARY_USER = "umld-tester"


@dataclass
class User:
    """An ordinary (non-root) account and a private directory of its own."""

    name: str
    uid: int
    gid: int
    home: Path
    #: A directory the user owns (mode 0700) for the test's files and the
    #: user's XDG_RUNTIME_DIR.
    work: Path

    def argv(self, argv: Sequence[str], **env: str) -> list[str]:
        """``argv`` run as this user with a clean login-like environment."""
        base = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": str(self.work / "run"),
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        base.update(env)
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--reset-env",
            "env",
            *(f"{k}={v}" for k, v in base.items()),
            *argv,
        ]

    def umld_argv(self, backend: str, *options: str) -> list[str]:
        """``umld run`` as this user (without the root test binds)."""
        return self.argv(
            [sys.executable, "-m", "umld", "run", f"--tracer={backend}", *options, "--"]
        )


def _interpreter_usable_by_others() -> str | None:
    """Why an ordinary user cannot run this interpreter, or None."""
    for path in (sys.executable, os.path.realpath(sys.executable), str(ROOT)):
        p = Path(path)
        for part in (p, *p.parents):
            try:
                mode = part.stat().st_mode
            except OSError:
                return f"{part} is not reachable"
            if part.is_dir() and not mode & 0o001:
                return f"{part} is not searchable by other users (use `make install`'s venv)"
    return None


@pytest.fixture(scope="session")
def ordinary_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    """The ordinary account, created when missing (tests run as root), with
    /dev/fuse usable by it (this host's /dev/fuse is 0600; Debian's default
    is 0666)."""
    import pwd

    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        work = tmp_path_factory.mktemp("ordinary-user")
        (work / "run").mkdir(mode=0o700)
        yield User(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir), work)
        return
    reason = _interpreter_usable_by_others()
    if reason is not None:
        pytest.skip(f"cannot run umld as an ordinary user: {reason}")
    try:
        entry = pwd.getpwnam(ORDINARY_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", ORDINARY_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(ORDINARY_USER)
    if os.path.exists("/dev/fuse"):
        os.chmod("/dev/fuse", 0o666)
    work = Path(f"/tmp/umld-tester-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "run").mkdir(parents=True, mode=0o700)
    for path in (work, work / "run"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)
    yield User(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), work)
    shutil.rmtree(work, ignore_errors=True)
