"""Nodes whose content comes from callables (kernfs style).

Every callable given to these nodes runs in the thread that runs
:func:`serve`, inside a FUSE request: it must answer quickly and must not
block (a slow callable stalls every request of the mount), and it refuses
with :class:`ExportError` (anything else it raises is a bug, logged and
answered with EIO).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import trio

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
    access_mode,
)

N = TypeVar("N", bound=Node)


def entry_name(name: str) -> bytes:
    """A directory entry name as the kernel sends it, checked."""
    raw = os.fsencode(name)
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise ValueError(f"not a usable directory entry name: {name!r}")
    return raw


class Directory(DirNode):
    """A directory with a fixed set of children (which :meth:`add` may grow)."""

    def __init__(self, children: Mapping[str, Node] | None = None) -> None:
        super().__init__()
        self._children: dict[bytes, Node] = {}
        for name, node in (children or {}).items():
            self.add(name, node)

    def add(self, name: str, node: N) -> N:
        """Put ``node`` under ``name`` (replacing any previous one); returns it."""
        self._children[entry_name(name)] = node
        return node

    def lookup_child(self, name: str) -> Node:
        """The child called ``name`` (KeyError if there is none)."""
        return self._children[entry_name(name)]

    def remove(self, name: str) -> None:
        """Take ``name`` away; later lookups of it give ENOENT."""
        self._children.pop(entry_name(name), None)

    def _child(self, name: bytes) -> Node | None:
        return self._children.get(name)

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        return list(self._children.items())


class DynamicDirectory(DirNode):
    """A directory whose entries come and go (one per live process, say).

    ``list_children`` returns the current entries; ``lookup``, when given,
    answers for one name without building the whole mapping (it returns
    None for a name that is not there).  Return the same Node object for
    the same entry every time (cache them, e.g. in a dict keyed by pid):
    the object is the inode, so new objects mean new inode numbers.

    A child that vanished gives ENOENT: on lookup of its name, and on
    lookup or open inside it through a descriptor held from before.
    """

    def __init__(
        self,
        list_children: Callable[[], Mapping[str, Node]],
        *,
        lookup: Callable[[str], Node | None] | None = None,
    ) -> None:
        super().__init__()
        self._list = list_children
        self._lookup = lookup

    def _child(self, name: bytes) -> Node | None:
        text = os.fsdecode(name)
        if self._lookup is not None:
            return self._lookup(text)
        return self._list().get(text)

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        return [(entry_name(name), node) for name, node in self._list().items()]


T = TypeVar("T")


class _BytesHandle(Handle):
    """Reads served from bytes taken once at open (lxcfs's and s3ql's way):
    a reader sees one consistent value however small its reads are."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"a file's content must be bytes, not {type(data).__name__}")
        self._data = data

    async def read(self, off: int, size: int) -> bytes:
        return self._data[off : off + size]


class SnapshotFile(FileNode):
    """A read-only file whose whole content ``generate()`` builds at open.

    Its size reads as 0 (as in /proc): the content is only known once
    generated, and direct_io makes readers read until end of file anyway.
    Opening it for writing gives EACCES, also to root.

    ``private``: readable only by the user who runs the export (the owner
    of every synthetic node) and by root, as /proc/PID/environ is (mode
    0400, proc(5)).  The kernel already refuses others by the mode
    (default_permissions); the open checks the caller again, so that the
    rule does not depend on a mount option.
    """

    def __init__(self, generate: Callable[[], bytes], *, private: bool = False) -> None:
        super().__init__()
        self._generate = generate
        self._private = private

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFREG | (0o400 if self._private else 0o444))

    def _open(self, flags: int, caller: Caller) -> Handle:
        if access_mode(flags)[1]:
            # default_permissions lets root past the mode bits: refusing
            # here is what makes read-only mean read-only for everyone.
            raise ExportError(errno.EACCES)
        if self._private and caller.uid not in (0, os.geteuid()):
            raise ExportError(errno.EACCES)
        return _BytesHandle(self._generate())


class _Collector(Handle):
    """Collects what one descriptor writes; subclasses say when a unit is complete.

    Writes append to the pending bytes, whatever their offset, except that
    a write at offset 0 starts over (the first write of a value, or a
    rewind with pwrite(fd, value, 0)): offsets mean little in a file that
    reports size 0, where O_APPEND writes come at whatever size the kernel
    last saw.
    """

    def __init__(self, data: bytes, writable: bool) -> None:
        self._data = data
        self._writable = writable
        self._pending = bytearray()

    async def read(self, off: int, size: int) -> bytes:
        return self._data[off : off + size]

    async def write(self, off: int, data: bytes) -> int:
        if not self._writable:
            raise ExportError(errno.EBADF)
        if off == 0:
            self._pending.clear()
        self._pending += data
        await self._complete(final=False)
        return len(data)

    async def flush(self) -> None:
        # close(2) reports what a flush raises: the remainder of a value
        # written without a newline (printf 5 > file) fails here.
        await self._complete(final=True)

    async def release(self) -> None:
        await self._complete(final=True)

    def truncate(self, size: int) -> None:
        # O_TRUNC of `echo value > file`: the new value replaces the old
        # one when applied, there is nothing to cut.
        if size != 0:
            raise ExportError(errno.EINVAL)

    async def _complete(self, final: bool) -> None:
        raise NotImplementedError


async def _run(fn: Callable[[T], None], arg: T, blocking: bool) -> None:
    """``fn(arg)``; one that may wait runs in a worker thread, so that the
    export's event loop (every machine's, in the daemon) goes on serving
    meanwhile."""
    if blocking:
        await trio.to_thread.run_sync(fn, arg)
    else:
        fn(arg)


class _ValueHandle(_Collector):
    def __init__(self, node: WritableFile, data: bytes, writable: bool) -> None:
        super().__init__(data, writable)
        self._node = node

    async def _complete(self, final: bool) -> None:
        # A value is complete when it ends with a newline (what `echo`
        # writes, in one write(2)): applying it inside write() is what lets
        # the shell's write(2) fail with EINVAL.  Whatever is left at close
        # is applied in flush(), so that close(2) reports its error.
        if not self._pending or not (final or self._pending.endswith(b"\n")):
            return
        value = bytes(self._pending)
        self._pending.clear()
        await _run(self._node._apply, value, self._node._blocking)
        self._node._applied_ns = time.time_ns()


class WritableFile(FileNode):
    """A setting: reads give ``read()``, a written value goes to ``apply(value)``.

    A reader sees the value as of its open().  What one descriptor writes is
    collected and handed to ``apply`` in one piece (newline included) as
    soon as it ends with a newline, and otherwise when the descriptor is
    closed.  ``apply`` raises ``ExportError(errno.EINVAL)`` to refuse a
    value, and must then leave the old one in place: ``echo bad > file``
    fails with "Invalid argument" (in write(2), or in close(2) for a value
    without a final newline).
    """

    def __init__(
        self, read: Callable[[], bytes], apply: Callable[[bytes], None], *, blocking: bool = False
    ) -> None:
        super().__init__()
        self._read = read
        self._apply = apply
        #: ``apply`` may wait (it runs in a worker thread).
        self._blocking = blocking
        self._applied_ns: int | None = None

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFREG | 0o644, mtime_ns=self._applied_ns)

    def _open(self, flags: int, caller: Caller) -> Handle:
        reads, writes = access_mode(flags)
        return _ValueHandle(self, self._read() if reads else b"", writes)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        if changes == SetAttr(size=0):  # O_TRUNC before the new value comes
            return
        super()._setattr(changes, handle)


class _CommandHandle(_Collector):
    def __init__(self, command: Callable[[str], None], blocking: bool) -> None:
        super().__init__(b"", True)
        self._command = command
        self._blocking = blocking

    async def _complete(self, final: bool) -> None:
        while True:
            line, newline, rest = self._pending.partition(b"\n")
            if not newline and not final:
                return
            self._pending = rest
            await self._run_line(bytes(line))
            if not newline:
                return

    async def _run_line(self, line: bytes) -> None:
        try:
            text = line.decode().strip()
        except UnicodeDecodeError:
            self._pending.clear()
            raise ExportError(errno.EINVAL, "a command is UTF-8 text") from None
        if not text:
            return
        try:
            await _run(self._command, text, self._blocking)
        except BaseException:
            # The lines after a refused one are not run: the writer learns
            # of the failure from this very write(2) and decides.
            self._pending.clear()
            raise


class ControlFile(FileNode):
    """A write-only command channel: each line written runs ``command(line)``.

    Lines are stripped of surrounding white space and empty ones skipped;
    a last line without a newline runs at close.  ``command`` refuses with
    ``ExportError(errno.EINVAL)``: the write(2) (or close(2)) carrying the
    line fails with it and the lines after it in the same write are
    dropped.  Opening for reading gives EACCES.
    """

    def __init__(self, command: Callable[[str], None], *, blocking: bool = False) -> None:
        super().__init__()
        self._command = command
        #: ``command`` may wait (it runs in a worker thread).
        self._blocking = blocking

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFREG | 0o200)

    def _open(self, flags: int, caller: Caller) -> Handle:
        if access_mode(flags)[0]:
            raise ExportError(errno.EACCES)
        return _CommandHandle(self._command, self._blocking)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        if changes == SetAttr(size=0):
            return
        super()._setattr(changes, handle)


class _InputHandle(Handle):
    def __init__(self, node: InputFile) -> None:
        self._node = node

    async def write(self, off: int, data: bytes) -> int:
        await _run(self._node._write, data, self._node._blocking)
        self._node._written_ns = time.time_ns()
        return len(data)

    def truncate(self, size: int) -> None:
        # O_TRUNC of `echo keys > file`: nothing to cut in a stream.
        if size != 0:
            raise ExportError(errno.EINVAL)


class InputFile(FileNode):
    """A write-only stream: the bytes of each write(2) go to ``write(data)``
    at once, as they come (offsets mean nothing; nothing is collected).

    ``write`` refuses with ``ExportError``: the write(2) fails with it
    and what it carried is dropped whole.  Opening for reading gives
    EACCES.
    """

    def __init__(self, write: Callable[[bytes], None], *, blocking: bool = False) -> None:
        super().__init__()
        self._write = write
        #: ``write`` may wait (it runs in a worker thread).
        self._blocking = blocking
        self._written_ns: int | None = None

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFREG | 0o200, mtime_ns=self._written_ns)

    def _open(self, flags: int, caller: Caller) -> Handle:
        if access_mode(flags)[0]:
            raise ExportError(errno.EACCES)
        return _InputHandle(self)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        if changes == SetAttr(size=0):
            return
        super()._setattr(changes, handle)


class Symlink(LinkNode):
    """A symbolic link to whatever ``target()`` says at the time of reading."""

    def __init__(self, target: Callable[[], bytes]) -> None:
        super().__init__()
        self._target = target

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFLNK | 0o777, size=len(self._target()))

    def _readlink(self) -> bytes:
        return self._target()
