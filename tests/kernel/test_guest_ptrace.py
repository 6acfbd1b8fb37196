"""ptrace inside a machine (issue 16): strace and gdb in a guest, and the
edges of ptrace(2), each compared with the same commands natively.

umld traces every guest thread itself; the guest's own ptrace is the guest
kernel's (umld/core/guest_ptrace.py).  Outputs are compared after
normalising what legitimately differs: pids (the machine has its own),
addresses (ASLR), and the size of "/" (the machine's own root).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User, run, umld_argv

pytestmark = pytest.mark.uses_ptrace

needs_tools = pytest.mark.skipif(
    not (shutil.which("strace") and shutil.which("gdb")), reason="strace and gdb (make install)"
)

PROG = r"""
#include <stdio.h>
static char msg[] = "hello gdb";
int add(int a, int b) { return a + b; }
int main(void) {
	int x = add(2, 3);
	printf("%s %d\n", msg, x);
	return x;
}
"""

THREADS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
int counter;
void *work(void *arg) { (void)arg; for (int i = 0; i < 3; i++) counter++; return NULL; }
int child_work(int v) { return v * 2; }
int main(void) {
	pthread_t t;
	pthread_create(&t, NULL, work, NULL);
	pthread_join(t, NULL);
	write(1, "joined\n", 7);
	pid_t p = fork();
	if (p == 0) { int r = child_work(21); _exit(r); }
	int st; waitpid(p, &st, 0);
	printf("child %d\n", WEXITSTATUS(st));
	return 0;
}
"""

GDB_BASIC = """\
break add
run
bt
info registers rip
x/s msg
set var msg[0] = 'J'
print msg
finish
continue
"""

GDB_THREADS = """\
set pagination off
break work
run
info threads
watch counter
continue
continue
delete
catch syscall write
continue
delete
set follow-fork-mode child
break child_work
continue
bt
step
continue
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The programs, built once, in a directory every user can read."""
    out = Path(f"/tmp/umld-ptrace-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(mode=0o755)
    for name, src in (("prog", PROG), ("threads", THREADS)):
        (out / f"{name}.c").write_text(src)
        subprocess.run(
            ["gcc", "-g", "-O0", "-pthread", "-o", str(out / name), str(out / f"{name}.c")],
            check=True,
        )
    for name, src in (
        ("edges", "ptrace_edges.c"),
        ("super", "seccomp_super.c"),
        ("held_wait", "held_wait.c"),
    ):
        flags = ["-O1", "-Wall", "-Wextra", "-Werror"]
        subprocess.run(["gcc", *flags, "-o", str(out / name), str(GUEST_SRC / src)], check=True)
    for name in ("gdb-basic", "gdb-threads"):
        (out / name).write_text(GDB_BASIC if name == "gdb-basic" else GDB_THREADS)
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _guest(backend: str, work: Path, who: User | None = None) -> list[str]:
    if who is None:
        return umld_argv(backend, f"--bind={work}")
    return who.umld_argv(backend, f"--bind={work}")


def _norm(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+", "ADDR", text)
    text = re.sub(r"\b(process|LWP|Thread|pid) +\d+", r"\1 N", text)
    text = re.sub(r"expected=\d+", "expected=N", text)
    text = re.sub(r"\[New Thread [^]]*\]", "[New Thread]", text)
    # `info threads`: where another thread happens to be when one stops
    # is a matter of timing (natively too).
    text = re.sub(r"^(\*? +\d+ +Thread ADDR \(LWP N\) \"\w+\") .*$", r"\1", text, flags=re.M)
    return re.sub(r" +", " ", text)


def _diff(want: str, got: str) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "native", "guest"))


def _strace_files(out_dir: Path) -> list[str]:
    """What ``strace -ff -o DIR/t`` wrote, one normalised text per process,
    in a stable order."""
    texts = []
    for f in sorted(out_dir.iterdir()):
        text = f.read_text()
        text = re.sub(r"0x[0-9a-f]+", "ADDR", text)
        # Results that are pids, and the size of "/" (the machine's own).
        text = re.sub(r"^((?:vfork|fork|clone3?|wait4)\(.*\)) += \d+$", r"\1 = N", text, flags=re.M)
        text = re.sub(r"(stx?_size)=\d+", r"\1=N", text)
        text = re.sub(r"si_pid=\d+", "si_pid=N", text)
        # The child's CPU time in ticks: 0 or 1 by timing.
        text = re.sub(r"(si_[us]time)=\d+(?: /\* [^*]* \*/)?", r"\1=N", text)
        # Whether the shell's SIGCHLD comes before or after its wait4 for
        # that child returns is a matter of timing, natively too (seen under
        # load): one order.
        text = re.sub(r"^(wait4\(.*)\n(--- SIGCHLD .* ---)$", r"\2\n\1", text, flags=re.M)
        texts.append(text)
    return sorted(texts)


STRACE_CMD = "echo hi > /dev/null; ls / > /dev/null"


@needs_tools
def test_strace_follows_a_shell_as_natively(backend: str, work: Path, tmp_path: Path) -> None:
    native, guest = tmp_path / "native", work / f"guest-{backend}"
    for d in (native, guest):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(mode=0o777)
    argv = ["strace", "-f", "-qq", "-e", "trace=process,file", "-ff"]
    # dash stats $PWD at start: it must name the working directory, which
    # the guest has (the caller's checkout may not be inside the machine).
    env = {**os.environ, "PWD": str(work)}
    r = run([*argv, "-o", str(native / "t"), "sh", "-c", STRACE_CMD], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    r = run(
        [*_guest(backend, work), *argv, "-o", str(guest / "t"), "sh", "-c", STRACE_CMD],
        cwd=work,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    want = _strace_files(native)
    assert len(want) == 2  # sh and ls
    got = _strace_files(guest)
    assert got == want, _diff("\n".join(want), "\n".join(got))


@needs_tools
def test_strace_counts_the_same_calls(backend: str, work: Path) -> None:
    """strace -c: the same calls, the same numbers of them."""

    def table(text: str) -> list[tuple[str, str]]:
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                rows.append((parts[-1], parts[3]))
        return sorted(rows)

    cmd = ["strace", "-c", "-f", "sh", "-c", "cat /etc/hostname /etc/os-release > /dev/null"]
    native = run(cmd, cwd=work)
    guest = run([*_guest(backend, work), *cmd], cwd=work)
    assert guest.returncode == 0, guest.stderr
    assert table(guest.stderr) == table(native.stderr)
    assert ("execve", "2") in table(native.stderr)


@pytest.mark.skipif(not shutil.which("ltrace"), reason="ltrace (make install)")
def test_ltrace_as_natively(backend: str, work: Path) -> None:
    """ltrace: breakpoints in the PLT, single steps over them."""
    cmd = ["ltrace", "-e", "malloc+free+strlen", "/bin/ls", "/usr"]

    def calls(text: str) -> str:
        return re.sub(r" +", " ", re.sub(r"0x[0-9a-f]+", "ADDR", text))

    native = run(cmd)
    guest = run([*_guest(backend, work), *cmd])
    assert guest.returncode == native.returncode == 0, guest.stderr
    assert calls(guest.stderr) == calls(native.stderr)
    assert "strlen(" in native.stderr


@needs_tools
@pytest.mark.parametrize(("program", "script"), [("prog", "gdb-basic"), ("threads", "gdb-threads")])
def test_gdb_in_a_guest_as_natively(backend: str, work: Path, program: str, script: str) -> None:
    """Breakpoints, backtrace, registers, memory read and written, finish;
    threads, a hardware watchpoint, catch syscall, a fork followed into
    the child."""
    cmd = ["gdb", "-batch", "-nx", "-x", str(work / script), str(work / program)]
    native = run(cmd, cwd=work)
    guest = run([*_guest(backend, work), *cmd], cwd=work)
    assert guest.returncode == native.returncode == 0, guest.stderr
    # The inferior's own output and gdb's interleave as they happen to
    # (natively too, even inside a line): compared apart.
    inferior = ("joined\n", "child 42\n", "hello gdb 5\n", "Jello gdb 5\n")
    got, want = _norm(guest.stdout), _norm(native.stdout)
    for text in inferior:
        assert got.count(text) == want.count(text), text
        got, want = got.replace(text, ""), want.replace(text, "")
    assert sorted(got.splitlines()) == sorted(want.splitlines()), _diff(want, got)
    assert "Breakpoint 1" in want
    if program == "threads":
        assert "Hardware watchpoint 2: counter" in want
        assert "exited with code 052" in want


@pytest.mark.parametrize("mode", ["refused", "exitkill", "detach", "regs", "stopped"])
def test_the_edges_of_ptrace_as_natively(backend: str, work: Path, mode: str) -> None:
    """What is refused is refused with the same errno (itself, a pid that
    is not there, a second tracer, a running or untraced tracee, a debug
    register into the kernel, bad options); a tracer's exit kills its
    tracees with PTRACE_O_EXITKILL and lets them go without; registers,
    memory, single-step and PTRACE_SYSEMU."""
    native = run([str(work / "edges"), mode])
    assert native.returncode == 0, native.stderr
    guest = run([*_guest(backend, work), str(work / "edges"), mode])
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr


@pytest.mark.parametrize("mode", ["restart", "norestart"])
def test_a_held_wait_interrupted_by_a_signal(backend: str, work: Path, mode: str) -> None:
    """A tracer waiting for a tracee that is not its child (a wait umld
    holds) gets a signal: with SA_RESTART the wait goes on and reports the
    stop the handler asked for; without, EINTR (tests/guest/held_wait.c)."""
    native = run([str(work / "held_wait"), mode])
    assert "handler ran: 1" in native.stdout, native.stdout
    guest = run([*_guest(backend, work), str(work / "held_wait"), mode])
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr


@needs_tools
def test_as_an_ordinary_user(backend: str, work: Path, ordinary_user: User) -> None:
    cmd = ["gdb", "-batch", "-nx", "-x", str(work / "gdb-basic"), str(work / "prog")]
    native = run(ordinary_user.argv(cmd), cwd=work)
    guest = run([*_guest(backend, work, ordinary_user), *cmd], cwd=work)
    assert sorted(_norm(guest.stdout).splitlines()) == sorted(_norm(native.stdout).splitlines())
    edges = run([*_guest(backend, work, ordinary_user), str(work / "edges"), "regs"])
    assert edges.stdout == run(ordinary_user.argv([str(work / "edges"), "regs"])).stdout


@needs_tools
def test_only_tracers_pay_for_wait(backend: str, work: Path) -> None:
    """wait4 stops in the guest kernel only in a process that traces."""
    plain = run([*umld_argv(backend, "--stats"), "sh", "-c", "/bin/true; /bin/true"])
    assert "wait4" not in plain.stderr, plain.stderr
    traced = run([*umld_argv(backend, "--stats"), "strace", "-o", "/dev/null", "/bin/true"])
    assert traced.returncode == 0, traced.stderr
    assert "wait4" in traced.stderr, traced.stderr


def test_a_seccomp_supervisor_in_a_guest(backend: str, work: Path) -> None:
    """A guest tracer with PTRACE_O_TRACESECCOMP gets the stops of the
    filter its tracee installed, with the filter's data, and skips a call
    as natively; the calls then go on to the guest kernel as the tracer
    left them: uname still answers the machine's name, and a call the
    tracer turned into one umld refuses (swapoff) is refused, not run.
    Without a tracer, RET_TRACE makes each call fail with ENOSYS."""
    native = run([str(work / "super")])
    assert native.returncode == 0, native.stderr
    guest = run([*umld_argv(backend, f"--bind={work}", "--hostname", "inner"), str(work / "super")])
    assert guest.returncode == 0, guest.stderr
    expected = re.sub(r"node=\S+", "node=inner", native.stdout)
    # Natively the rewritten call runs (root: ENOENT); umld refuses it.
    expected = re.sub(r"getuid=-1 errno=\d+", f"getuid=-1 errno={errno.EPERM}", expected)
    assert guest.stdout == expected
    assert "stop data=0x42 nr=39\ngetpid=4242" in guest.stdout
    alone = run([*_guest(backend, work), str(work / "super"), "notrace"])
    assert alone.stdout == run([str(work / "super"), "notrace"]).stdout
    assert alone.stdout.count(f"errno={errno.ENOSYS}") == 3


def test_an_unaware_parent_of_a_traceme_child_goes_on(backend: str, work: Path) -> None:
    """A child's PTRACE_TRACEME gives its parent, a shell that never uses
    ptrace, the wait filter behind its back (written below its stack
    pointer through its vDSO): the shell's waits, exit statuses and later
    commands are as natively."""
    script = (
        f"{work / 'edges'} traceme; echo rc=$?; {work / 'edges'} traceme; echo rc=$?; echo after"
    )
    native = run(["sh", "-c", script])
    assert native.stdout == "rc=3\nrc=3\nafter\n"
    guest = run([*_guest(backend, work), "sh", "-c", script])
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr
