"""Host gdb on a guest process through the export's ``proc/PID/gdb``.

Real ``umld run --mount`` machines run small C programs built here; a
real host gdb (``gdb -batch``, in a process of its own, as the machine's
user) connects with ``target remote DIR/proc/PID/gdb`` and drives them:
breakpoints, registers, memory read and written, steps, threads, a
hardware watchpoint, continue to the exit with its status, detach.  The
same commands run natively on the same program give the same answers
(addresses and pids normalised).  Then the edges: a pid that is not a
guest process, a second gdb, garbage on the socket, the process killed
while gdb waits, gdb killed mid-session.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT, User, wait_for

pytestmark = [pytest.mark.uses_fuse, pytest.mark.uses_ptrace]

PROG = r"""
#include <stdio.h>
#include <unistd.h>
char message[32] = "hello from guest";
int counter = 0;
volatile int go = 0;
int add(int a, int b) { int c = a + b; counter += c; return c; }
int main(void) {
    while (!go) usleep(1000);
    int r = add(2, 3);
    printf("%s %d %d\n", message, r, counter);
    return r + counter;
}
"""

THREADS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile int go = 0;
long total = 0;
pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
void work(long n) { pthread_mutex_lock(&lock); total += n; pthread_mutex_unlock(&lock); }
void *worker(void *arg) {
    while (!go) usleep(1000);
    work((long)arg);
    return NULL;
}
int main(void) {
    pthread_t t[2];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    while (!go) usleep(1000);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    printf("total %ld\n", total);
    return (int)total;
}
"""

#: Kept short: gdb's socket path must fit in sun_path (108 bytes).
BASE = Path("/tmp/umld-gdb-tests")


@pytest.fixture(scope="module")
def progs() -> Iterator[Path]:
    BASE.mkdir(mode=0o755, exist_ok=True)
    out = BASE / f"progs-{os.getpid()}"
    out.mkdir(mode=0o755, exist_ok=True)
    for name, src in (("prog", PROG), ("threads", THREADS)):
        (out / f"{name}.c").write_text(src)
        cc = ["gcc", "-g", "-O0", "-pthread", "-Wall", "-Wextra", "-Werror"]
        subprocess.run([*cc, "-o", str(out / name), str(out / f"{name}.c")], check=True)
    yield out
    subprocess.run(["rm", "-rf", str(out)], check=False)


class Machine:
    """``umld run --mount MNT -- PROG``, as root or as ``user``."""

    def __init__(self, backend: str, prog: Path, user: User | None, tag: str) -> None:
        self.user = user
        self.mnt = (user.work if user else BASE) / f"m-{tag}-{os.getpid()}"
        self.mnt.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(self.mnt, user.uid, user.gid)
            argv = user.umld_argv(backend, "--mount", str(self.mnt))
        else:
            import sys

            argv = [sys.executable, "-m", "umld", "run", f"--tracer={backend}"]
            argv += ["--mount", str(self.mnt), "--"]
        self.proc = subprocess.Popen(
            [*argv, str(prog)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.prog = prog
        self.pid = wait_for(self._find_pid, "the guest process in the export")

    def as_owner(self, argv: Sequence[str]) -> list[str]:
        return self.user.argv(argv) if self.user else list(argv)

    def _find_pid(self) -> int | None:
        # Looked at by a process of the machine's user (a user's mount
        # answers that user alone).
        script = (
            "import os,sys\n"
            "d=sys.argv[1]\n"
            "for p in os.listdir(d):\n"
            "  try:\n"
            "    c=open(f'{d}/{p}/cmdline','rb').read()\n"
            "  except OSError: continue\n"
            "  if c.startswith(sys.argv[2].encode()): print(p)\n"
        )
        r = subprocess.run(
            self.as_owner(
                ["/usr/bin/python3", "-c", script, str(self.mnt / "proc"), str(self.prog)]
            ),
            capture_output=True,
            text=True,
            timeout=10,
        )
        return int(r.stdout.split()[0]) if r.stdout.split() else None

    def read(self, path: str) -> str:
        """A file of the export, read by a process of the machine's user."""
        r = subprocess.run(
            self.as_owner(["/bin/cat", path]), capture_output=True, text=True, timeout=10
        )
        return r.stdout

    @property
    def sock(self) -> str:
        return str(self.mnt / "proc" / str(self.pid) / "gdb")

    def gdb(self, *commands: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.as_owner(gdb_argv(f"target remote {self.sock}", *commands)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
        # A umld killed leaves its mount behind.
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        try:
            self.mnt.rmdir()
        except OSError:
            pass


def gdb_argv(*commands: str) -> list[str]:
    argv = ["gdb", "-batch", "-nx", "-iex", "set debuginfod enabled off"]
    for c in commands:
        argv += ["-ex", c]
    return argv


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest) -> User | None:
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("needs root")
        return None
    return request.getfixturevalue("ordinary_user")  # type: ignore[no-any-return]


@pytest.fixture
def machines(backend: str, who: User | None, progs: Path) -> Iterator[list[Machine]]:
    made: list[Machine] = []
    yield made
    for m in made:
        m.close()


_SERIAL = itertools.count()


def start(machines: list[Machine], backend: str, who: User | None, prog: Path) -> Machine:
    m = Machine(backend, prog, who, f"{prog.name}{next(_SERIAL)}")
    machines.append(m)
    return m


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+", "ADDR", text)
    text = re.sub(r"(process|Thread) [0-9.]+", r"\1 N", text)
    return text


def _lines(text: str, *starts: str) -> list[str]:
    return [
        _normalise(line) for line in text.splitlines() if line.startswith(starts) and line.strip()
    ]


SESSION = (
    "break add",
    "set var go = 1",
    "continue",
    "bt",
    "info registers rip",
    "x/s message",
    "set var message[0] = 'J'",
    "p a + b",
    "stepi",
    "step",
    "p c",
    "finish",
    "next",
    "continue",
)


def test_breakpoint_registers_memory_step_and_exit(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    r = m.gdb(*SESSION)
    code, out, err = m.finish()
    assert (code, out) == (10, "Jello from guest 5 5\n"), (r.stdout, r.stderr, err)
    assert "Breakpoint 1, add (a=2, b=3)" in r.stdout, r.stdout + r.stderr
    assert "[Inferior 1 (process " in r.stdout and "exited with code 012]" in r.stdout
    # The same commands natively (started under gdb with starti rather
    # than attached: from the breakpoint on, every answer is the same).
    native = subprocess.run(
        [*gdb_argv("starti", *SESSION), str(progs / "prog")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert _after_breakpoint(r.stdout) == _after_breakpoint(native.stdout), (
        r.stdout,
        native.stdout,
    )


def _after_breakpoint(text: str) -> list[str]:
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Breakpoint 1, add"))
    # The program's own output goes elsewhere under umld (its stdout).
    return [_normalise(line) for line in lines[first:] if "from guest" not in line]


def test_threads_and_a_hardware_watchpoint(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "threads")
    r = m.gdb(
        "info threads",
        "thread 2",
        "break work",
        "set var go = 1",
        "continue",
        "p n",
        "delete",
        "watch total",
        "continue",
        "continue",
        "delete",
        "continue",
    )
    code, out, _ = m.finish()
    assert (code, out) == (3, "total 3\n"), r.stdout + r.stderr
    assert len(re.findall(r"^[* ] +[123] +Thread ", r.stdout, re.M)) == 3, r.stdout
    assert "[Switching to thread 2 (Thread " in r.stdout, r.stdout
    assert re.search(r"Thread \d hit Breakpoint 1, work \(n=[12]\)", r.stdout), r.stdout
    assert "Hardware watchpoint 2: total" in r.stdout, r.stdout
    assert r.stdout.count("hit Hardware watchpoint 2: total") == 2, r.stdout
    assert "Old value = 0" in r.stdout and "New value = 3" in r.stdout, r.stdout
    assert "exited with code 03]" in r.stdout, r.stdout


def test_detach_leaves_it_running(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    r = m.gdb("break add", "set var go = 1", "continue", "detach")
    assert "Breakpoint 1, add" in r.stdout and "detached]" in r.stdout, r.stdout + r.stderr
    code, out, _ = m.finish()
    # The breakpoint is gone with gdb: the program runs on to its end.
    assert (code, out) == (10, "hello from guest 5 5\n")


def test_gdb_killed_mid_session_resumes_the_process(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    gdb = subprocess.Popen(
        m.as_owner(gdb_argv(f"target remote {m.sock}", "break add", "set var go = 1",
                            "continue", "shell sleep 600")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert gdb.stdout is not None
    for line in gdb.stdout:
        if line.startswith("Breakpoint 1, add"):
            break
    _kill_tree(gdb.pid)
    gdb.wait(10)
    gdb.stdout.close()
    code, out, _ = m.finish()
    assert (code, out) == (10, "hello from guest 5 5\n")


def _kill_tree(pid: int) -> None:
    """SIGKILL gdb (and the sleep of its shell, which keeps no socket)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(pid, signal.SIGKILL)


def test_a_second_gdb_is_refused_and_garbage_is_harmless(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    first = subprocess.Popen(
        m.as_owner(gdb_argv(f"target remote {m.sock}", "echo ATTACHED\\n", "shell sleep 600")),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert first.stdout is not None
    try:
        for line in first.stdout:
            if "ATTACHED" in line:
                break
        second = m.gdb("info threads", timeout=30)
        text = second.stdout + second.stderr
        assert "already has a debugger" in text and "Traceback" not in text, text
        assert "Thread" not in second.stdout, text
    finally:
        _kill_tree(first.pid)
        first.wait(10)
        first.stdout.close()
    # Garbage: no packet, a bad checksum, an unknown and a malformed
    # packet, a half packet; then a real session still works.
    junk = (
        b"\x00\xffnot a packet$qSupported#00$Zq#e1$m,#8d$Hgzz#00$mzz,1#00"
        b"$g#67$M0,1:zz#00$X1,1:#00$vCont;q#00$vFile:open:zz#00$unfinished"
    )
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(bytes.fromhex(sys.argv[2]))\n"
        "s.settimeout(5)\n"
        "try:\n  s.recv(65536)\nexcept OSError: pass\n"
        "s.close()\n"
    )
    for _ in range(2):
        subprocess.run(
            m.as_owner(["/usr/bin/python3", "-c", script, m.sock, junk.hex()]),
            check=True,
            timeout=30,
        )
    r = m.gdb("set var go = 1", "continue")
    assert "exited with code 012]" in r.stdout, r.stdout + r.stderr
    code, out, err = m.finish()
    assert (code, out) == (10, "hello from guest 5 5\n")
    assert "Traceback" not in err, err


def test_the_process_killed_while_gdb_waits(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    ctl = str(m.mnt / "proc" / str(m.pid) / "ctl")
    kill = subprocess.Popen(
        m.as_owner(["/bin/sh", "-c", f"sleep 2; echo kill > {ctl}"]),
    )
    r = m.gdb("continue")
    kill.wait(30)
    assert "Program terminated with signal SIGKILL" in r.stdout, r.stdout + r.stderr
    code, _, _ = m.finish()
    assert code == 128 + signal.SIGKILL


def test_only_guest_processes_have_a_socket(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    script = (
        "import os,sys,stat\n"
        "for p in sys.argv[2:]:\n"
        "  try: print(stat.S_ISSOCK(os.stat(sys.argv[1]+'/'+p+'/gdb').st_mode))\n"
        "  except OSError as e: print(e.errno)\n"
    )
    r = subprocess.run(
        m.as_owner(["/usr/bin/python3", "-c", script, str(m.mnt / "proc"), str(m.pid), "1",
                    str(os.getpid()), "99999"]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # The guest's own process; its init (pid 1) and host pids are none.
    assert r.stdout.split() == ["True", "2", "2", "2"], r.stdout + r.stderr
    st = os.stat(m.sock) if who is None else None
    if st is not None:
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    r2 = subprocess.run(
        m.as_owner(gdb_argv(f"target remote {m.mnt}/proc/99999/gdb")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "No such file or directory" in r2.stderr, r2.stderr


def test_gdb_killed_while_the_process_runs_leaves_nothing_behind(
    backend: str, who: User | None, progs: Path, machines: list[Machine]
) -> None:
    m = start(machines, backend, who, progs / "prog")
    gdb = subprocess.Popen(
        m.as_owner(
            gdb_argv(
                f"target remote {m.sock}",
                "break add",
                "watch counter",
                "echo CONTINUING\\n",
                "continue",
            )
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert gdb.stdout is not None
    for line in gdb.stdout:
        if "CONTINUING" in line:
            break
    # The continue reached umld once the process runs again (its state
    # is no longer "t (tracing stop)").
    status = f"{m.mnt}/proc/{m.pid}/status"
    wait_for(
        lambda: "state:\tt" not in m.read(status).lower(),
        "the process running after gdb's continue",
    )
    _kill_tree(gdb.pid)
    gdb.wait(10)
    gdb.stdout.close()
    # Nothing of the first gdb is left (no int3, no debug register): a
    # second one lets the program go and leaves; the program ends well.
    r = wait_for(
        lambda: (lambda r: r if "detached]" in r.stdout else None)(
            m.gdb("set var go = 1", "detach", timeout=30)
        ),
        "a second gdb after the first was killed",
    )
    code, out, _ = m.finish()
    assert (code, out) == (10, "hello from guest 5 5\n"), r.stdout + r.stderr
