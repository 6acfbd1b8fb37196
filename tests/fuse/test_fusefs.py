"""umld.fusefs through a real mount: the demo server (serve_demo.py) in a
subprocess, used from here with plain syscalls and with real tools.

Every access that could wait on the server runs under a time limit, so a
hung export fails a test instead of hanging the run.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fuse.conftest import Server, mounted, start_server, stop_server

pytestmark = pytest.mark.uses_fuse

T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T], what: str = "an access to the mount") -> T:
    """``fn()`` in a thread; fail (leaving the thread behind) if it takes longer."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"hung: {what} took more than {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def sh(script: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    # bash: its echo reports the errno of a failed write(2) (dash says
    # "I/O error" whatever it was).
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )


def ctl(server: Server, *lines: str) -> None:
    (server.mnt / "ctl").write_text("".join(f"{line}\n" for line in lines))


def events_now(server: Server) -> list[str]:
    """The retained lines of `events`, read without waiting (O_NONBLOCK)."""

    def read() -> list[str]:
        fd = os.open(server.mnt / "events", os.O_RDONLY | os.O_NONBLOCK)
        data = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        return data.decode().splitlines()

    return within(5, read)


def read_until(stream: Any, needle: bytes, timeout: float = 5.0) -> bytes:
    """Read a pipe until ``needle`` shows up; fail after ``timeout``."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"{needle!r} did not show up; got {data[-500:]!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"end of output before {needle!r}; got {data[-500:]!r}")
        data += chunk
    return data


def tracebacks(server: Server) -> int:
    return server.log().count("Traceback (most recent call last)")


# -- synthetic nodes ---------------------------------------------------------


def test_snapshot_is_built_once_per_open(demo: Server) -> None:
    counter = demo.mnt / "counter"
    first = int(within(5, counter.read_text))
    assert int(within(5, counter.read_text)) == first + 1
    fd = os.open(counter, os.O_RDONLY)
    try:
        head = os.read(fd, 1)
        for _ in range(3):  # other opens meanwhile do not change this one's content
            within(5, counter.read_text)
        rest = b""
        while chunk := within(5, lambda: os.read(fd, 1)):
            rest += chunk
    finally:
        os.close(fd)
    assert head + rest == f"{first + 2}\n".encode()
    assert os.stat(counter).st_size == 0
    assert within(5, lambda: sh(f"cat {counter}")).stdout == f"{first + 6}\n"


def test_read_only_files_refuse_writing_even_to_root(demo: Server) -> None:
    for name in ("counter", "events"):
        for flags in (os.O_WRONLY, os.O_RDWR):
            with pytest.raises(PermissionError) as e:
                os.open(demo.mnt / name, flags)
            assert e.value.errno == errno.EACCES
    r = sh(f"echo 1 > {demo.mnt / 'counter'}")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    with pytest.raises(PermissionError):
        os.open(demo.mnt / "ctl", os.O_RDONLY)
    with pytest.raises(PermissionError):
        os.chmod(demo.mnt / "counter", 0o666)
    with pytest.raises(PermissionError):
        os.mkdir(demo.mnt / "settings" / "new")


def test_setting_is_applied_or_refused_with_einval(demo: Server) -> None:
    level = demo.mnt / "settings" / "level"
    assert within(5, lambda: sh(f"echo 42 > {level}")).returncode == 0
    assert level.read_text() == "42\n"
    for bad in ("bad", "1000", "''"):
        r = within(5, lambda: sh(f"echo {bad} > {level}"))  # noqa: B023
        assert r.returncode != 0, bad
        assert "Invalid argument" in r.stderr, r.stderr
        assert level.read_text() == "42\n"

    # Pieces of one value, in several write(2)s of one descriptor.
    fd = os.open(level, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"1")
    os.write(fd, b"7\n")
    os.close(fd)
    assert level.read_text() == "17\n"

    # No final newline: applied at close, and refused there.
    level.write_text("23")
    assert level.read_text() == "23\n"
    fd = os.open(level, os.O_WRONLY)
    os.write(fd, b"x")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    assert level.read_text() == "23\n"

    # A reader keeps the value of its open().
    with open(level, "rb", buffering=0) as reader:
        level.write_text("5\n")
        assert reader.read() == b"23\n"
    assert "config level=5" in events_now(demo)


def test_control_file_runs_one_command_per_line(demo: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    r = within(5, lambda: sh(f"printf 'log one-{tag}\\n\\nlog two-{tag}\\n' > {demo.mnt / 'ctl'}"))
    assert r.returncode == 0, r.stderr
    lines = events_now(demo)
    assert lines.index(f"one-{tag}") < lines.index(f"two-{tag}")

    r = within(5, lambda: sh(f"echo 'frobnicate now' > {demo.mnt / 'ctl'}"))
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    with pytest.raises(OSError) as e:
        ctl(demo, "log fine", "nonsense", f"log never-{tag}")
    assert e.value.errno == errno.EINVAL
    assert f"never-{tag}" not in events_now(demo)


def test_a_bug_in_a_callable_is_eio_and_the_server_carries_on(demo: Server) -> None:
    before = tracebacks(demo)
    with pytest.raises(OSError) as e:
        within(5, (demo.mnt / "bug").read_bytes)
    assert e.value.errno == errno.EIO
    fd = os.open(demo.mnt / "ctl", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"crash\n")
    finally:
        os.close(fd)
    assert e.value.errno == errno.EIO
    assert demo.alive()
    within(5, (demo.mnt / "counter").read_text)
    log = demo.log()
    assert tracebacks(demo) == before + 2
    assert "ZeroDivisionError" in log and "RuntimeError: a bug in a command handler" in log


def test_dynamic_directory_entries_appear_and_vanish(demo: Server) -> None:
    procs = demo.mnt / "procs"
    name = f"p{uuid.uuid4().hex[:6]}"
    assert name not in os.listdir(procs)
    ctl(demo, f"spawn {name}")
    assert name in within(5, lambda: os.listdir(procs))
    assert (procs / name / "status").read_text() == f"name: {name}\n"
    assert within(5, lambda: sh(f"ls {procs}")).stdout.split().count(name) == 1

    held = os.open(procs / name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ctl(demo, f"reap {name}")
        assert name not in os.listdir(procs)
        with pytest.raises(FileNotFoundError):
            os.stat(procs / name)
        with pytest.raises(FileNotFoundError):
            within(5, lambda: os.open("status", os.O_RDONLY, dir_fd=held))
        assert within(5, lambda: os.listdir(held)) == []
    finally:
        os.close(held)
    ctl(demo, f"spawn {name}")  # back again, under the same name
    assert (procs / name / "status").read_text() == f"name: {name}\n"
    ctl(demo, f"reap {name}")


def test_symlink(demo: Server) -> None:
    assert os.readlink(demo.mnt / "link") == "counter"
    assert os.lstat(demo.mnt / "link").st_size == len("counter")
    assert int((demo.mnt / "link").read_text()) > 0


def test_statfs_of_a_synthetic_root(demo: Server) -> None:
    st = os.statvfs(demo.mnt)
    assert st.f_namemax == 255 and st.f_blocks == 0


# -- the event stream ----------------------------------------------------------


def test_two_readers_each_get_every_line(demo: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    markers = [f"reader-{tag}-{i}" for i in range(5)]
    fds = [os.open(demo.mnt / "events", os.O_RDONLY) for _ in range(2)]
    got: list[list[str]] = [[], []]

    def follow(k: int) -> None:
        data = b""
        while markers[-1].encode() + b"\n" not in data:
            data += os.read(fds[k], 1 << 16)
        got[k] = data.decode().splitlines()

    readers = [threading.Thread(target=follow, args=(k,), daemon=True) for k in (0, 1)]
    try:
        for r in readers:
            r.start()
        for m in markers:
            ctl(demo, f"log {m}")
            time.sleep(0.05)  # ticks interleave: each reader must get them too
        for r in readers:
            r.join(10)
            assert not r.is_alive(), "a reader did not get every line"
    finally:
        for fd in fds:
            os.close(fd)
    a, b = got
    for lines in got:
        assert [line for line in lines if line in markers] == markers
    # Every line from the first marker on, in the same order, for both.
    span_a = a[a.index(markers[0]) : a.index(markers[-1])]
    assert span_a == b[b.index(markers[0]) : b.index(markers[-1])]
    assert any(line.startswith("tick ") for line in a[a.index(markers[0]) :])


def test_tail_f_follows_the_stream(demo: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    ctl(demo, f"log before-{tag}")
    tail = subprocess.Popen(
        ["tail", "-n", "3", "-f", str(demo.mnt / "events")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # stdout is a pipe: tail only flushes between its polls, so this
        # also shows that its reads at the end do not wait.
        read_until(tail.stdout, b"tick ")
        for i in range(2):
            ctl(demo, f"log after-{tag}-{i}")
            read_until(tail.stdout, f"after-{tag}-{i}\n".encode())
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=5) == -signal.SIGINT
        assert tail.stdout is not None and tail.stderr is not None
        tail.stdout.close()
        assert tail.stderr.read() == b""
        tail.stderr.close()


@pytest.mark.parametrize("how", ["empty log", "descriptor at the end"])
def test_tail_f_started_at_the_end(small_ring: Server, how: str) -> None:
    events = small_ring.mnt / "events"
    if how == "empty log":
        argv = ["tail", "-f", str(events)]
        stdin: int | None = None
    else:
        ctl(small_ring, "log old")
        stdin = os.open(events, os.O_RDONLY)
        os.lseek(stdin, 0, os.SEEK_END)
        argv = ["tail", "-n", "0", "-s", "0.1", "-f", "-"]
    tail = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE)
    try:
        time.sleep(0.3)  # tail reached its follow loop (or not)
        ctl(small_ring, "log new")
        assert read_until(tail.stdout, b"new\n") == b"new\n"
    finally:
        if stdin is not None:
            os.close(stdin)
        tail.kill()
        tail.communicate()


def test_cat_follows_and_ctrl_c_ends_it(demo: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    cat = subprocess.Popen(["cat", str(demo.mnt / "events")], stdout=subprocess.PIPE)
    try:
        read_until(cat.stdout, b"tick ")
        ctl(demo, f"log cat-{tag}")
        read_until(cat.stdout, f"cat-{tag}\n".encode())
        time.sleep(0.3)  # cat now waits in read(2) for the next line
        started = time.monotonic()
        cat.send_signal(signal.SIGINT)
        assert cat.wait(timeout=5) == -signal.SIGINT
        assert time.monotonic() - started < 2
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait()
        assert cat.stdout is not None
        cat.stdout.close()
    assert demo.alive()


def test_python_reader_gets_keyboardinterrupt(demo: Server) -> None:
    code = (
        "import sys\n"
        "f = open(sys.argv[1], 'rb', buffering=0)\n"
        "print('open', flush=True)\n"
        "try:\n"
        "    while True: f.read(1 << 16)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    reader = subprocess.Popen(
        ["python3", "-c", code, str(demo.mnt / "events")], stdout=subprocess.PIPE
    )
    try:
        read_until(reader.stdout, b"open\n")
        time.sleep(0.5)
        reader.send_signal(signal.SIGINT)
        out, _ = reader.communicate(timeout=5)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert out == b"interrupted\n"
    assert reader.returncode == 0


def test_ring_keeps_the_newest_lines_and_laggards_skip_ahead(small_ring: Server) -> None:
    events = small_ring.mnt / "events"
    ctl(small_ring, *(f"log early-{i}" for i in range(3)))
    fd = os.open(events, os.O_RDONLY)
    try:
        assert os.read(fd, 1 << 16).decode().splitlines() == [f"early-{i}" for i in range(3)]
        ctl(small_ring, *(f"log late-{i}" for i in range(20)))
        # Fell behind: the next read starts at the oldest line kept.
        data = within(5, lambda: os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    newest = [f"late-{i}" for i in range(15, 20)]
    assert data.decode().splitlines() == newest
    assert events_now(small_ring) == newest
    logged = [f"early-{i}" for i in range(3)] + [f"late-{i}" for i in range(20)]
    total = sum(len(f"{line}\n") for line in logged)
    assert os.stat(events).st_size == total  # every byte ever logged


def test_poll_waits_for_the_next_line(small_ring: Server) -> None:
    ctl(small_ring, "log first")
    fd = os.open(small_ring.mnt / "events", os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert within(5, lambda: poller.poll(0)) == [(fd, select.POLLIN)]
        assert os.read(fd, 100) == b"first\n"
        with pytest.raises(BlockingIOError):
            os.read(fd, 100)
        assert within(5, lambda: poller.poll(200)) == []
        threading.Timer(0.2, ctl, (small_ring, "log second")).start()
        started = time.monotonic()
        assert within(5, lambda: poller.poll(3000)) == [(fd, select.POLLIN)]
        assert time.monotonic() - started < 2
        assert os.read(fd, 100) == b"second\n"
    finally:
        os.close(fd)


# -- the host tree ---------------------------------------------------------------


def test_host_tree_is_coherent_both_ways(demo: Server) -> None:
    host, exported = demo.host, demo.mnt / "host"
    (host / "g.txt").write_text("from the guest\n")
    assert within(5, (exported / "g.txt").read_text) == "from the guest\n"
    (exported / "e.txt").write_text("from the export\n")
    assert (host / "e.txt").read_text() == "from the export\n"

    for i in range(20):  # same size every time: nothing may be cached
        (host / "g.txt").write_text(f"v{i:03}\n")
        assert (exported / "g.txt").read_text() == f"v{i:03}\n"
        (exported / "g.txt").write_text(f"w{i:03}\n")
        assert (host / "g.txt").read_text() == f"w{i:03}\n"

    with open(exported / "g.txt", "rb", buffering=0) as reader:
        reader.read()
        with open(host / "g.txt", "ab") as appender:
            appender.write(b"appended\n")
        assert reader.read() == b"appended\n"
        assert os.fstat(reader.fileno()).st_size == len(b"w019\nappended\n")

    (host / "new-dir").mkdir()
    assert "new-dir" in os.listdir(exported)
    (host / "new-dir").rmdir()
    assert "new-dir" not in os.listdir(exported)
    with pytest.raises(FileNotFoundError):
        os.stat(exported / "new-dir")

    payload = os.urandom(3 << 20)
    (host / "blob").write_bytes(payload)
    r = within(20, lambda: sh(f"cp {exported / 'blob'} {exported / 'blob2'}"))
    assert r.returncode == 0, r.stderr
    assert (host / "blob2").read_bytes() == payload
    cat = within(10, lambda: subprocess.run(["cat", str(exported / "blob")], capture_output=True))
    assert cat.stdout == payload


def test_host_tree_calls(demo: Server) -> None:
    host, exported = demo.host, demo.mnt / "host"
    f = exported / "calls.txt"
    f.write_text("0123456789")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(os.stat(host / "calls.txt").st_mode) == 0o640
    os.chown(f, 1234, 5678)
    st = os.stat(host / "calls.txt")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.truncate(f, 4)
    assert (host / "calls.txt").read_text() == "0123"
    with open(f, "r+b") as opened:
        os.ftruncate(opened.fileno(), 2)
        opened.seek(0, os.SEEK_END)
        opened.write(b"xy")
        opened.flush()
        os.fsync(opened.fileno())
    assert (host / "calls.txt").read_text() == "01xy"
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(host / "calls.txt").st_mtime_ns == 2_000_000_000

    os.mkdir(exported / "d", 0o750)
    assert stat.S_IMODE(os.stat(host / "d").st_mode) == 0o750
    os.rename(f, exported / "d" / "moved.txt")
    assert (host / "d" / "moved.txt").read_text() == "01xy"
    os.link(exported / "d" / "moved.txt", exported / "hard")
    assert os.stat(exported / "hard").st_ino == os.stat(exported / "d" / "moved.txt").st_ino
    assert os.stat(exported / "hard").st_nlink == 2
    os.symlink("d/moved.txt", exported / "soft")
    assert os.readlink(host / "soft") == "d/moved.txt"
    assert (exported / "soft").read_text() == "01xy"
    # No special file through the export (_hosttree's notes: it would be
    # shown back as an empty file that cannot be opened).
    with pytest.raises(OSError) as e:
        os.mkfifo(exported / "fifo")
    assert e.value.errno == errno.EPERM and not (host / "fifo").exists()
    os.mkfifo(host / "fifo")

    (exported / "other").write_text("other")
    r = sh(f"mv -n {exported / 'other'} {exported / 'hard'}")  # renameat2(RENAME_NOREPLACE)
    assert (host / "hard").read_text() == "01xy" and (host / "other").exists(), r.stderr
    with pytest.raises(OSError) as e:
        os.rmdir(exported / "d")
    assert e.value.errno == errno.ENOTEMPTY
    for name in ("hard", "soft", "fifo", "other", "d/moved.txt"):
        os.unlink(exported / name)
    os.rmdir(exported / "d")
    assert not any((host / n).exists() for n in ("d", "hard", "soft", "fifo", "other"))
    with pytest.raises(FileNotFoundError):
        os.stat(exported / "d")


def test_host_tree_lists_big_directories(demo: Server) -> None:
    big = demo.host / "big"
    big.mkdir()
    names = {f"entry-{i:05}" for i in range(3000)}
    for name in names:
        (big / name).touch()
    assert set(within(20, lambda: os.listdir(demo.mnt / "host" / "big"))) == names
    r = within(20, lambda: sh(f"ls -l {demo.mnt / 'host' / 'big'} | wc -l"))
    assert r.stdout.strip() == str(len(names) + 1)


def test_host_tree_holds_no_descriptor_per_object(demo: Server) -> None:
    tree = demo.host / "many"
    for d in range(30):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (tree / f"d{d}" / f"f{f}").write_text("x")
    fds = Path(f"/proc/{demo.proc.pid}/fd")
    before = len(os.listdir(fds))
    listing = "ls -R {} | wc -l && cat {}/*/* | wc -c"
    exported = demo.mnt / "host" / "many"
    r = within(30, lambda: sh(listing.format(exported, exported)))
    assert r.stdout == sh(listing.format(tree, tree)).stdout
    assert r.stdout.split()[1] == "900"
    assert len(os.listdir(fds)) < before + 10


def test_host_tree_follows_renames(demo: Server) -> None:
    host, exported = demo.host, demo.mnt / "host"
    (host / "r1" / "inner").mkdir(parents=True)
    (host / "r1" / "inner" / "f").write_text("data")
    held = os.open(exported / "r1" / "inner", os.O_RDONLY | os.O_DIRECTORY)
    opened = os.open(exported / "r1" / "inner" / "f", os.O_RDONLY)
    try:
        os.rename(exported / "r1", exported / "r2")  # through the export
        assert os.stat("f", dir_fd=held).st_size == 4
        os.rename(host / "r2", host / "r3")  # behind its back
        assert os.fstat(opened).st_size == 4  # open files are held
        assert (exported / "r3" / "inner" / "f").read_text() == "data"
        assert os.stat("f", dir_fd=held).st_size == 4  # the walk above refreshed it
        os.unlink(host / "r3" / "inner" / "f")
        assert os.fstat(opened).st_nlink == 0
        assert os.pread(opened, 10, 0) == b"data"
    finally:
        os.close(held)
        os.close(opened)


def test_host_tree_cannot_be_escaped(demo: Server) -> None:
    exported = demo.mnt / "host"
    inside = "guest-host\n"
    assert Path("/etc/hostname").read_text() != inside
    cases = {
        "abs": "etc/hostname",  # -> /etc/hostname
        "sub/dir/rel": "../../etc/hostname",  # -> ../../../../../../../etc/hostname
    }
    for link, rewritten in cases.items():
        assert os.readlink(exported / link) == rewritten
        assert within(5, (exported / link).read_text) == inside
        assert os.path.realpath(exported / link).startswith(str(exported) + "/")
    assert os.readlink(exported / "sub" / "up") == ".."  # -> ../../../../..
    assert os.readlink(exported / "sub" / "root") == ".."  # -> /
    assert (exported / "sub" / "up" / "sub" / "up" / "etc" / "hostname").read_text() == inside
    assert (exported / "sub" / "root" / "etc" / "hostname").read_text() == inside
    r = within(5, lambda: sh(f"cat {exported}/abs {exported}/sub/dir/rel"))
    assert r.stdout == inside * 2

    # A link the guest makes while served, and one made through the
    # export: stored as given, followed inside the tree.
    (demo.host / "late").symlink_to("/etc/hostname")
    assert (exported / "late").read_text() == inside
    os.symlink("/etc/hostname", exported / "made")
    assert os.readlink(demo.host / "made") == "/etc/hostname"
    assert (exported / "made").read_text() == inside
    for name in ("late", "made"):
        os.unlink(exported / name)


def test_host_tree_around_its_own_mount(around_itself: Server) -> None:
    exported = around_itself.mnt / "host"
    names = within(5, lambda: os.listdir(exported))
    assert "file" in names and "mnt" not in names  # our mountpoint is left out
    with pytest.raises(OSError) as e:
        within(5, lambda: os.stat(exported / "mnt"))
    assert e.value.errno == errno.ELOOP
    assert within(5, (exported / "file").read_text) == "beside the mount\n"
    assert around_itself.alive()


# -- the daemon ----------------------------------------------------------------------


def test_garbage_does_not_hurt_the_server(demo: Server) -> None:
    before = tracebacks(demo)
    junk = [os.urandom(4096), b"\xff\xfe\n" * 100, b"x" * (1 << 20), b"\n" * 1000, b"\0\0\0"]
    for name in ("ctl", "settings/level", "settings/name"):
        for data in junk:
            fd = os.open(demo.mnt / name, os.O_WRONLY)
            try:
                within(5, lambda: os.pwrite(fd, data, 12345))  # noqa: B023
            except OSError as e:
                assert e.errno == errno.EINVAL
            finally:
                try:
                    os.close(fd)
                except OSError as e:
                    assert e.errno == errno.EINVAL
    for _ in range(200):
        os.close(os.open(demo.mnt / "counter", os.O_RDONLY))
    assert demo.alive()
    assert int((demo.mnt / "settings" / "level").read_text()) in range(101)
    assert (demo.mnt / "settings" / "name").read_text().strip().isprintable()
    assert tracebacks(demo) == before


def test_stale_mount_is_cleaned_after_sigkill(fresh: Server) -> None:
    from umld.fusefs import clean_stale_mount

    mnt = fresh.mnt
    assert clean_stale_mount(str(mnt)) is False  # alive: left alone
    fresh.proc.kill()
    fresh.proc.wait()
    assert mounted(mnt)
    with pytest.raises(OSError) as e:
        os.stat(mnt)
    assert e.value.errno == errno.ENOTCONN
    assert clean_stale_mount(str(mnt)) is True
    assert not mounted(mnt)
    assert clean_stale_mount(str(mnt)) is False  # a plain directory now
    again = start_server(mnt, fresh.host)
    try:
        assert int(within(5, (mnt / "counter").read_text)) == 1
    finally:
        stop_server(again, mnt)
    assert not mounted(mnt)


def test_sigterm_unmounts_even_with_a_reader_waiting(fresh: Server) -> None:
    ctl(fresh, "log first")
    cat = subprocess.Popen(
        ["cat", str(fresh.mnt / "events")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        read_until(cat.stdout, b"first\n")  # then cat waits in read(2)
        time.sleep(0.3)
        fresh.proc.send_signal(signal.SIGTERM)
        assert fresh.proc.wait(timeout=5) == 0
        assert not mounted(fresh.mnt)
        assert cat.wait(timeout=5) == 1  # its read(2) failed
        assert cat.stderr is not None and b"events" in cat.stderr.read()
    finally:
        if cat.poll() is None:
            cat.kill()
        cat.communicate()
    assert tracebacks(fresh) == 0


def test_unmounting_from_outside_ends_the_server(fresh: Server) -> None:
    r = subprocess.run(["fusermount3", "-u", str(fresh.mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert fresh.proc.wait(timeout=5) == 0
    assert not mounted(fresh.mnt)
    assert tracebacks(fresh) == 0
