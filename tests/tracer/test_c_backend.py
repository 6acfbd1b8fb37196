"""Tests specific to the C tracer backend (umld.tracer.ptrace_c, c_tracer/).

Real programs under real ptrace and seccomp, nothing mocked.  The shared
behaviour of every backend is in test_platform.py; this file covers what is
particular to the C core: its parking of early events, the stats it
keeps, the owner-thread and closed checks done in C, transfers larger than
one process_vm_readv batch, restarts that keep a requested syscall-exit-stop
across fork/exec events, EINTR in wait, the binding itself.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from umld.tracer import SpawnSpec, TracerError
from umld.tracer.events import (
    Cloned,
    CloneKind,
    Continued,
    Event,
    Execed,
    Exited,
    GroupStopped,
    HostSignal,
    SignalStop,
    SyscallExit,
    SyscallStop,
    Wakeup,
)
from umld.tracer.seccomp import build_filter

from .conftest import traced_by

ptrace_c = pytest.importorskip("umld.tracer.ptrace_c", reason="C tracer not built")
CTracer = ptrace_c.CTracer

pytestmark = pytest.mark.uses_ptrace

ROOT = Path(__file__).resolve().parents[2]
NR_UNAME, NR_CLONE, NR_EXECVE, NR_CLONE3 = 63, 56, 59, 435
UNAME = build_filter({NR_UNAME})

# Small guests, built once per session.
GUESTS = {
    # fork N children; each makes one raw uname call and exits 0.
    "forker": r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    int n = atoi(argv[1]);
    struct utsname u;
    for (int i = 0; i < n; i++)
        if (fork() == 0) {
            syscall(SYS_uname, &u);
            _exit(0);
        }
    while (wait(NULL) > 0)
        ;
    return 0;
}
""",
    # Memory layout for the tracer, passed in a trapped uname's registers:
    # a = 1 MiB pattern, b = its size, c = a read-only page, d = "edge"
    # string whose NUL is the last byte before an unmapped page.  After the
    # call: prints the read-only page's first bytes.
    "mem": r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void)
{
    long page = sysconf(_SC_PAGESIZE), size = 1 << 20;
    unsigned char *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (long i = 0; i < size; i++)
        a[i] = (unsigned char)(i * 7);
    char *ro = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(ro, "original");
    mprotect(ro, page, PROT_READ);
    char *e = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(e + page, page);
    memset(e, 'x', page);
    e[page - 1] = 0;
    long r = syscall(SYS_uname, a, size, ro, e + page - 11);
    printf("%ld %s\n", r, ro);
    return 0;
}
""",
    # fork once (clone syscall), then exec /bin/true in the child.
    "forkexec": r"""
#include <sys/wait.h>
#include <unistd.h>
int main(void)
{
    pid_t p = fork();
    if (p == 0) {
        execl("/bin/true", "true", (char *)0);
        _exit(127);
    }
    int st;
    waitpid(p, &st, 0);
    return WEXITSTATUS(st);
}
""",
    # N raw uname calls.
    "unames": r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    struct utsname u;
    for (long i = 0; i < n; i++)
        syscall(SYS_uname, &u);
    return 0;
}
""",
}


@pytest.fixture(scope="session")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("c-backend-guests")
    paths = {}
    for name, src in GUESTS.items():
        c = out / f"{name}.c"
        c.write_text(src)
        subprocess.run(
            ["gcc", "-O1", "-Wall", "-Werror", "-o", str(out / name), str(c)], check=True
        )
        paths[name] = out / name
    return paths


@pytest.fixture
def ct() -> Iterator[object]:
    t = CTracer()
    try:
        yield t
    finally:
        t.close()
    assert not traced_by(threading.get_native_id())


def spec(*argv: str | os.PathLike[str], **kw: object) -> SpawnSpec:
    args = [os.fsencode(a) for a in argv]
    return SpawnSpec(path=args[0], argv=args, **kw)  # type: ignore[arg-type]


class Checked:
    """Collects a tracer's events and checks the ordering guarantee."""

    def __init__(self, t: object) -> None:
        self.t = t
        self.known: set[int] = set()
        self.events: list[Event] = []

    def spawn(self, s: SpawnSpec) -> int:
        pid: int = self.t.spawn(s)  # type: ignore[attr-defined]
        self.known.add(pid)
        return pid

    def next(self, timeout: float = 10.0) -> Event:
        ev: Event | None = self.t.wait(timeout)  # type: ignore[attr-defined]
        assert ev is not None, f"no event in {timeout}s after {self.events[-5:]}"
        self.events.append(ev)
        if isinstance(ev, HostSignal | Wakeup):
            return ev
        assert ev.tid in self.known, f"event of an unannounced or exited thread: {ev}"
        if isinstance(ev, Cloned):
            assert ev.child not in self.known, ev
            self.known.add(ev.child)
        elif isinstance(ev, Exited):
            self.known.discard(ev.tid)
        elif isinstance(ev, Execed) and ev.former_tid != ev.tid:
            self.known.discard(ev.former_tid)
        assert self.t.tids() == self.known  # type: ignore[attr-defined]
        return ev

    def answer(self, ev: Event) -> None:
        if isinstance(ev, SignalStop):
            self.t.resume(ev.tid, ev.signo)  # type: ignore[attr-defined]
        elif isinstance(ev, SyscallStop | SyscallExit):
            self.t.resume(ev.tid)  # type: ignore[attr-defined]

    def run(self, root: int, handle: Callable[[Event], bool] | None = None) -> Exited:
        end = time.monotonic() + 30
        while True:
            ev = self.next(max(end - time.monotonic(), 0.1))
            if handle is None or not handle(ev):
                self.answer(ev)
            if isinstance(ev, Exited) and ev.tid == root:
                return ev


def same(a: object, b: object) -> bool:
    """Events are named tuples: equal values of different event types
    compare equal, so compare the type too."""
    return type(a) is type(b) and a == b


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


# --- the binding ------------------------------------------------------------


def test_cdef_comes_from_the_header() -> None:
    """Every function of the header's CDEF section is in the module."""
    text = (ROOT / "c_tracer" / "umld_tracer.h").read_text()
    section = text.split("/* CDEF-BEGIN */")[1].split("/* CDEF-END */")[0]
    names = re.findall(r"\b(umld_\w+)\(", section)
    assert len(names) >= 15
    from umld.tracer._c_tracer import lib

    for name in names:
        assert callable(getattr(lib, name)), name


def test_name_and_protocol(ct: object) -> None:
    from umld.tracer import TracerPlatform

    assert ct.name == "c"  # type: ignore[attr-defined]
    t: TracerPlatform = ct  # type: ignore[assignment]
    assert t.tids() == frozenset()


# --- spawn ------------------------------------------------------------------


def test_true(ct: object) -> None:
    c = Checked(ct)
    pid = c.spawn(spec("/bin/true"))
    assert same(c.next(), Execed(pid, pid))
    ex = c.next()
    assert same(ex, Exited(pid, 0, None))
    assert ct.wait(0) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "kw", "expected"),
    [
        (["/nonexistent/umld"], {}, ("exec", errno.ENOENT)),
        (
            ["/bin/true"],
            {"seccomp_filter": b"\x06\x00\x00\x00\x00\x00\xff"},
            ("seccomp", errno.EINVAL),
        ),
        (["/bin/true"], {"seccomp_filter": b"\x00" * 8}, ("seccomp", errno.EINVAL)),
        (["/bin/true"], {"cwd": b"/nonexistent/umld"}, ("setup", errno.ENOENT)),
    ],
)
def test_spawn_errors(
    ct: object, argv: list[str], kw: dict[str, object], expected: tuple[str, int]
) -> None:
    c = Checked(ct)
    pid = c.spawn(spec(*argv, **kw))
    ex = c.next()
    assert isinstance(ex, Exited) and ex.tid == pid
    assert os.WIFEXITED(ex.status) and os.WEXITSTATUS(ex.status) == 127
    assert ex.spawn_error == expected


def test_spawn_error_is_not_reported_after_a_successful_exec(ct: object) -> None:
    """A spawned program that exits 127 by itself has no spawn_error."""
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", "exit 127"))
    ex = c.run(pid)
    assert os.WEXITSTATUS(ex.status) == 127 and ex.spawn_error is None


# --- events of a process tree ----------------------------------------------


def test_sh_spawning_children(ct: object) -> None:
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", "/bin/true; /bin/true & wait; exec /bin/true"))
    ex = c.run(pid)
    assert ex.status == 0
    clones = [e for e in c.events if isinstance(e, Cloned)]
    assert len(clones) == 2 and all(e.tid == pid for e in clones)
    assert {e.kind for e in clones} <= {CloneKind.FORK, CloneKind.VFORK}
    for e in clones:
        mine = [x for x in c.events if getattr(x, "tid", None) == e.child]
        assert same(mine[0], Execed(e.child, e.child))
        assert same(mine[-1], Exited(e.child, 0, None))
    assert [e for e in c.events if isinstance(e, Execed) and e.tid == pid] == [Execed(pid, pid)] * 2
    assert not ct.tids()  # type: ignore[attr-defined]


def test_children_wait_for_their_cloned(ct: object, guests: dict[str, Path]) -> None:
    """A lagging tracer sees children's initial stops before their
    parent's fork events (the kernel reports newer tracees first); the
    children are left in those stops until their Cloned, so nothing of
    theirs has to be parked and the order holds.  Lag is made by sleeping
    before each wait.  The forker runs under sh: wait(2) scans a tracer's
    own children before its other tracees, so only grandchildren show the
    inversion."""
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", f"{guests['forker']} 40; exit 0", seccomp_filter=UNAME))
    stops = 0

    def handle(ev: Event) -> bool:
        nonlocal stops
        time.sleep(0.002)
        if isinstance(ev, SyscallStop):
            stops += 1
            ct.complete(ev.tid, 0)  # type: ignore[attr-defined]
            return True
        return False

    c.run(pid, handle)
    assert stops == 40
    exits = [e for e in c.events if isinstance(e, Exited)]
    assert len(exits) == 42
    stats = ct.stats()  # type: ignore[attr-defined]
    assert stats["parked"] == 0, stats


# --- answers ----------------------------------------------------------------


def test_complete_makes_uname_return_a_chosen_node(ct: object, tmp_path: Path) -> None:
    out = tmp_path / "out"
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", f"uname -n > {out}", seccomp_filter=UNAME))

    def handle(ev: Event) -> bool:
        if isinstance(ev, SyscallStop) and ev.nr == NR_UNAME:
            ct.write_memory(ev.tid, ev.args[0] + 65, b"c-backend\0")  # type: ignore[attr-defined]
            ct.complete(ev.tid, 0)  # type: ignore[attr-defined]
            return True
        return False

    c.run(pid, handle)
    assert out.read_text() == "c-backend\n"


def test_stop_at_exit_survives_fork_and_exec_events(ct: object, guests: dict[str, Path]) -> None:
    """Resumed with stop_at_exit at fork (clone) and execve, the thread
    passes a PTRACE_EVENT_FORK/EXEC stop the backend restarts itself; the
    syscall-exit-stop asked for must still come, with the call's result."""
    c = Checked(ct)
    flt = build_filter({NR_CLONE, NR_CLONE3, NR_EXECVE})
    pid = c.spawn(spec(guests["forkexec"], seccomp_filter=flt))
    order: list[object] = []

    def handle(ev: Event) -> bool:
        if isinstance(ev, SyscallStop):
            order.append(("stop", ev.tid, ev.nr))
            ct.resume(ev.tid, stop_at_exit=True)  # type: ignore[attr-defined]
            return True
        if isinstance(ev, SyscallExit):
            order.append(("exit", ev.tid, ev.nr, ev.result))
        elif isinstance(ev, Cloned | Execed):
            order.append(ev)
        return False

    c.run(pid, handle)
    [cl] = [e for e in c.events if isinstance(e, Cloned)]
    child = cl.child
    # Parent: the clone stops, Cloned, then the exit stop returning the pid.
    parent = [o for o in order if (type(o) is tuple and o[1:3] == (pid, NR_CLONE)) or o == cl]
    assert parent[:3] == [("stop", pid, NR_CLONE), cl, ("exit", pid, NR_CLONE, child)]
    # Child: execve stops, Execed, then execve returns 0.
    kid = [
        o
        for o in order
        if (type(o) is tuple and o[1] == child) or (isinstance(o, Execed) and o.tid == child)
    ]
    assert kid[:3] == [
        ("stop", child, NR_EXECVE),
        Execed(child, child),
        ("exit", child, NR_EXECVE, 0),
    ]


def test_memory_beyond_one_batch_and_read_only_pages(
    ct: object, guests: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", f'exec "$0" > {out}', guests["mem"], seccomp_filter=UNAME))
    expected = bytes((i * 7) & 0xFF for i in range(1 << 20))

    def handle(ev: Event) -> bool:
        if not isinstance(ev, SyscallStop) or ev.nr != NR_UNAME:
            return False
        a, size, ro, edge = ev.args[:4]
        t = ct
        # 256 pages: several process_vm_readv batches of 64 pieces.
        assert t.read_memory(ev.tid, a, size) == expected  # type: ignore[attr-defined]
        assert t.read_memory(ev.tid, a + 4093, 10) == expected[4093:4103]  # type: ignore[attr-defined]
        # Runs into the unmapped page: the bytes before it.
        assert t.read_memory(ev.tid, edge, 100) == b"x" * 10 + b"\0"  # type: ignore[attr-defined]
        with pytest.raises(TracerError) as exc:
            t.read_memory(ev.tid, edge + 11, 4)  # type: ignore[attr-defined]
        assert exc.value.errno == errno.EFAULT
        # Strings: up to the page edge; limits count the bytes before the NUL.
        assert t.read_string(ev.tid, edge) == b"x" * 10  # type: ignore[attr-defined]
        assert t.read_string(ev.tid, edge, 10) == b"x" * 10  # type: ignore[attr-defined]
        with pytest.raises(TracerError) as exc:
            t.read_string(ev.tid, edge, 9)  # type: ignore[attr-defined]
        assert exc.value.errno == errno.ENAMETOOLONG
        page_start = edge + 11 - 4096  # 4095 x, then the NUL
        assert t.read_string(ev.tid, page_start, 8192) == b"x" * 4095  # type: ignore[attr-defined]
        with pytest.raises(TracerError) as exc:
            t.read_string(ev.tid, page_start, 4094)  # type: ignore[attr-defined]
        assert exc.value.errno == errno.ENAMETOOLONG
        # Write through the read-only page (/proc/PID/mem fallback, only
        # with force), and a write larger than one batch.
        with pytest.raises(TracerError) as exc:
            t.write_memory(ev.tid, ro, b"patched\0")  # type: ignore[attr-defined]
        assert exc.value.errno == errno.EFAULT
        t.write_memory(ev.tid, ro, b"patched\0", force=True)  # type: ignore[attr-defined]
        t.write_memory(ev.tid, a, bytes(size))  # type: ignore[attr-defined]
        assert t.read_memory(ev.tid, a, size) == bytes(size)  # type: ignore[attr-defined]
        with pytest.raises(TracerError) as exc:
            t.write_memory(ev.tid, edge + 11, b"zz")  # type: ignore[attr-defined]
        assert exc.value.errno == errno.EFAULT
        t.complete(ev.tid, 42)  # type: ignore[attr-defined]
        return True

    c.run(pid, handle)
    assert out.read_text() == "42 patched\n"


def test_answers_to_a_thread_gone_or_unknown(ct: object, guests: dict[str, Path]) -> None:
    c = Checked(ct)
    pid = c.spawn(spec(guests["unames"], "1", seccomp_filter=UNAME))
    ev = c.next()
    while not isinstance(ev, SyscallStop):
        c.answer(ev)
        ev = c.next()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    # Killed in its stop: the answer is not an error, its Exited follows.
    ct.complete(pid, 0)  # type: ignore[attr-defined]
    ex = c.next()
    assert isinstance(ex, Exited) and os.WTERMSIG(ex.status) == signal.SIGKILL
    with pytest.raises(TracerError) as exc:
        ct.resume(pid)  # type: ignore[attr-defined]
    assert exc.value.errno == errno.ESRCH
    ct.kill(pid, signal.SIGTERM)  # type: ignore[attr-defined]  # gone: ignored


# --- wait -------------------------------------------------------------------


def test_wake(ct: object) -> None:
    ct.wake()  # type: ignore[attr-defined]
    ct.wake()  # type: ignore[attr-defined]
    assert same(ct.wait(1), Wakeup())  # type: ignore[attr-defined]
    assert ct.wait(0.05) is None  # type: ignore[attr-defined]  # coalesced
    th = threading.Timer(0.1, ct.wake)  # type: ignore[attr-defined]
    th.start()
    t0 = time.monotonic()
    assert same(ct.wait(None), Wakeup())  # type: ignore[attr-defined]
    assert 0.05 < time.monotonic() - t0 < 5
    th.join()


def test_wait_timeout_precision(ct: object) -> None:
    t0 = time.monotonic()
    assert ct.wait(0.0005) is None  # type: ignore[attr-defined]
    assert ct.wait(0) is None  # type: ignore[attr-defined]
    assert ct.wait(0.2) is None  # type: ignore[attr-defined]
    assert 0.2 <= time.monotonic() - t0 < 2


def test_wait_returns_to_python_signal_handlers(ct: object) -> None:
    """sigtimedwait(2) fails with EINTR when a handler runs; the Python
    handler then runs and may raise out of wait."""

    class Boom(Exception):
        pass

    def handler(signo: int, frame: object) -> None:
        raise Boom

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        main = threading.get_ident()
        th = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1))
        th.start()
        with pytest.raises(Boom):
            ct.wait(5)  # type: ignore[attr-defined]
        th.join()
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_host_signal_among_busy_events(ct: object, guests: dict[str, Path]) -> None:
    """A guest that keeps wait busy does not starve host signals."""
    ct.set_host_signals([signal.SIGUSR2])  # type: ignore[attr-defined]
    try:
        c = Checked(ct)
        pid = c.spawn(spec(guests["unames"], "100000", seccomp_filter=UNAME))
        seen = 0
        while True:
            ev = c.next()
            if isinstance(ev, SyscallStop):
                seen += 1
                if seen == 100:
                    # To this thread (see test_platform's test_host_signal).
                    signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
                ct.complete(ev.tid, 0)  # type: ignore[attr-defined]
            elif isinstance(ev, HostSignal):
                assert ev.signo == signal.SIGUSR2
                assert seen < 300
                break
            else:
                c.answer(ev)
        ct.kill(pid, signal.SIGKILL)  # type: ignore[attr-defined]
    finally:
        ct.set_host_signals([])  # type: ignore[attr-defined]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})


def test_unblocked_sigchld_is_reported() -> None:
    t = CTracer()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        with pytest.raises(TracerError) as exc:
            t.wait(0.01)
        assert exc.value.errno == errno.EDEADLK
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        t.close()


# --- threads and lifetime -----------------------------------------------------


def test_owner_thread_only(ct: object) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        for call in (lambda: ct.wait(0), lambda: ct.resume(1), lambda: ct.close()):  # type: ignore[attr-defined]
            try:
                call()
            except TracerError as exc:
                errors.append(exc)
        ct.wake()  # type: ignore[attr-defined]  # the one call allowed anywhere

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert [e.errno for e in errors] == [errno.EPERM] * 3  # type: ignore[attr-defined]
    assert same(ct.wait(1), Wakeup())  # type: ignore[attr-defined]


def test_closed_tracer(ct: object) -> None:
    ct.close()  # type: ignore[attr-defined]
    ct.close()  # type: ignore[attr-defined]
    ct.wake()  # type: ignore[attr-defined]
    with pytest.raises(TracerError) as exc:
        ct.wait(0)  # type: ignore[attr-defined]
    assert exc.value.errno == errno.EBADF
    with pytest.raises(TracerError):
        ct.spawn(spec("/bin/true"))  # type: ignore[attr-defined]


def test_close_kills_a_whole_tree(ct: object) -> None:
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", "sleep 100 & (sleep 100 & sleep 100) & sleep 100; wait"))
    execs = 0
    while execs < 5:
        ev = c.next()
        execs += isinstance(ev, Execed)
        c.answer(ev)
    os.killpg(pid, signal.SIGSTOP)
    while not any(isinstance(e, GroupStopped) for e in c.events):
        c.answer(c.next())
    pids = set(c.known)
    assert len(pids) >= 5
    ct.close()  # type: ignore[attr-defined]
    assert not traced_by(threading.get_native_id())
    deadline = time.monotonic() + 5
    while not all(gone_or_zombie(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone_or_zombie(p) for p in pids)


def test_group_stop_of_a_process_group(ct: object) -> None:
    c = Checked(ct)
    pid = c.spawn(spec("/bin/sh", "-c", "sleep 100 & sleep 100 & wait"))
    execs = 0
    while execs < 3:
        ev = c.next()
        execs += isinstance(ev, Execed)
        c.answer(ev)
    os.killpg(pid, signal.SIGSTOP)
    stopped: set[int] = set()
    while stopped != c.known:
        ev = c.next()
        if isinstance(ev, GroupStopped):
            stopped.add(ev.tid)
        c.answer(ev)
    assert ct.wait(0.1) is None  # type: ignore[attr-defined]
    os.killpg(pid, signal.SIGCONT)
    continued: set[int] = set()
    while continued != c.known:
        ev = c.next()
        if isinstance(ev, Continued):
            continued.add(ev.tid)
        c.answer(ev)
    ct.kill(pid, signal.SIGKILL)  # type: ignore[attr-defined]
    os.killpg(pid, signal.SIGKILL)
    while c.known:
        c.answer(c.next())


@pytest.mark.slow
def test_round_trip_cost(ct: object, guests: dict[str, Path]) -> None:
    """Generous bound on one trapped-syscall round trip (the benchmark,
    c_tracer/bench.py, measures it properly)."""
    n = 20000
    t0 = time.perf_counter()
    subprocess.run([guests["unames"], str(n)], check=True)
    native = time.perf_counter() - t0
    c = Checked(ct)
    t0 = time.perf_counter()
    pid = c.spawn(spec(guests["unames"], str(n), seccomp_filter=UNAME))
    complete = ct.complete  # type: ignore[attr-defined]

    def handle(ev: Event) -> bool:
        if type(ev) is SyscallStop:
            complete(ev.tid, 0)
            return True
        return False

    c.run(pid, handle)
    per = (time.perf_counter() - t0 - native) / n
    assert per < 200e-6, f"{per * 1e6:.1f} us per trapped call"
