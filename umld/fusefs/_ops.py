"""The one pyfuse3.Operations class: FUSE requests to node calls.

This is the only place that knows pyfuse3's request types, and the only
place that turns :class:`ExportError` into :class:`pyfuse3.FUSEError`.
A handler must never let anything else out: pyfuse3 would let it end the
main loop (and leave the request unanswered), so any other exception is
logged with its traceback and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3

from umld.errors import get_logger
from umld.fusefs import _mount, _sockets
from umld.fusefs._errors import ExportError
from umld.fusefs._inodes import ROOT_INODE, InodeTable
from umld.fusefs._node import (
    POLL_ALWAYS,
    Caller,
    DirNode,
    FileNode,
    Handle,
    LinkNode,
    Node,
    SetAttr,
    access_mode,
)
from umld.fusefs._synthetic import DynamicDirectory

_log = get_logger("umld.fusefs")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """The error boundary of a request handler (see the module's notes)."""

    @functools.wraps(fn)
    async def handler(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except ExportError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            _log.exception("fusefs: the %s handler failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.pid, ctx.umask)


def _dir(node: Node) -> DirNode:
    if not isinstance(node, DirNode):
        raise ExportError(errno.ENOTDIR)
    return node


def _check_alive(node: Node) -> None:
    """ENOENT for a node under an entry its dynamic directory no longer has.

    The kernel may still hold a vanished entry (a process's directory
    opened before the process died): what is below it must read as gone.
    """
    child = node
    parent = child._liveness_parent()
    while parent is not None:
        if isinstance(parent, DynamicDirectory) and parent._child(child._name) is not child:
            raise ExportError(errno.ENOENT)
        child = parent
        parent = child._liveness_parent()


def forget_entry(node: Node) -> None:
    """Tells the kernel to drop the entry under which it last looked up
    ``node``, if it still keeps one: for a node with an entry_timeout
    that is gone before its timeout (a process's directory at its exit).

    In the export's trio thread (node._parent is set there).  Through
    pyfuse3's notify thread: FUSE_NOTIFY_INVAL_ENTRY is handled within the
    write to /dev/fuse and may need a FORGET answered meanwhile, so the
    request loop must not make it itself (libfuse's fuse_lowlevel.h,
    fuse_lowlevel_notify_inval_entry)."""
    parent = node._parent
    if not node._ino or parent is None or not parent._ino:
        return  # never looked up: the kernel has nothing to drop
    try:
        pyfuse3.invalidate_entry_async(parent._ino, node._name, ignore_enoent=True)
    except Exception:  # the mount is going away; nothing is kept then
        _log.debug("fusefs: dropping the entry %r failed", node._name, exc_info=True)


@dataclass(slots=True)
class _OpenDir:
    node: DirNode
    entries: Sequence[tuple[bytes, Node | None]]


class ExportOperations(pyfuse3.Operations):
    """Serves a tree of nodes; one instance per mount (see :func:`serve`)."""

    # "." and ".." lookups are for NFS export of the mount; refusing that
    # capability means the kernel never sends a name that is a path step.
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: Node, *, refuse: Callable[[int], bool] | None = None) -> None:
        super().__init__()
        if not isinstance(root, DirNode):
            raise TypeError("the root of an export is a directory node")
        self._root = root
        self._refuse = refuse
        self._inodes = InodeTable(root)
        self._files: dict[int, Handle] = {}
        #: The handles open for writing, until their release: the end of
        #: the export waits for them (serve's drain()).
        self._writers: set[int] = set()
        self._dirs: dict[int, _OpenDir] = {}
        self._next_fh = 1

    def close(self) -> None:
        """Free everything after the mount is gone (no release or forget will come)."""
        for handle in self._files.values():
            try:
                handle.abandon()
            except Exception:
                _log.exception("fusefs: abandoning an open file failed")
        self._files.clear()
        _mount.CURRENT.writers -= len(self._writers)
        self._writers.clear()
        self._dirs.clear()
        self._inodes.clear()

    # -- helpers -------------------------------------------------------

    def _admit(self, ctx: pyfuse3.RequestContext) -> None:
        """EACCES for a request of a process the mount is closed to (see
        :func:`umld.fusefs.serve`'s ``refuse``)."""
        if self._refuse is not None and ctx.pid and self._refuse(ctx.pid):
            raise ExportError(errno.EACCES, f"the export is closed to thread {ctx.pid}")

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self._files.get(fh)
        if handle is None:
            raise ExportError(errno.EBADF)
        return handle

    def _attributes(self, ino: int, node: Node) -> pyfuse3.EntryAttributes:
        a = node._attrs()
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        # No caching by default: entries come and go (dynamic directories,
        # the host tree changed by the guest), sizes and contents change
        # behind the kernel's back.  Every stat and every path walk asks.
        # A node that is known to stay (a live file of a process, whose
        # content is made at open anyway) may let the kernel keep it.
        e.entry_timeout = node.entry_timeout
        e.attr_timeout = node.attr_timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = a.blksize
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _entry(self, parent: Node, name: bytes, child: Node) -> pyfuse3.EntryAttributes:
        """Reply with ``child`` as entry ``name`` of ``parent``: one more reference."""
        ino, node = self._inodes.register(child)
        node._parent, node._name = parent, name
        try:
            attrs = self._attributes(ino, node)
        except BaseException:
            self._inodes.unref_unused(ino)
            raise
        self._inodes.ref(ino)
        return attrs

    # -- inodes --------------------------------------------------------

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        if parent_inode == ROOT_INODE and name == _sockets.BIND_DIR:
            # Where the export's sockets are bound (_sockets.py); not listed.
            return self._entry(parent, name, _sockets.BINDER.directory)
        child = parent._child(name)
        if child is None:
            raise ExportError(errno.ENOENT)
        await child._prepare(_caller(ctx))
        return self._entry(parent, name, child)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # No reply goes with a forget: nothing may escape from here.
        for ino, count in inode_list:
            try:
                self._inodes.forget(ino, count)
            except Exception:
                _log.exception("fusefs: forgetting inode %d failed", ino)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        return self._attributes(inode, self._inodes.node(inode))

    @_guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        node = self._inodes.node(inode)
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if changes != SetAttr():
            node._setattr(changes, None if fh is None else self._files.get(fh))
        return self._attributes(inode, node)

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self._admit(ctx)
        node = self._inodes.node(inode)
        if not isinstance(node, LinkNode):
            raise ExportError(errno.EINVAL)
        _check_alive(node)
        return node._readlink()

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self._admit(ctx)
        # pyfuse3 does not say which inode statfs(2) was called on, so the
        # answer is the root's: its host filesystem's when the root is a
        # HostTree, else the numbers of an empty, unbounded filesystem.
        st = self._root._statfs()
        out = pyfuse3.StatvfsData()
        if st is None:
            out.f_bsize = out.f_frsize = 4096
            out.f_namemax = 255
            return out
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = st.f_namemax
        return out

    # -- directory entries ----------------------------------------------

    @_guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        return self._entry(parent, name, parent._mkdir(name, mode, _caller(ctx)))

    @_guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        return self._entry(parent, name, parent._mknod(name, mode, rdev, _caller(ctx)))

    @_guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        return self._entry(parent, name, parent._symlink(name, target, _caller(ctx)))

    @_guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._admit(ctx)
        node = self._inodes.node(inode)
        parent = _dir(self._inodes.node(new_parent_inode))
        _check_alive(parent)
        return self._entry(parent, new_name, parent._link(node, new_name))

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        parent._unlink(name)

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        parent._rmdir(name)

    @_guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._admit(ctx)
        old = _dir(self._inodes.node(parent_inode_old))
        new = _dir(self._inodes.node(parent_inode_new))
        _check_alive(old)
        _check_alive(new)
        old._rename(name_old, new, name_new, flags)

    # -- files -----------------------------------------------------------

    def _file_info(self, ino: int, handle: Handle, flags: int) -> pyfuse3.FileInfo:
        handle.ino = ino
        fh = self._new_fh()
        self._files[fh] = handle
        if access_mode(flags)[1]:
            self._writers.add(fh)
            _mount.CURRENT.writers += 1
        return pyfuse3.FileInfo(
            fh=fh,
            direct_io=handle.direct_io,
            keep_cache=handle.keep_cache,
            nonseekable=handle.nonseekable,
        )

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._admit(ctx)
        node = self._inodes.node(inode)
        if isinstance(node, DirNode):
            raise ExportError(errno.EISDIR)
        if not isinstance(node, FileNode):
            raise ExportError(errno.EACCES)
        _check_alive(node)
        return self._file_info(inode, node._open(flags, _caller(ctx)), flags)

    @_guarded
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._admit(ctx)
        parent = _dir(self._inodes.node(parent_inode))
        _check_alive(parent)
        node, handle = parent._create(name, mode, flags, _caller(ctx))
        try:
            attrs = self._entry(parent, name, node)
        except BaseException:
            handle.abandon()
            raise
        return self._file_info(attrs.st_ino, handle, flags), attrs

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # pyfuse3 replies with any buffer (PyObject_GetBuffer), not only bytes.
        return cast(bytes, await self._handle(fh).read(off, size))

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._handle(fh).write(off, buf)

    @_guarded
    async def flush(self, fh: int) -> None:
        await self._handle(fh).flush()

    @_guarded
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if fh in self._writers:
            self._writers.discard(fh)
            _mount.CURRENT.writers -= 1
        if handle is not None:
            await handle.release()

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._handle(fh).fsync(datasync)

    @_guarded
    async def poll(
        self,
        inode: int,
        fh: int,
        poll_handle: pyfuse3.PollHandle | None,
        ctx: pyfuse3.RequestContext,
    ) -> int:
        self._admit(ctx)
        handle = self._files.get(fh)
        if handle is None:
            return POLL_ALWAYS

        def notify() -> None:
            # Runs later, from trio's run_sync_soon: must not raise.
            if poll_handle is None:
                return
            try:
                poll_handle.notify()
            except Exception as e:
                _log.debug("fusefs: poll notification failed: %s", e)

        return handle.poll(notify)

    # -- directories -----------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._admit(ctx)
        node = _dir(self._inodes.node(inode))
        _check_alive(node)
        fh = self._new_fh()
        self._dirs[fh] = _OpenDir(node, ())
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        opened = self._dirs.get(fh)
        if opened is None:
            raise ExportError(errno.EBADF)
        if start_id == 0:
            # The first readdir, or rewinddir(3): a new listing.  Offsets
            # are indices into the listing taken here, so entries appearing
            # or vanishing meanwhile never make another one skipped or
            # repeated.
            try:
                _check_alive(opened.node)
            except ExportError:
                # Read through a descriptor held from before it vanished:
                # empty, as a removed directory reads (rmdir(2)).
                opened.entries = ()
                return
            opened.entries = opened.node._listing()
        for index in range(start_id, len(opened.entries)):
            name, child = opened.entries[index]
            if child is None:
                try:
                    child = opened.node._child(name)
                except ExportError:
                    continue  # unreadable, or our own mount: left out
                if child is None:
                    continue  # gone since the listing
            ino, child = self._inodes.register(child)
            child._parent, child._name = opened.node, name
            try:
                attrs = self._attributes(ino, child)
            except ExportError:
                self._inodes.unref_unused(ino)
                continue
            # readdirplus: an entry the kernel takes is a lookup reference.
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                self._inodes.unref_unused(ino)
                return
            self._inodes.ref(ino)

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass
