"""Unmodified programs give the same results natively and under umld.

Each test runs the same guest program natively and under `umld run` on
each tracer backend and compares exit status, stdout and stderr.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Compare

pytestmark = pytest.mark.uses_ptrace


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", textwrap.dedent(script)]


def py(code: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code)]


# -- shells and coreutils -------------------------------------------------


def test_pipeline(compare: Compare) -> None:
    compare(sh("seq 1 20000 | sort -rn | head -n 3 | tr '\\n' ' ' | wc -c; echo done"))


def test_exit_codes(compare: Compare) -> None:
    for code in (0, 1, 42, 255):
        compare(sh(f"exit {code}"))


def test_death_by_signal_is_128_plus_n(compare: Compare) -> None:
    r = compare(sh("kill -TERM $$"))
    assert r.returncode == 143


def test_shebang_script(compare: Compare, tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text('#!/bin/sh\necho "args: $*"\nexit 3\n')
    script.chmod(0o755)
    compare([str(script), "a", "b c"])


def test_execve_errors(compare: Compare, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    noexec = tmp_path / "noexec"
    noexec.write_text("#!/bin/sh\necho hi\n")
    noexec.chmod(0o644)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01garbage")
    garbage.chmod(0o755)
    code = f"""
        import os
        for p in ["{tmp_path}/missing", "{noexec}", "{garbage}", "{tmp_path}"]:
            try:
                os.execv(p, [p])
            except OSError as e:
                print(p.rsplit("/", 1)[1], e.errno)
    """
    compare(py(code))


# -- python3 ----------------------------------------------------------------


def test_python_threads(compare: Compare) -> None:
    compare(
        py(
            """
            import threading, queue
            q = queue.Queue()
            def work(i):
                q.put(sum(range(i * 1000)))
            ts = [threading.Thread(target=work, args=(i,)) for i in range(16)]
            for t in ts: t.start()
            for t in ts: t.join()
            print(sorted(q.get() for _ in ts))
            """
        )
    )


def test_python_subprocess(compare: Compare) -> None:
    compare(
        py(
            """
            import subprocess
            r = subprocess.run(["sh", "-c", "echo out; echo err >&2; exit 4"],
                               capture_output=True, text=True)
            print(r.returncode, repr(r.stdout), repr(r.stderr))
            p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            print(p.communicate(b"through a pipe")[0])
            """
        )
    )


def test_python_multiprocessing(compare: Compare, tmp_path: Path) -> None:
    # A file, not -c: the spawn and forkserver methods re-import __main__.
    script = tmp_path / "mp.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp
            def sq(x): return x * x
            if __name__ == "__main__":
                for method in ("fork", "spawn", "forkserver"):
                    with mp.get_context(method).Pool(3) as pool:
                        print(method, sum(pool.map(sq, range(100))))
            """
        )
    )
    compare(["python3", str(script)], timeout=180)


def test_python_signals(compare: Compare) -> None:
    compare(
        py(
            """
            import os, signal, time
            seen = []
            signal.signal(signal.SIGUSR1, lambda s, f: seen.append("usr1"))
            signal.signal(signal.SIGALRM, lambda s, f: seen.append("alrm"))
            os.kill(os.getpid(), signal.SIGUSR1)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            time.sleep(0.2)
            pid = os.fork()
            if pid == 0:
                signal.pause()
            os.kill(pid, signal.SIGTERM)
            _, st = os.waitpid(pid, 0)
            print(seen, os.WIFSIGNALED(st) or os.WEXITSTATUS(st))
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            os.kill(os.getpid(), signal.SIGUSR2)
            print(signal.sigwait({signal.SIGUSR2}))
            """
        )
    )


def test_python_select_epoll(compare: Compare) -> None:
    compare(
        py(
            """
            import os, select, socket
            r, w = os.pipe()
            print(select.select([r], [], [], 0))
            os.write(w, b"x")
            print(select.select([r], [], [], 1)[0] == [r])
            ep = select.epoll()
            a, b = socket.socketpair()
            ep.register(a.fileno(), select.EPOLLIN)
            print(ep.poll(0.01))
            b.send(b"hello")
            print([(fd == a.fileno(), ev) for fd, ev in ep.poll(1)])
            print(a.recv(10))
            """
        )
    )


def test_tcp_server_and_client(compare: Compare) -> None:
    compare(
        py(
            """
            import socket, threading
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            def serve():
                for _ in range(3):
                    c, _ = srv.accept()
                    with c:
                        c.sendall(c.recv(100).upper())
            t = threading.Thread(target=serve)
            t.start()
            for word in (b"one", b"two", b"three"):
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.sendall(word)
                    print(c.recv(100))
            t.join()
            """
        )
    )


# -- toolchains ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_gcc_compile_link_run(compare: Compare, tmp_path: Path) -> None:
    (tmp_path / "m.c").write_text(
        '#include <stdio.h>\nint f(int);\nint main(void){printf("%d\\n", f(20));return 0;}\n'
    )
    (tmp_path / "f.c").write_text("int f(int n){return n < 2 ? n : f(n-1) + f(n-2);}\n")
    script = f"""
        cd {tmp_path}
        rm -f *.o prog
        gcc -O2 -c f.c && gcc -O2 -c m.c && gcc -o prog m.o f.o && ./prog
    """
    compare(sh(script))


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make(compare: Compare, tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(
        "all: b\n\na: ; @echo making a > a\nb: a ; @cat a > b; echo made b\nclean: ; @rm -f a b\n"
    )
    compare(sh(f"cd {tmp_path} && make -s clean && make -s -j2 && cat b"))


def test_tar_create_extract(compare: Compare, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1000 * i))
    script = f"""
        cd {tmp_path}
        rm -rf out a.tar.gz; mkdir out
        tar -czf a.tar.gz -C src . && tar -xzf a.tar.gz -C out
        diff -r src out && echo same
        tar -tzf a.tar.gz | sort
    """
    compare(sh(script))


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git(compare: Compare, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="A",
        GIT_AUTHOR_EMAIL="a@x",
        GIT_COMMITTER_NAME="A",
        GIT_COMMITTER_EMAIL="a@x",
        GIT_AUTHOR_DATE="2020-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2020-01-01T00:00:00Z",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
    )
    script = f"""
        cd {tmp_path}
        rm -rf repo && git init -q -b main repo && cd repo
        echo hello > a && git add a && git commit -qm first
        echo world >> a && git commit -qam second
        git log --format='%H %s'
        git status --short
    """
    compare(sh(script), env=env)


# -- processes (C guests) ------------------------------------------------------


def test_processes(compare: Compare, guest_bin: Path) -> None:
    r = compare([str(guest_bin / "processes")])
    assert "zombie state=Z" in r.stdout
    assert "stopped in /proc=1" in r.stdout


def test_clone_raw(compare: Compare, guest_bin: Path) -> None:
    compare([str(guest_bin / "clone_raw")])


def test_exec_from_non_leader_thread(compare: Compare, guest_bin: Path) -> None:
    r = compare([str(guest_bin / "exec_from_thread")])
    assert r.stdout == "exec from thread ok\n"


def test_leader_exits_first(compare: Compare, guest_bin: Path) -> None:
    r = compare([str(guest_bin / "leader_exits_first")])
    assert r.returncode == 7
