"""A read/write passthrough of a host directory tree that cannot be escaped.

Every object of the tree is held as an ``O_PATH`` descriptor (libfuse's
passthrough_ll does the same), keyed by (st_dev, st_ino): renames behind
our back do not matter, hard links are one inode, and the daemon never
resolves a path of more than one component.  Each lookup is one openat2(2)
of one name beneath its directory's descriptor with ``RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS`` and ``O_NOFOLLOW``: no
symlink, ``..`` or /proc magic link of the tree is ever followed by the
daemon.  The other calls act on those descriptors with ``AT_EMPTY_PATH``
or on one name beneath a directory descriptor (mkdirat, unlinkat, ...).

Symlinks are followed by the kernel, not by us, in the namespace of
whoever reads the mount: so readlink() rewrites targets to relative ones
that stay inside the tree (:func:`confine_symlink`).  An absolute target
means the tree's root, as it does for the processes whose root the tree
is.

I/O is done synchronously in the trio thread: the request round trip is
the cost that matters, a thread hop per request would double it.  A tree
on a slow filesystem (a hung NFS server) stalls the whole export.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager

from umld.fusefs import _mount, _sys
from umld.fusefs._errors import ExportError
from umld.fusefs._node import (
    Attrs,
    Caller,
    DirNode,
    FileNode,
    Handle,
    LinkNode,
    Node,
    SetAttr,
)

_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS | _sys.RESOLVE_NO_SYMLINKS
_O_LARGEFILE = 0o100000  # what the kernel passes; os.O_LARGEFILE is 0 on 64-bit
# open(2) flags passed on when opening a host file for a reader.  Not
# O_DIRECT (our buffers are not aligned; FUSE has its own direct_io), not
# O_NOATIME (only the owner may), not O_NONBLOCK or O_NOCTTY (regular files).
_OPEN_FLAGS = (
    os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_EXCL | os.O_SYNC | os.O_DSYNC | _O_LARGEFILE
)
# st_blksize reported for host files: the largest request FUSE sends (256
# pages with libfuse 3), so that cp, cat and dd use buffers that fill one
# request instead of several round trips.
_BLKSIZE = 1 << 20


@contextmanager
def _host_errors() -> Iterator[None]:
    """A failed host syscall is the answer, with its errno."""
    try:
        yield
    except OSError as e:
        raise ExportError(e.errno or errno.EIO, str(e)) from None


def _check_name(name: bytes) -> None:
    # FUSE never sends these (we do not claim export support), but a name
    # with a slash or a dot-dot would be a path, so refuse them anyway.
    if name in (b"", b".", b"..") or b"/" in name:
        raise ExportError(errno.EINVAL)


def confine_symlink(target: bytes, depth: int) -> bytes:
    """Rewrite a symlink target so that following it stays inside the tree.

    ``depth`` is how many directories the link's own directory is below
    the tree's root.  The result is relative and normalised: it climbs at
    most ``depth`` levels and never climbs after going down, so whatever
    the kernel follows from it (including other links, rewritten the same
    way) stays beneath the tree's root.  Absolute targets start at the
    tree's root and ``..`` at the root stays there, as with
    RESOLVE_IN_ROOT.  A ``..`` after a component is resolved lexically,
    which differs from the real walk when that component is a symlink: a
    different file of the tree rather than one outside it.
    """
    if not target:
        return target
    climb = depth if target.startswith(b"/") else 0
    down: list[bytes] = []
    for part in target.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if down:
                down.pop()
            elif climb < depth:
                climb += 1
        else:
            down.append(part)
    out = b"/".join([b".."] * climb + down) or b"."
    if target.endswith(b"/") and down:  # "name/" must be a directory
        out += b"/"
    return out


def _setattr(fd: int, is_link: bool, changes: SetAttr, handle: Handle | None) -> None:
    with _host_errors():
        if changes.uid is not None or changes.gid is not None:
            # Before chmod: chown(2) clears set-user-ID and set-group-ID bits.
            uid = -1 if changes.uid is None else changes.uid
            gid = -1 if changes.gid is None else changes.gid
            _sys.fchown_path_fd(fd, uid, gid)
        if changes.mode is not None:
            if is_link:
                raise ExportError(errno.EOPNOTSUPP)  # Linux has no symlink modes
            _sys.fchmod_path_fd(fd, stat.S_IMODE(changes.mode))
        if changes.size is not None:
            if handle is not None:
                handle.truncate(changes.size)
            else:
                os.truncate(f"/proc/self/fd/{fd}", changes.size)
        if changes.atime_ns is not None or changes.mtime_ns is not None:
            _sys.futimens_path_fd(fd, changes.atime_ns, changes.mtime_ns)


class _HostDirOps(DirNode):
    """Directory calls of the tree, one name beneath this directory's descriptor."""

    _tree: HostTree

    def _dirfd(self) -> int:
        raise NotImplementedError

    def _child(self, name: bytes) -> Node | None:
        _check_name(name)
        try:
            fd = _sys.openat2(self._dirfd(), name, os.O_PATH | os.O_NOFOLLOW, 0, _RESOLVE)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise ExportError(e.errno or errno.EIO, str(e)) from None
        try:
            with _host_errors():
                _refuse_own_mount(fd)
                st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return _entry(self._tree, fd, st)

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        with _host_errors():
            fd = _sys.openat2(self._dirfd(), b".", os.O_RDONLY | os.O_DIRECTORY, 0, _RESOLVE)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
        # Entries are looked up (an O_PATH descriptor each) only as readdir
        # sends them: a listing cut short by a small buffer costs nothing.
        return [(os.fsencode(name), None) for name in names]

    def _new(self, name: bytes, mode: int, caller: Caller) -> Node:
        """The entry just created under ``name``, made the caller's."""
        node = self._child(name)
        if node is None:
            raise ExportError(errno.ENOENT)
        assert isinstance(node, _HostEntry)
        with _host_errors():
            node._adopt(mode, caller)
        return node

    def _mkdir(self, name: bytes, mode: int, caller: Caller) -> Node:
        _check_name(name)
        with _host_errors():
            os.mkdir(name, stat.S_IMODE(mode), dir_fd=self._dirfd())
        return self._new(name, mode, caller)

    def _mknod(self, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        _check_name(name)
        with _host_errors():
            os.mknod(name, mode, rdev, dir_fd=self._dirfd())
        return self._new(name, mode, caller)

    def _symlink(self, name: bytes, target: bytes, caller: Caller) -> Node:
        _check_name(name)
        with _host_errors():
            os.symlink(target, name, dir_fd=self._dirfd())
        return self._new(name, stat.S_IFLNK | 0o777, caller)

    def _create(self, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Node, Handle]:
        _check_name(name)
        with _host_errors():
            # O_NOFOLLOW: the kernel only sends CREATE for a name it found
            # missing; if a symlink appeared there since, refuse rather
            # than create its target (possibly outside the tree).
            fd = _sys.openat2(
                self._dirfd(),
                name,
                (flags & _OPEN_FLAGS) | os.O_CREAT | os.O_NOFOLLOW,
                stat.S_IMODE(mode),
                _RESOLVE,
            )
        try:
            with _host_errors():
                # The object just opened, not whatever the name means now.
                path_fd = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
                try:
                    node = _entry(self._tree, path_fd, os.fstat(path_fd))
                except BaseException:
                    os.close(path_fd)
                    raise
                node._adopt(mode, caller)
        except BaseException:
            os.close(fd)
            raise
        return node, _FileHandle(fd)

    def _link(self, node: Node, name: bytes) -> Node:
        _check_name(name)
        if not isinstance(node, _HostEntry) or node._tree is not self._tree:
            raise ExportError(errno.EXDEV)
        with _host_errors():
            # linkat(2) of the descriptor's own object: AT_EMPTY_PATH would
            # need CAP_DAC_READ_SEARCH, the /proc/self/fd link does not.
            os.link(
                os.fsencode(f"/proc/self/fd/{node._fd}"),
                name,
                dst_dir_fd=self._dirfd(),
                follow_symlinks=True,
            )
        found = self._child(name)
        if found is None:
            raise ExportError(errno.ENOENT)
        return found

    def _unlink(self, name: bytes) -> None:
        _check_name(name)
        with _host_errors():
            os.unlink(name, dir_fd=self._dirfd())

    def _rmdir(self, name: bytes) -> None:
        _check_name(name)
        with _host_errors():
            os.rmdir(name, dir_fd=self._dirfd())

    def _rename(self, name: bytes, new_dir: DirNode, new_name: bytes, flags: int) -> None:
        _check_name(name)
        _check_name(new_name)
        if not isinstance(new_dir, _HostDirOps) or new_dir._tree is not self._tree:
            raise ExportError(errno.EXDEV)
        with _host_errors():
            if flags:
                _sys.renameat2(self._dirfd(), name, new_dir._dirfd(), new_name, flags)
            else:
                os.rename(name, new_name, src_dir_fd=self._dirfd(), dst_dir_fd=new_dir._dirfd())


def _refuse_own_mount(fd: int) -> None:
    # The tree may contain our own mountpoint (a guest whose root is the
    # host's /).  Stepping into it would make the daemon send itself a
    # request from inside a handler and wait for it forever, so the mount
    # looks like a loop from inside the tree.
    own = _mount.CURRENT.dev
    if own is not None and _sys.cached_device(fd) == own:
        raise ExportError(errno.ELOOP, "the export itself")


class _HostEntry(Node):
    """What the tree's objects below its root share: an O_PATH descriptor."""

    def __init__(self, tree: HostTree, fd: int, st: os.stat_result) -> None:
        super().__init__()
        self._tree = tree
        self._fd = fd
        self._dev_ino = (st.st_dev, st.st_ino)

    def _key(self) -> Hashable:
        return (self._tree, *self._dev_ino)

    def _attrs(self) -> Attrs:
        with _host_errors():
            return Attrs.from_stat(os.fstat(self._fd), _BLKSIZE)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        _setattr(self._fd, isinstance(self, LinkNode), changes, handle)

    def _forgotten(self) -> None:
        os.close(self._fd)
        self._fd = -1

    def _liveness_parent(self) -> Node | None:
        return self._tree

    def _adopt(self, mode: int, caller: Caller) -> None:
        """Give a new object to its creator, with the mode asked for.

        Run as root, the daemon creates as root: chown to the caller.  The
        kernel already applied the caller's umask to ``mode``; the
        daemon's own umask must not cut it further.
        """
        if os.geteuid() == 0 and (caller.uid, caller.gid) != (0, 0):
            _sys.fchown_path_fd(self._fd, caller.uid, caller.gid)
        if isinstance(self, LinkNode):
            return
        wanted = stat.S_IMODE(mode) & ~caller.umask
        if stat.S_IMODE(os.fstat(self._fd).st_mode) != wanted:
            _sys.fchmod_path_fd(self._fd, wanted)


class _HostDir(_HostEntry, _HostDirOps):
    def _dirfd(self) -> int:
        return self._fd


class _FileHandle(Handle):
    """An open host file: reads and writes go straight to it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = memoryview(b"")

    async def read(self, off: int, size: int) -> bytes | memoryview:
        # Into a buffer of the handle's, reused: a fresh 1 MiB bytes object
        # per request costs an allocation and its page faults, measurably
        # (about a fifth of the read throughput).  pyfuse3 copies the reply
        # out before any other request runs, so the buffer is free again.
        if len(self._buf) < size:
            self._buf = memoryview(bytearray(size))
        view = self._buf[:size]
        try:
            return view[: os.preadv(self._fd, [view], off)]
        except OSError as e:
            raise ExportError(e.errno or errno.EIO) from None

    async def write(self, off: int, data: bytes) -> int:
        try:
            return os.pwrite(self._fd, data, off)
        except OSError as e:
            raise ExportError(e.errno or errno.EIO) from None

    async def flush(self) -> None:
        # What close(2) of the reader's descriptor would do on the host:
        # close a duplicate (a network filesystem reports its write-back
        # errors there), the real one stays open until release.
        with _host_errors():
            os.close(os.dup(self._fd))

    async def release(self) -> None:
        os.close(self._fd)

    async def fsync(self, datasync: bool) -> None:
        with _host_errors():
            if datasync:
                os.fdatasync(self._fd)
            else:
                os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        with _host_errors():
            os.ftruncate(self._fd, size)

    def abandon(self) -> None:
        os.close(self._fd)


class _HostFile(_HostEntry, FileNode):
    def _open(self, flags: int, caller: Caller) -> Handle:
        with _host_errors():
            # Reopen the object itself through its /proc/self/fd link: the
            # only way from an O_PATH descriptor to an open file.
            fd = os.open(f"/proc/self/fd/{self._fd}", (flags & _OPEN_FLAGS) | os.O_CLOEXEC)
        return _FileHandle(fd)


class _HostLink(_HostEntry, LinkNode):
    def _attrs(self) -> Attrs:
        # st_size of a symlink is the length of what readlink returns.
        attrs = super()._attrs()
        attrs.size = len(self._readlink())
        return attrs

    def _readlink(self) -> bytes:
        with _host_errors():
            target = os.readlink(b"", dir_fd=self._fd)
        return confine_symlink(target, _depth(self))


class _HostOther(_HostEntry):
    """FIFOs, sockets and device nodes: the kernel opens those itself (on a
    FUSE mount a FIFO is a new pipe of the reader's, a device is refused by
    nodev), so only their attributes come from us."""


def _entry(tree: HostTree, fd: int, st: os.stat_result) -> _HostEntry:
    if stat.S_ISDIR(st.st_mode):
        return _HostDir(tree, fd, st)
    if stat.S_ISREG(st.st_mode):
        return _HostFile(tree, fd, st)
    if stat.S_ISLNK(st.st_mode):
        return _HostLink(tree, fd, st)
    return _HostOther(tree, fd, st)


def _depth(node: Node) -> int:
    """Directories between a tree object's directory and the tree's root.

    From the directories each object was last looked up in, which is the
    walk the kernel just made to reach the link.  If the chain is broken
    the answer is smaller, never larger: a confined target then climbs
    less, it cannot climb out.
    """
    depth = 0
    parent = node._parent
    while isinstance(parent, _HostDir):
        depth += 1
        parent = parent._parent
    return depth if isinstance(parent, HostTree) else 0


class HostTree(_HostDirOps):
    """A read/write passthrough of the directory tree given as a descriptor.

    ``root_fd_factory()`` returns a new descriptor of the tree's root (any
    directory descriptor, ``O_PATH`` is enough), which the tree then owns;
    in umld it opens ``/proc/<guest pid>/root``.  It is called on first
    use, and again after the kernel forgot the tree's root.  Everything
    below is resolved beneath that descriptor (see the module's notes);
    absolute symlinks mean the tree's root.

    Coherent both ways: nothing is cached by the kernel (direct_io, no
    attribute or entry caching), so a change made on either side is seen
    at once on the other.  Operations run with the daemon's credentials,
    after the kernel checked the caller's against the tree's own modes
    and owners (default_permissions).
    """

    def __init__(self, root_fd_factory: Callable[[], int]) -> None:
        super().__init__()
        self._tree = self
        self._factory = root_fd_factory
        self._root_fd: int | None = None

    def _dirfd(self) -> int:
        if self._root_fd is None:
            try:
                fd = self._factory()
            except OSError as e:
                raise ExportError(e.errno or errno.ENOENT, str(e)) from None
            try:
                with _host_errors():
                    _refuse_own_mount(fd)
            except BaseException:
                os.close(fd)
                raise
            self._root_fd = fd
        return self._root_fd

    def _attrs(self) -> Attrs:
        with _host_errors():
            return Attrs.from_stat(os.fstat(self._dirfd()), _BLKSIZE)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        _setattr(self._dirfd(), False, changes, handle)

    def _forgotten(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def _statfs(self) -> os.statvfs_result | None:
        with _host_errors():
            return os.fstatvfs(self._dirfd())
