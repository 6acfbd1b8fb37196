"""What every node of the export is, and what the Operations class asks of it.

This is the internal protocol between the nodes and :mod:`._ops`: nodes
never see pyfuse3's types (so they can be built and unit-tested without a
mount), and the Operations class never knows which kind of node it talks to
beyond "directory", "file" and "symlink".
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from umld.fusefs._errors import ExportError

# What poll(2) reports for a file that is always ready, the kernel's
# DEFAULT_POLLMASK (fs/select.c).
POLL_ALWAYS = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM


@dataclass(slots=True)
class Attrs:
    """The stat(2) fields a node reports; the Operations class adds st_ino."""

    mode: int
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    blksize: int = 4096
    blocks: int = 0

    @classmethod
    def from_stat(cls, st: os.stat_result, blksize: int) -> Attrs:
        return cls(
            st.st_mode,
            st.st_size,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_rdev,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
            blksize,
            st.st_blocks,
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request (fuse_req_ctx(3)): pid is the calling thread's id
    in the daemon's pid namespace, 0 if it has none there."""

    uid: int
    gid: int
    pid: int
    umask: int


@dataclass(frozen=True, slots=True)
class SetAttr:
    """The changes of one setattr request; None leaves a field alone."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Node:
    """Anything in the export: a directory, a file or a symlink.

    Build trees from the concrete kinds (:class:`Directory`,
    :class:`SnapshotFile`, ...); subclassing Node outside this package is
    not supported, its methods are the private protocol of the Operations
    class.  One Node object is one inode of the export: putting the same
    object under two names makes a hard link, and a directory that builds
    new objects on every listing gives its entries new inode numbers.
    """

    #: Seconds the kernel may keep this node's directory entry and
    #: attributes (FUSE entry_timeout/attr_timeout); 0: ask every time.
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0

    def __init__(self) -> None:
        # Export inode number, kept for the object's lifetime once assigned
        # so that a node the kernel forgot and looks up again keeps it.
        self._ino = 0
        # The directory this node was last looked up in, and under which
        # name: for the liveness check of dynamic directories and for the
        # depth of host symlinks.
        self._parent: Node | None = None
        self._name = b""
        self._born_ns = time.time_ns()

    def _key(self) -> Hashable:
        """Identity in the inode table: two nodes with equal keys are one inode."""
        return self

    def _attrs(self) -> Attrs:
        raise NotImplementedError

    def _base_attrs(self, mode: int, size: int = 0, mtime_ns: int | None = None) -> Attrs:
        # Synthetic nodes belong to whoever runs the export: with
        # default_permissions the kernel then gives other users exactly
        # what the mode bits say (see serve()).
        t = self._born_ns if mtime_ns is None else mtime_ns
        return Attrs(
            mode=mode,
            size=size,
            uid=os.geteuid(),
            gid=os.getegid(),
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
        )

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        # A synthetic node's metadata is not the caller's to change (sysfs
        # answers EPERM too).
        raise ExportError(errno.EPERM)

    def _forgotten(self) -> None:
        """The kernel dropped its last reference; release what the node holds."""

    def _refresh(self, newer: Node) -> None:
        """``newer`` was just found with this node's key: take what is fresher
        in it (where a host object is now)."""

    def _liveness_parent(self) -> Node | None:
        """The node whose presence in a dynamic directory this one depends on."""
        return self._parent

    def _statfs(self) -> os.statvfs_result | None:
        """Filesystem statistics when this node is the root of the mount."""
        return None

    async def _prepare(self, caller: Caller) -> None:
        """Called at each lookup of the node, before the reply: a node
        that needs work first (a socket to bind, _sockets.py) does it
        here, off the caller's locks but before it sees the node."""


class Handle:
    """One open file: what open() returned, until release()."""

    # pyfuse3.FileInfo flags.  Every node kind of this package is served
    # with direct_io: sizes are not known in advance (or change behind the
    # kernel's back), and the page cache must never answer instead of us.
    direct_io = True
    keep_cache = False
    nonseekable = False
    # Export inode number of the open file, set by the Operations class.
    ino = 0

    async def read(self, off: int, size: int) -> bytes | memoryview:
        raise ExportError(errno.EBADF)

    async def write(self, off: int, data: bytes) -> int:
        raise ExportError(errno.EBADF)

    async def flush(self) -> None:
        """close(2) of one descriptor: an error here is what close(2) returns."""

    async def release(self) -> None:
        """The last descriptor is gone; errors are not reported to anyone."""

    async def fsync(self, datasync: bool) -> None:
        pass

    def poll(self, notify: Callable[[], None]) -> int:
        """poll(2) mask now; may keep ``notify`` to call once when it changes."""
        return POLL_ALWAYS

    def truncate(self, size: int) -> None:
        raise ExportError(errno.EPERM)

    def abandon(self) -> None:
        """The mount is gone without a release: free what the handle holds."""


class DirNode(Node):
    """A directory; the mutating calls answer EPERM unless overridden."""

    def _attrs(self) -> Attrs:
        # nlink 1: "unknown number of subdirectories", as btrfs reports, so
        # that no tool relies on nlink - 2 to count subdirectories.
        return self._base_attrs(stat.S_IFDIR | 0o555)

    def _child(self, name: bytes) -> Node | None:
        raise NotImplementedError

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        """Entries for readdir; None stands for "call _child(name) when sent"."""
        raise NotImplementedError

    def _mkdir(self, name: bytes, mode: int, caller: Caller) -> Node:
        raise ExportError(errno.EPERM)

    def _mknod(self, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        raise ExportError(errno.EPERM)

    def _create(self, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Node, Handle]:
        raise ExportError(errno.EPERM)

    def _symlink(self, name: bytes, target: bytes, caller: Caller) -> Node:
        raise ExportError(errno.EPERM)

    def _link(self, node: Node, name: bytes) -> Node:
        raise ExportError(errno.EPERM)

    def _unlink(self, name: bytes) -> None:
        raise ExportError(errno.EPERM)

    def _rmdir(self, name: bytes) -> None:
        raise ExportError(errno.EPERM)

    def _rename(self, name: bytes, new_dir: DirNode, new_name: bytes, flags: int) -> None:
        raise ExportError(errno.EPERM)


class FileNode(Node):
    """A regular file."""

    def _open(self, flags: int, caller: Caller) -> Handle:
        raise NotImplementedError


class LinkNode(Node):
    """A symbolic link."""

    def _readlink(self) -> bytes:
        raise NotImplementedError


def access_mode(flags: int) -> tuple[bool, bool]:
    """(reads, writes) of open(2) flags."""
    acc = flags & os.O_ACCMODE
    return acc != os.O_WRONLY, acc != os.O_RDONLY
