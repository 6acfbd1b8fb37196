"""umld.fusefs without a mount: the pieces whose rules are easier to see alone."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyfuse3", reason="the export extra (pyfuse3) is not installed")
pytest.importorskip("trio", reason="the export extra (trio) is not installed")

import pyfuse3
import trio

from umld.fusefs import (
    ControlFile,
    Directory,
    DynamicDirectory,
    EventLog,
    ExportError,
    HostTree,
    Node,
    SnapshotFile,
    StreamFile,
    WritableFile,
)
from umld.fusefs._hosttree import confine_symlink
from umld.fusefs._inodes import ROOT_INODE, InodeTable
from umld.fusefs._node import Caller
from umld.fusefs._ops import ExportOperations
from umld.fusefs._procfs import descriptor_nonblocking, signal_pending
from umld.fusefs._serve import _unescape, fuse_mount_at

NOBODY = Caller(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("target", "depth", "confined"),
    [
        (b"/etc/hostname", 0, b"etc/hostname"),
        (b"/etc/hostname", 2, b"../../etc/hostname"),
        (b"../../../../etc/hostname", 2, b"../../etc/hostname"),
        (b"../lib/x.so", 1, b"../lib/x.so"),
        (b"a/../../b", 0, b"b"),
        (b"a/../../b", 3, b"../b"),
        (b"./x/./y", 1, b"x/y"),
        (b"/", 2, b"../.."),
        (b"..", 0, b"."),
        (b"dir/", 0, b"dir/"),
        (b"/../../..//etc/", 1, b"../etc/"),
        (b"", 3, b""),
    ],
)
def test_confine_symlink(target: bytes, depth: int, confined: bytes) -> None:
    assert confine_symlink(target, depth) == confined


def test_confined_targets_never_climb_out() -> None:
    parts = [b"..", b".", b"a", b"b", b""]
    for depth in range(4):
        for n in range(1, 5):
            for k in range(len(parts) ** n):
                path = b"/".join(parts[(k // len(parts) ** i) % len(parts)] for i in range(n))
                for target in (path, b"/" + path):
                    out = confine_symlink(target, depth).rstrip(b"/").split(b"/")
                    ups = 0
                    while ups < len(out) and out[ups] == b"..":
                        ups += 1
                    assert ups <= depth and b".." not in out[ups:], (target, depth)


def test_event_log_keeps_the_newest_lines_within_its_bounds() -> None:
    log = EventLog(max_lines=3)
    for i in range(5):
        log.append(f"line {i}")
    assert log.lines() == ["line 2", "line 3", "line 4"]
    size, _ = log._size()
    assert size == 5 * len("line 0\n")
    data, first, closed = log._read(0, 100)
    assert (data, first, closed) == (b"", 2 * 7, False)
    assert log._read(first + 2, 9)[0] == b"ne 2\nline"

    by_bytes = EventLog(max_bytes=10)
    by_bytes.append("x" * 20)  # one line bigger than the bound is still kept
    by_bytes.append("short")
    assert by_bytes.lines() == ["short"]
    with pytest.raises(ValueError):
        EventLog(max_lines=0)


def test_event_log_appends_from_many_threads() -> None:
    log = EventLog(max_lines=100_000)

    def spam(k: int) -> None:
        for i in range(2000):
            log.append(f"{k} {i}")

    threads = [threading.Thread(target=spam, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = log.lines()
    assert len(lines) == 16_000
    for k in range(8):
        mine = [line for line in lines if line.startswith(f"{k} ")]
        assert mine == [f"{k} {i}" for i in range(2000)]
    assert log._size()[0] == sum(len(line) + 1 for line in lines)


def test_stream_reader_waits_skips_ahead_and_ends_at_close() -> None:
    log = EventLog(max_lines=2)
    node = StreamFile(log)

    async def main() -> None:
        handle = node._open(os.O_RDONLY, NOBODY)
        assert await handle.read(0, 100) == b""  # first read at the end: end of file
        log.append("a")
        assert await handle.read(0, 100) == b"a\n"

        async def later() -> None:
            await trio.sleep(0.05)
            await trio.to_thread.run_sync(log.append, "b")  # from another thread

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            with trio.fail_after(5):
                assert await handle.read(2, 100) == b"b\n"
        for line in ("c", "d", "e"):
            log.append(line)
        # "c" fell out of the ring: skip to "d", offsets shifted from then on.
        assert await handle.read(4, 100) == b"d\ne\n"
        log.close()
        assert await handle.read(8, 100) == b""
        with pytest.raises(ExportError) as e:
            node._open(os.O_WRONLY, NOBODY)
        assert e.value.errno == errno.EACCES
        await handle.release()

    trio.run(main)


def test_writable_file_collects_and_applies() -> None:
    applied: list[bytes] = []

    def apply(value: bytes) -> None:
        if not value.strip().isdigit():
            raise ExportError(errno.EINVAL)
        applied.append(value)

    node = WritableFile(lambda: b"old\n", apply)

    async def main() -> None:
        h = node._open(os.O_RDWR, NOBODY)
        assert await h.read(0, 10) == b"old\n"
        await h.write(0, b"1")
        await h.write(1, b"2\n")  # complete: applied inside write()
        assert applied == [b"12\n"]
        await h.write(3, b"3")
        await h.flush()  # the rest, at close
        assert applied == [b"12\n", b"3"]
        with pytest.raises(ExportError):
            await h.write(0, b"x\n")
        await h.write(0, b"x")
        with pytest.raises(ExportError):
            await h.flush()
        await h.flush()  # nothing left: a second close of a dup is fine
        await h.release()
        assert applied == [b"12\n", b"3"]

    trio.run(main)


def test_control_file_runs_lines_until_one_fails() -> None:
    ran: list[str] = []

    def command(line: str) -> None:
        if line == "bad":
            raise ExportError(errno.EINVAL)
        ran.append(line)

    node = ControlFile(command)

    async def main() -> None:
        h = node._open(os.O_WRONLY, NOBODY)
        await h.write(0, b"one\n  two  \n\n")
        with pytest.raises(ExportError):
            await h.write(13, b"three\nbad\nfour\n")
        await h.write(0, b"five")
        await h.flush()
        with pytest.raises(ExportError):
            await h.write(0, b"\xff\xfe\n")

    trio.run(main)
    assert ran == ["one", "two", "three", "five"]
    with pytest.raises(ExportError):
        node._open(os.O_RDWR, NOBODY)


def test_inode_table_numbers_and_references() -> None:
    root = Directory()
    table = InodeTable(root)
    a = SnapshotFile(lambda: b"")
    ino, same = table.register(a)
    assert same is a and ino != ROOT_INODE and table.node(ino) is a
    table.ref(ino)
    table.ref(ino)
    table.forget(ino, 1)
    assert table.node(ino) is a
    table.forget(ino, 1)
    with pytest.raises(ExportError) as e:
        table.node(ino)
    assert e.value.errno == errno.ESTALE
    assert table.register(a)[0] == ino  # a node keeps its number
    table.unref_unused(ino)
    table.forget(ROOT_INODE, 10)
    assert table.node(ROOT_INODE) is root


def test_host_tree_objects_are_one_inode_per_host_inode(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.link(tmp_path / "f", tmp_path / "g")
    tree = HostTree(lambda: os.open(tmp_path, os.O_PATH | os.O_DIRECTORY))
    table = InodeTable(Directory({"t": tree}))
    f, g = tree._child(b"f"), tree._child(b"g")
    assert f is not None and g is not None and tree._child(b"missing") is None
    ino_f, _ = table.register(f)
    ino_g, canonical = table.register(g)
    assert ino_f == ino_g and canonical is f
    for bad in (b"..", b".", b"a/b"):
        with pytest.raises(ExportError):
            tree._child(bad)
    table.clear()


class _Broken(Directory):
    def _attrs(self):  # type: ignore[no-untyped-def]
        raise ValueError("a bug")


def test_operations_map_errors(caplog: pytest.LogCaptureFixture) -> None:
    procs: dict[str, Node] = {}
    root = Directory(
        {
            "broken": _Broken(),
            "procs": DynamicDirectory(lambda: procs),
            "refused": SnapshotFile(lambda: b""),
        }
    )
    ops = ExportOperations(root)
    ctx = pyfuse3.RequestContext()

    async def main() -> None:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(ROOT_INODE, b"broken", ctx)
        assert e.value.errno == errno.EIO
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(ROOT_INODE, b"nothing", ctx)
        assert e.value.errno == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(12345, ctx)
        assert e.value.errno == errno.ESTALE

        procs["1"] = Directory({"status": SnapshotFile(lambda: b"alive\n")})
        proc = await ops.lookup(ROOT_INODE, b"procs", ctx)
        one = await ops.lookup(proc.st_ino, b"1", ctx)
        status = await ops.lookup(one.st_ino, b"status", ctx)
        fi = await ops.open(status.st_ino, os.O_RDONLY, ctx)
        assert await ops.read(fi.fh, 0, 100) == b"alive\n"
        await ops.release(fi.fh)
        del procs["1"]
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(status.st_ino, os.O_RDONLY, ctx)
        assert e.value.errno == errno.ENOENT
        await ops.forget([(status.st_ino, 1), (one.st_ino, 1)])
        ops.close()

    with caplog.at_level("ERROR", logger="umld.fusefs"):
        trio.run(main)
    assert "ValueError: a bug" in caplog.text


def test_procfs_views_of_a_reader(tmp_path: Path) -> None:
    assert signal_pending(os.getpid()) is False
    assert signal_pending(2**22 + 12345) is None
    path = tmp_path / "f"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fdinfo = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
        info = dict(line.split(":\t", 1) for line in fdinfo if ":\t" in line)
        ino, mnt_id = os.fstat(fd).st_ino, int(info["mnt_id"])
        assert descriptor_nonblocking(os.getpid(), ino, mnt_id, None) == (True, fd)
        os.set_blocking(fd, True)
        assert descriptor_nonblocking(os.getpid(), ino, mnt_id, fd) == (False, fd)
        assert descriptor_nonblocking(os.getpid(), ino + 1, mnt_id, fd) == (False, -1)
    finally:
        os.close(fd)


def test_mountinfo_parsing(tmp_path: Path) -> None:
    assert _unescape(r"/a\040b\134c\011") == "/a b\\c\t"
    assert _unescape("/plain") == "/plain"
    assert fuse_mount_at(str(tmp_path)) is None


def test_export_error() -> None:
    e = ExportError(errno.EINVAL, "why")
    assert e.errno == errno.EINVAL and str(e) == "EINVAL: why"
    assert str(ExportError(errno.ENOENT)) == "ENOENT: No such file or directory"


def test_statfs_of_a_host_tree_root(tmp_path: Path) -> None:
    ops = ExportOperations(HostTree(lambda: os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)))

    async def main() -> pyfuse3.StatvfsData:
        return await ops.statfs(pyfuse3.RequestContext())

    st, host = trio.run(main), os.statvfs(tmp_path)
    assert (st.f_blocks, st.f_bsize, st.f_namemax) == (host.f_blocks, host.f_bsize, host.f_namemax)
    ops.close()


def _ops_over(root: Path) -> ExportOperations:
    return ExportOperations(HostTree(lambda: os.open(root, os.O_PATH | os.O_DIRECTORY)))


async def _lookup(ops: ExportOperations, path: str) -> int:
    ino = ROOT_INODE
    for name in path.split("/"):
        ino = (await ops.lookup(ino, name.encode(), pyfuse3.RequestContext())).st_ino
    return ino


def test_hard_linked_symlinks_resolve_for_their_own_path(tmp_path: Path) -> None:
    """One symlink inode at two depths: each path's readlink is confined
    for that path's depth, whatever was looked up last (an inode-keyed
    node used to take the depth of the last path looked up, so the
    shallow link's target climbed out of the tree)."""
    (tmp_path / "tmp" / "a" / "b").mkdir(parents=True)
    deep, shallow = tmp_path / "tmp" / "a" / "b" / "L", tmp_path / "tmp" / "W"
    deep.symlink_to("/victim")
    os.link(deep, shallow, follow_symlinks=False)
    assert deep.lstat().st_ino == shallow.lstat().st_ino
    ops, ctx = _ops_over(tmp_path), pyfuse3.RequestContext()

    async def main() -> None:
        w = await _lookup(ops, "tmp/W")
        d = await _lookup(ops, "tmp/a/b/L")
        assert await ops.readlink(w, ctx) == b"../victim"
        assert await ops.readlink(d, ctx) == b"../../../victim"
        w_again = await _lookup(ops, "tmp/W")
        assert w_again == w  # one inode per path, kept while looked up
        assert await ops.readlink(d, ctx) == b"../../../victim"
        # A rename through the export moves the node with its new depth.
        tmp = await _lookup(ops, "tmp")
        b = await _lookup(ops, "tmp/a/b")
        await ops.rename(tmp, b"W", b, b"W2", 0, ctx)
        assert await ops.readlink(w, ctx) == b"../../../victim"
        assert await ops.readlink(d, ctx) == b"../../../victim"
        # ... and the old path, linked again, is a node of its own.
        os.link(deep, shallow, follow_symlinks=False)
        w3 = await _lookup(ops, "tmp/W")
        assert w3 not in (w, d)
        assert await ops.readlink(w3, ctx) == b"../victim"
        assert await ops.readlink(w, ctx) == b"../../../victim"
        ops.close()

    trio.run(main)


def test_special_files_are_served_as_unopenable_files(tmp_path: Path) -> None:
    """A FIFO, socket or device node of the tree is shown as an empty
    regular file whose open fails with ENXIO: the host's kernel would
    otherwise open it itself (a FIFO of the reader's, blocking forever)."""
    import socket as socketlib
    import stat as statlib

    os.mkfifo(tmp_path / "fifo", 0o644)
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
    specials = ["fifo", "sock"]
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o666 | statlib.S_IFCHR, os.makedev(1, 3))
        specials.append("null")
    ops, ctx = _ops_over(tmp_path), pyfuse3.RequestContext()

    async def main() -> None:
        for name in specials:
            attrs = await ops.lookup(ROOT_INODE, name.encode(), ctx)
            assert statlib.S_ISREG(attrs.st_mode), name
            assert (attrs.st_size, attrs.st_rdev) == (0, 0), name
            for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
                with pytest.raises(pyfuse3.FUSEError) as e:
                    await ops.open(attrs.st_ino, flags, ctx)
                assert e.value.errno == errno.ENXIO, name
        # The host may not make special files in the tree either.
        for kind in (statlib.S_IFIFO, statlib.S_IFSOCK, statlib.S_IFCHR):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.mknod(ROOT_INODE, b"new", kind | 0o644, 0, ctx)
            assert e.value.errno == errno.EPERM
        assert not (tmp_path / "new").exists()
        ops.close()

    trio.run(main)


def test_create_never_opens_a_special_file_that_appeared(tmp_path: Path) -> None:
    """CREATE of a name that became a FIFO meanwhile (the guest made one
    between the kernel's lookup and our create) must not open it: the
    daemon would wait for a writer forever."""
    os.mkfifo(tmp_path / "late", 0o666)
    ops = _ops_over(tmp_path)
    ctx = pyfuse3.RequestContext()

    async def main() -> None:
        for flags in (os.O_RDONLY, os.O_WRONLY):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.create(ROOT_INODE, b"late", 0o644, flags, ctx)
            assert e.value.errno == errno.ENXIO
        ops.close()

    done: list[bool] = []
    t = threading.Thread(target=lambda: (trio.run(main), done.append(True)), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():
        fd = os.open(tmp_path / "late", os.O_WRONLY | os.O_NONBLOCK)  # unblock it
        os.close(fd)
        t.join(5)
        raise AssertionError("create() opened the FIFO and waited for a writer")
    assert done


def test_private_snapshot_is_its_owners_and_roots() -> None:
    node = SnapshotFile(lambda: b"SECRET=1\n", private=True)
    assert node._attrs().mode == stat.S_IFREG | 0o400
    other = Caller(os.geteuid() + 12345, 0, 0, 0)

    async def main() -> None:
        for caller in (Caller(os.geteuid(), 0, 0, 0), Caller(0, 0, 0, 0)):
            assert await node._open(os.O_RDONLY, caller).read(0, 100) == b"SECRET=1\n"
        with pytest.raises(ExportError) as e:
            node._open(os.O_RDONLY, other)
        assert e.value.errno == errno.EACCES

    trio.run(main)
    assert SnapshotFile(lambda: b"")._attrs().mode == stat.S_IFREG | 0o444


def test_operations_refuse_the_threads_they_are_closed_to(tmp_path: Path) -> None:
    """serve(refuse=...): every request naming a refused thread is EACCES,
    before any node is asked; others are served."""
    from types import SimpleNamespace

    (tmp_path / "f").write_text("x")
    asked: list[int] = []

    def refuse(tid: int) -> bool:
        asked.append(tid)
        return tid == 4242

    ops = ExportOperations(
        Directory(
            {
                "status": SnapshotFile(lambda: b"up\n"),
                "fs": HostTree(lambda: os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)),
            }
        ),
        refuse=refuse,
    )
    guest: Any = SimpleNamespace(uid=0, gid=0, pid=4242, umask=0o022)
    host: Any = SimpleNamespace(uid=0, gid=0, pid=4243, umask=0o022)

    async def main() -> None:
        status = await ops.lookup(ROOT_INODE, b"status", host)
        fs = await ops.lookup(ROOT_INODE, b"fs", host)
        attempts = [
            lambda: ops.lookup(ROOT_INODE, b"status", guest),
            lambda: ops.getattr(ROOT_INODE, guest),
            lambda: ops.open(status.st_ino, os.O_RDONLY, guest),
            lambda: ops.opendir(ROOT_INODE, guest),
            lambda: ops.statfs(guest),
            lambda: ops.create(fs.st_ino, b"new", 0o644, os.O_WRONLY, guest),
            lambda: ops.mkdir(fs.st_ino, b"dir", 0o755, guest),
            lambda: ops.unlink(fs.st_ino, b"f", guest),
            lambda: ops.rename(fs.st_ino, b"f", fs.st_ino, b"g", 0, guest),
        ]
        for attempt in attempts:
            with pytest.raises(pyfuse3.FUSEError) as e:
                await attempt()
            assert e.value.errno == errno.EACCES
        assert sorted(os.listdir(tmp_path)) == ["f"]
        fi = await ops.open(status.st_ino, os.O_RDONLY, host)
        assert await ops.read(fi.fh, 0, 10) == b"up\n"
        await ops.release(fi.fh)
        ops.close()

    trio.run(main)
    assert 4242 in asked and 4243 in asked
