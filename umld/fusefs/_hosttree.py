"""A read/write passthrough of a host directory tree that cannot be escaped.

The tree holds one descriptor: its root's.  Every object below is known
by its path from the root and by (st_dev, st_ino), and every call
resolves that path again with openat2(2) under ``RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS`` and ``O_NOFOLLOW|O_PATH``:
no symlink, ``..`` or /proc magic link of the tree is ever followed by
the daemon, and nothing resolves outside the root.  The object found must
still be the one the kernel asked about (same st_dev and st_ino), else the
call fails with ESTALE.  The calls themselves act on that ``O_PATH``
descriptor with ``AT_EMPTY_PATH`` (fchownat, utimensat, fchmodat2) or on
one name beneath a directory's descriptor (mkdirat, unlinkat, ...).

Why not one descriptor per object, as libfuse's passthrough_ll does: the
kernel keeps every inode it has seen (readdirplus shows it all of a
directory) until memory pressure makes it forget them, so one `find` or
`rm -r` over a big tree (a guest whose root is the host's /) would use up
the daemon's descriptors, and the daemon is umld itself.  Descriptors are
only held while a file is open (so fstat(2) of an open file works after a
rename or unlink behind our back).

The price of paths: a guest renaming a directory behind our back leaves
the paths below it stale until the kernel looks them up again, which it
does on every path walk (entry_timeout 0); only a process whose working
directory is below the moved one meets ESTALE meanwhile.  Renames made
through the export update the paths at once.

Symlinks are followed by the kernel, not by us, in the namespace of
whoever reads the mount: so readlink() rewrites targets to relative ones
that stay inside the tree (:func:`confine_symlink`).  An absolute target
means the tree's root, as it does for the processes whose root the tree
is.  The rewrite depends on the depth of the link's directory, and a
FUSE readlink names an inode, not a path: so symlinks and directories
are one export inode per host inode and depth, never one per host
inode (a symlink hard-linked at two depths, or a directory a guest bound
at two depths, is two inodes here; see :class:`_PerDepth`).

FIFOs, sockets and device nodes are shown as empty regular files (their
permissions, owners and times kept) whose open fails with ENXIO, and the
export makes none (mknod of one: EPERM).  Shown as what they are, the
host's kernel would open them itself, never asking us: a FIFO on a FUSE
mount is a pipe of the host's, unconnected to the guest's, so a host
reader of a file the guest replaced by a FIFO would wait forever, and a
device node would be the host's device.  Nor does the daemon ever open
one: a regular file is reopened only after its pinned inode was checked
to be one, and CREATE of a name that became a FIFO meanwhile refuses it.

I/O is done synchronously in the trio thread: the request round trip is
the cost that matters, a thread hop per request would double it.  A tree
on a slow filesystem (a hung NFS server) stalls the whole export.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

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

_T = TypeVar("_T")

_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS | _sys.RESOLVE_NO_SYMLINKS
_PATH = os.O_PATH | os.O_NOFOLLOW
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
# What resolving a known object's path fails with when the path no longer
# leads to it: a component is gone, or is no longer a directory.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


@contextmanager
def _host_errors() -> Iterator[None]:
    """A failed host syscall is the answer, with its errno."""
    try:
        yield
    except OSError as e:
        raise ExportError(e.errno or errno.EIO, str(e)) from None


def _special(mode: int) -> bool:
    """A FIFO, socket or device node: what the export never opens."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


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


def _refuse_own_mount(fd: int) -> None:
    # The tree may contain our own mountpoint (a guest whose root is the
    # host's /).  Stepping into it would make the daemon send itself a
    # request from inside a handler and wait for it forever, so the mount
    # looks like a loop from inside the tree.
    own = _mount.CURRENT.dev
    if own is not None and _sys.cached_device(fd) == own:
        raise ExportError(errno.ELOOP, "the export itself")


def _walk(start: int, path: bytes) -> int:
    """An O_PATH descriptor of ``path`` beneath directory ``start``.

    One openat2(2) that may not cross a mount (RESOLVE_NO_XDEV), which
    therefore cannot reach our own mount.  When the path does cross one
    (a guest's /proc, /tmp, ...), one component at a time instead, making
    sure none is our own mount before taking the next step: the step into
    it sends no request, the step after it would.
    """
    try:
        return _sys.openat2(start, path, _PATH, 0, _RESOLVE | _sys.RESOLVE_NO_XDEV)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    fd = start
    try:
        for part in path.split(b"/"):
            step = _sys.openat2(fd, part, _PATH, 0, _RESOLVE)
            if fd != start:
                os.close(fd)
            fd = step
            _refuse_own_mount(fd)
    except BaseException:
        if fd != start:
            os.close(fd)
        raise
    return fd


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


def _dev_ino(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class _HostObject(Node):
    """What the tree's root and the objects below it share."""

    _tree: HostTree
    _path: bytes  # from the tree's root; b"" for the root itself

    @contextmanager
    def _at(self) -> Iterator[tuple[int, os.stat_result]]:
        """A descriptor of this very object (and its stat), for one call."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _below(self, name: bytes) -> bytes:
        return self._path + b"/" + name if self._path else name

    def _attrs(self) -> Attrs:
        with self._at() as (_, st):
            attrs = Attrs.from_stat(st, _BLKSIZE)
        if _special(st.st_mode):
            # See the module's notes: an empty file nobody can open.
            attrs.mode = stat.S_IFREG | stat.S_IMODE(st.st_mode)
            attrs.size = attrs.rdev = attrs.blocks = 0
        return attrs

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        self._tree._writable()
        with self._at() as (fd, _):
            _setattr(fd, isinstance(self, LinkNode), changes, handle)


def _hidden(dirfd: int, name: bytes, hide: Callable[[os.stat_result], bool]) -> bool:
    try:
        fd = _walk(dirfd, name)
    except OSError:
        return True  # gone meanwhile
    try:
        return hide(os.fstat(fd))
    finally:
        os.close(fd)


class _HostDirOps(_HostObject, DirNode):
    """Directory calls of the tree: one name beneath this directory."""

    def _child(self, name: bytes) -> Node | None:
        _check_name(name)
        with self._at() as (dirfd, _):
            try:
                fd = _walk(dirfd, name)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    return None
                raise ExportError(e.errno or errno.EIO, str(e)) from None
            try:
                with _host_errors():
                    st = os.fstat(fd)
            finally:
                os.close(fd)
        if self._tree._hide is not None and self._tree._hide(st):
            return None
        return self._tree._entry(self._below(name), st)

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        with self._at() as (dirfd, _), _host_errors():
            fd = _sys.openat2(dirfd, b".", os.O_RDONLY | os.O_DIRECTORY, 0, _RESOLVE)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
        listing: list[tuple[bytes, Node | None]] = [(os.fsencode(name), None) for name in names]
        hide = self._tree._hide
        if hide is not None:
            # A tree with hidden entries pays a look at each.
            with self._at() as (dirfd, _):
                listing = [(n, None) for n, _ in listing if not _hidden(dirfd, n, hide)]
        # Entries are looked up only as readdir sends them: a listing cut
        # short by a small buffer costs nothing.
        return listing

    def _new(self, name: bytes, mode: int, caller: Caller, owned: bool = False) -> Node:
        """The entry just created under ``name``, made the caller's."""
        node = self._child(name)
        if not isinstance(node, _HostEntry):
            raise ExportError(errno.ENOENT)
        node._adopt(mode, caller, owned)
        return node

    def _making(self, caller: Caller, make: Callable[[], _T]) -> tuple[_T, bool]:
        """``make()`` a new object, as the daemon; where the daemon's ids
        have no mapping in the tree's mount (EOVERFLOW: a bind idmapped to
        a root-run machine's ids, mount_setattr(2)), again as the ids the
        machine maps the caller's to (``creator``), which the new object
        then has: True."""
        try:
            return make(), False
        except OSError as exc:
            creator = self._tree._creator
            if exc.errno != errno.EOVERFLOW or creator is None:
                raise
            ids = creator(caller.uid, caller.gid)
            if ids is None:
                raise
        with _sys.fs_ids(*ids):
            return make(), True

    def _mkdir(self, name: bytes, mode: int, caller: Caller) -> Node:
        self._tree._writable()
        _check_name(name)
        with self._at() as (dirfd, _), _host_errors():
            _, owned = self._making(
                caller, lambda: os.mkdir(name, stat.S_IMODE(mode), dir_fd=dirfd)
            )
        return self._new(name, mode, caller, owned)

    def _mknod(self, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        self._tree._writable()
        _check_name(name)
        if not stat.S_ISREG(mode):
            # The export serves no special file (see the module's notes), so
            # one made through it would come back as another kind of file.
            raise ExportError(errno.EPERM, "no FIFOs, sockets or devices through the export")
        with self._at() as (dirfd, _), _host_errors():
            _, owned = self._making(caller, lambda: os.mknod(name, mode, rdev, dir_fd=dirfd))
        return self._new(name, mode, caller, owned)

    def _symlink(self, name: bytes, target: bytes, caller: Caller) -> Node:
        self._tree._writable()
        _check_name(name)
        with self._at() as (dirfd, _), _host_errors():
            _, owned = self._making(caller, lambda: os.symlink(target, name, dir_fd=dirfd))
        return self._new(name, stat.S_IFLNK | 0o777, caller, owned)

    def _create(self, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Node, Handle]:
        self._tree._writable()
        _check_name(name)
        created, owned = True, False
        with self._at() as (dirfd, _), _host_errors():
            # The kernel only sends CREATE for a name it found missing.  If
            # something appeared there since, O_EXCL refuses to open it: a
            # symlink (its target may be outside the tree) or a FIFO (the
            # open would wait for a writer, and the export with it).
            try:
                fd, owned = self._making(
                    caller,
                    lambda: _sys.openat2(
                        dirfd,
                        name,
                        (flags & _OPEN_FLAGS) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        stat.S_IMODE(mode),
                        _RESOLVE,
                    ),
                )
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # open(2) without O_EXCL opens what is there, if we may.
                created = False
                fd = self._reopen_existing(dirfd, name, flags)
        try:
            with _host_errors():
                node = self._tree._entry(self._below(name), os.fstat(fd))
            assert isinstance(node, _HostFile)
            handle = node._handle(fd)  # pins the object just created
        except BaseException:
            os.close(fd)
            raise
        if created:
            try:
                node._adopt(mode, caller, owned)
            except BaseException:
                handle.abandon()
                raise
        return node, handle

    @staticmethod
    def _reopen_existing(dirfd: int, name: bytes, flags: int) -> int:
        """An open descriptor of the regular file ``name`` (O_TRUNC and
        the access mode of ``flags``), checked before it is opened."""
        path = _walk(dirfd, name)
        try:
            st = os.fstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise ExportError(errno.EISDIR)
            if stat.S_ISLNK(st.st_mode):
                raise ExportError(errno.ELOOP)  # O_NOFOLLOW's answer
            if not stat.S_ISREG(st.st_mode):
                raise ExportError(errno.ENXIO)
            return os.open(
                f"/proc/self/fd/{path}", (flags & _OPEN_FLAGS & ~os.O_EXCL) | os.O_CLOEXEC
            )
        finally:
            os.close(path)

    def _link(self, node: Node, name: bytes) -> Node:
        self._tree._writable()
        _check_name(name)
        if not isinstance(node, _HostEntry) or node._tree is not self._tree:
            raise ExportError(errno.EXDEV)
        with self._at() as (dirfd, _), node._at() as (fd, _), _host_errors():
            # linkat(2) of the descriptor's own object: AT_EMPTY_PATH would
            # need CAP_DAC_READ_SEARCH, the /proc/self/fd link does not.
            os.link(
                os.fsencode(f"/proc/self/fd/{fd}"),
                name,
                dst_dir_fd=dirfd,
                follow_symlinks=True,
            )
        found = self._child(name)
        if found is None:
            raise ExportError(errno.ENOENT)
        return found

    def _unlink(self, name: bytes) -> None:
        self._tree._writable()
        _check_name(name)
        with self._at() as (dirfd, _), _host_errors():
            os.unlink(name, dir_fd=dirfd)

    def _rmdir(self, name: bytes) -> None:
        self._tree._writable()
        _check_name(name)
        with self._at() as (dirfd, _), _host_errors():
            os.rmdir(name, dir_fd=dirfd)

    def _rename(self, name: bytes, new_dir: DirNode, new_name: bytes, flags: int) -> None:
        self._tree._writable()
        _check_name(name)
        _check_name(new_name)
        if not isinstance(new_dir, _HostDirOps) or new_dir._tree is not self._tree:
            raise ExportError(errno.EXDEV)
        with self._at() as (old_fd, _), new_dir._at() as (new_fd, _), _host_errors():
            if flags:
                _sys.renameat2(old_fd, name, new_fd, new_name, flags)
            else:
                os.rename(name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        old, new = self._below(name), new_dir._below(new_name)
        moves = {old: new}
        if flags & _sys.RENAME_EXCHANGE:
            moves[new] = old
        self._tree._moved(moves)


class _HostEntry(_HostObject):
    """An object below the tree's root."""

    def __init__(self, tree: HostTree, path: bytes, st: os.stat_result) -> None:
        super().__init__()
        self._tree = tree
        self._path = path
        self._dev_ino = (st.st_dev, st.st_ino)
        # An O_PATH descriptor held while the object is open, and by how
        # many handles: what fstat(2) of an open file needs even once its
        # path is gone.
        self._pinned = -1
        self._pins = 0

    def _key(self) -> Hashable:
        return (self._tree, *self._dev_ino)

    def _refresh(self, newer: Node) -> None:
        if isinstance(newer, _HostEntry):
            self._path = newer._path

    def _liveness_parent(self) -> Node | None:
        return self._tree

    @contextmanager
    def _at(self) -> Iterator[tuple[int, os.stat_result]]:
        if self._pinned >= 0:
            with _host_errors():
                yield self._pinned, os.fstat(self._pinned)
            return
        with self._tree._at() as (root, _):
            try:
                fd = _walk(root, self._path)
            except OSError as e:
                if e.errno in _GONE:
                    raise ExportError(errno.ESTALE, "moved or removed behind our back") from None
                raise ExportError(e.errno or errno.EIO, str(e)) from None
        try:
            with _host_errors():
                st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._dev_ino:
                raise ExportError(errno.ESTALE, "its path now leads elsewhere")
            yield fd, st
        finally:
            os.close(fd)

    def _pin(self, fd: int) -> None:
        if self._pins == 0:
            self._pinned = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        self._pins += 1

    def _unpin(self) -> None:
        self._pins -= 1
        if self._pins == 0:
            os.close(self._pinned)
            self._pinned = -1

    def _adopt(self, mode: int, caller: Caller, owned: bool = False) -> None:
        """Give a new object to its creator, with the mode asked for.

        Run as root, the daemon creates as root: chown to the caller,
        unless it was made as the caller's ids already (``owned``).  The
        kernel already applied the caller's umask to ``mode``; the
        daemon's own umask must not cut it further.
        """
        with self._at() as (fd, st), _host_errors():
            if os.geteuid() == 0 and (caller.uid, caller.gid) != (0, 0) and not owned:
                _sys.fchown_path_fd(fd, caller.uid, caller.gid)
            if isinstance(self, LinkNode):
                return
            wanted = stat.S_IMODE(mode) & ~caller.umask
            if stat.S_IMODE(st.st_mode) != wanted:
                _sys.fchmod_path_fd(fd, wanted)


def _depth(path: bytes) -> int:
    """How many directories below the tree's root the entry ``path`` is."""
    return path.count(b"/")


class _PerDepth(_HostEntry):
    """A kind of object that is one export inode per host inode *and
    depth*: symlinks and the directories that hold them.

    What readlink answers depends on the depth of the directory entry the
    link was found at (see :func:`confine_symlink`), and a FUSE readlink
    names an inode, not a path.  So the kernel's directory entry of a
    link, and of each directory above it, must stay at the depth its node
    was found at for as long as the node lives:

    * a symlink hard-linked at two depths is two inodes here (one node
      shared by both took the depth of whichever was looked up last, and
      the shallow link's target climbed out of the tree);
    * a directory reachable at two depths (a guest's ``mount --bind``)
      is two inodes here too: the kernel keeps one entry per directory
      inode and moves it to the path looked up last (d_splice_alias),
      taking the links below it to a depth they were not made for.

    At one depth, one inode: a directory the guest renamed behind our back
    is the same inode at its new path, so descriptors held below it work
    again once it is looked up there.  A rename through the export moves
    the kernel's entries and our paths together (HostTree._moved), to any
    depth.  The price: a directory at two depths shows two st_ino.
    """

    def _key(self) -> Hashable:
        return self  # HostTree._entry finds the node of the same inode and depth


class _HostDir(_PerDepth, _HostDirOps):
    pass


class _FileHandle(Handle):
    """An open host file: reads and writes go straight to it."""

    def __init__(self, fd: int, node: _HostEntry) -> None:
        self._fd = fd
        self._node = node
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
        self.abandon()

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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._node._unpin()


class _HostFile(_HostEntry, FileNode):
    def _open(self, flags: int, caller: Caller) -> Handle:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._tree._writable()
        with self._at() as (fd, st), _host_errors():
            if not stat.S_ISREG(st.st_mode):
                # Its inode number now belongs to a FIFO or a device the
                # guest made: never opened (see the module's notes).
                raise ExportError(errno.ENXIO)
            # Reopen the object itself through its /proc/self/fd link: the
            # only way from an O_PATH descriptor to an open file, and it
            # opens what was checked (O_TRUNC included), not a path.
            data = os.open(f"/proc/self/fd/{fd}", (flags & _OPEN_FLAGS) | os.O_CLOEXEC)
        try:
            return self._handle(data)
        except BaseException:
            os.close(data)
            raise

    def _handle(self, data: int) -> _FileHandle:
        with _host_errors():
            self._pin(data)
        return _FileHandle(data, self)


class _HostLink(_PerDepth, LinkNode):
    """A symlink (see :class:`_PerDepth`)."""

    def _attrs(self) -> Attrs:
        # st_size of a symlink is the length of what readlink returns.
        attrs = super()._attrs()
        attrs.size = len(self._readlink())
        return attrs

    def _readlink(self) -> bytes:
        with self._at() as (fd, _), _host_errors():
            target = os.readlink(b"", dir_fd=fd)
        return confine_symlink(target, self._path.count(b"/"))


class _HostOther(_HostEntry, FileNode):
    """A FIFO, socket or device node, served as an empty regular file that
    cannot be opened (see the module's notes)."""

    def _open(self, flags: int, caller: Caller) -> Handle:
        # What open(2) of a socket gives, and of a FIFO without a reader.
        raise ExportError(errno.ENXIO, "a FIFO, socket or device of the guest")


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

    def __init__(
        self,
        root_fd_factory: Callable[[], int],
        *,
        read_only: bool = False,
        hide: Callable[[os.stat_result], bool] | None = None,
        creator: Callable[[int, int], tuple[int, int] | None] | None = None,
    ) -> None:
        super().__init__()
        self._tree = self
        #: The ids to create as for a caller's (uid, gid), where the
        #: daemon's own have no mapping in the tree (see _making).
        self._creator = creator
        self._path = b""
        self._factory = root_fd_factory
        #: Every change through the export fails with EROFS (a view of
        #: what another filesystem owns, such as an overlay's upper layer).
        self._read_only = read_only
        #: Entries not shown (an overlay's whiteouts).
        self._hide = hide
        self._root_fd = -1
        # Every object handed out, to update their paths after a rename.
        self._entries: weakref.WeakSet[_HostEntry] = weakref.WeakSet()
        # Directories and symlinks by host inode and depth (see _PerDepth).
        self._by_depth: weakref.WeakValueDictionary[tuple[int, int, int], _HostEntry] = (
            weakref.WeakValueDictionary()
        )

    def _writable(self) -> None:
        if self._read_only:
            raise ExportError(errno.EROFS)

    @contextmanager
    def _at(self) -> Iterator[tuple[int, os.stat_result]]:
        if self._root_fd < 0:
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
        with _host_errors():
            st = os.fstat(self._root_fd)
        yield self._root_fd, st

    def _entry(self, path: bytes, st: os.stat_result) -> _HostEntry:
        kind: type[_HostEntry]
        if stat.S_ISDIR(st.st_mode):
            kind = _HostDir
        elif stat.S_ISREG(st.st_mode):
            kind = _HostFile
        elif stat.S_ISLNK(st.st_mode):
            kind = _HostLink
        else:
            kind = _HostOther
        if issubclass(kind, _PerDepth):
            key = (st.st_dev, st.st_ino, _depth(path))
            known = self._by_depth.get(key)
            # Its depth may have changed since (a rename through the export).
            if known is not None and _depth(known._path) == key[2]:
                known._path = path  # where the kernel's entry will be now
                return known
            entry = kind(self, path, st)
            self._by_depth[key] = entry
        else:
            entry = kind(self, path, st)
        self._entries.add(entry)
        return entry

    def _moved(self, moves: dict[bytes, bytes]) -> None:
        """Paths after a rename through the export: ``old`` and below became ``new``."""
        for entry in list(self._entries):
            for old, new in moves.items():
                if entry._path == old or entry._path.startswith(old + b"/"):
                    entry._path = new + entry._path[len(old) :]
                    break

    def _forgotten(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _statfs(self) -> os.statvfs_result | None:
        with self._at() as (fd, _), _host_errors():
            return os.fstatvfs(fd)
