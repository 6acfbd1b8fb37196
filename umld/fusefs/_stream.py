"""An append-only line log, exported as a file that readers can follow.

Offsets in the file are byte positions in the log since it was created,
and st_size is the number of bytes ever logged: so `tail -f` finds the
last lines where it expects them (it reads backwards from st_size) and
sees the size grow, which is how it polls a file on a FUSE mount (GNU tail
treats FUSE as remote and does not use inotify there).  Only the newest
lines are kept; the bytes before them read as if they were the oldest
line still kept, see :class:`StreamFile`.
"""

from __future__ import annotations

import bisect
import errno
import select
import stat
import threading
import time
from collections.abc import Callable

import trio

from umld.fusefs import _mount, _procfs
from umld.fusefs._errors import ExportError
from umld.fusefs._node import Attrs, Caller, FileNode, Handle, SetAttr, access_mode

# How often a waiting read looks at its reader in /proc (see _procfs): the
# delay between Ctrl-C and a `cat` of the stream exiting.
_CHECK_INTERVAL = 0.2

_READABLE = select.POLLIN | select.POLLRDNORM
#: The size up to which EventLog.write grows its last chunk.
_CHUNK = 4096

_Waiter = tuple[trio.lowlevel.TrioToken, Callable[[], None]]


class EventLog:
    """A bounded, thread-safe log of text lines, read through :class:`StreamFile`.

    Keeps the newest ``max_lines`` lines and at most ``max_bytes`` bytes
    of them (always at least the newest line).  :meth:`append` may be
    called from any thread, trio's or not.
    """

    def __init__(self, max_lines: int = 10_000, max_bytes: int = 4 << 20) -> None:
        if max_lines < 1 or max_bytes < 1:
            raise ValueError("an EventLog keeps at least one line")
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        # Retained lines are _lines[_head:]; _starts[i] is the log offset
        # of _lines[i].  Dropped lines are skipped by _head and compacted
        # away in bulk, so appends and lookups stay O(1) and O(log n).
        self._lines: list[bytes] = []
        self._starts: list[int] = []
        self._head = 0
        self._end = 0
        self._kept_bytes = 0
        self._mtime_ns = time.time_ns()
        self._closed = False
        self._waiters: dict[int, _Waiter] = {}
        self._next_waiter = 0

    def append(self, line: str) -> None:
        """Add one line (a newline is added if missing); dropped once closed."""
        data = line.encode("utf-8", "backslashreplace")
        self._add(data if data.endswith(b"\n") else data + b"\n", merge=False)

    def write(self, data: bytes) -> None:
        """Add bytes as they are (a byte stream: a serial port's output),
        in chunks of up to 4 KiB, so that a stream written a byte at a
        time is not a line per byte; dropped once closed."""
        if data:
            self._add(bytes(data), merge=True)

    def _add(self, data: bytes, *, merge: bool) -> None:
        with self._lock:
            if self._closed:
                return
            if merge and len(self._lines) > self._head and len(self._lines[-1]) < _CHUNK:
                self._lines[-1] += data
            else:
                self._lines.append(data)
                self._starts.append(self._end)
            self._end += len(data)
            self._kept_bytes += len(data)
            self._mtime_ns = time.time_ns()
            self._trim()
            waiters = self._take_waiters()
        _wake(waiters)

    def close(self) -> None:
        """No more lines: readers that reach the end get end of file."""
        with self._lock:
            self._closed = True
            waiters = self._take_waiters()
        _wake(waiters)

    def lines(self) -> list[str]:
        """The retained lines, oldest first, without their newlines."""
        with self._lock:
            return [b.decode("utf-8", "replace")[:-1] for b in self._lines[self._head :]]

    def _trim(self) -> None:
        while len(self._lines) - self._head > 1 and (
            len(self._lines) - self._head > self._max_lines or self._kept_bytes > self._max_bytes
        ):
            self._kept_bytes -= len(self._lines[self._head])
            self._lines[self._head] = b""
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._lines):
            del self._lines[: self._head]
            del self._starts[: self._head]
            self._head = 0

    def _take_waiters(self) -> list[_Waiter]:
        waiters = list(self._waiters.values())
        self._waiters.clear()
        return waiters

    def _first(self) -> int:
        return self._starts[self._head] if self._head < len(self._lines) else self._end

    def _size(self) -> tuple[int, int]:
        with self._lock:
            return self._end, self._mtime_ns

    def _read(self, pos: int, size: int) -> tuple[bytes, int, bool]:
        """(bytes at ``pos``, offset of the oldest retained byte, closed)."""
        with self._lock:
            first = self._first()
            if pos < first or pos >= self._end:
                return b"", first, self._closed
            i = bisect.bisect_right(self._starts, pos, self._head) - 1
            skip = pos - self._starts[i]
            out: list[bytes] = []
            need = size
            while need > 0 and i < len(self._lines):
                chunk = self._lines[i][skip : skip + need]
                out.append(chunk)
                need -= len(chunk)
                skip = 0
                i += 1
            return b"".join(out), first, self._closed

    def _ready(self, pos: int) -> bool:
        with self._lock:
            return self._closed or pos < self._end

    def _subscribe(
        self, pos: int, token: trio.lowlevel.TrioToken, wake: Callable[[], None]
    ) -> int | None:
        """Call ``wake`` (in trio, once) at the next line; None: there is one already."""
        with self._lock:
            if self._closed or pos < self._end:
                return None
            self._next_waiter += 1
            self._waiters[self._next_waiter] = (token, wake)
            return self._next_waiter

    def _unsubscribe(self, key: int) -> None:
        with self._lock:
            self._waiters.pop(key, None)


def _wake(waiters: list[_Waiter]) -> None:
    for token, wake in waiters:
        try:
            token.run_sync_soon(wake)
        except trio.RunFinishedError:
            pass


class _StreamHandle(Handle):
    def __init__(
        self, log: EventLog, caller: Caller, writer: Callable[[bytes], None] | None = None
    ) -> None:
        self._log = log
        self._writer = writer
        # Log offset minus file offset: grows when this reader skips lines
        # that were dropped before it read them.
        self._shift = 0
        self._next = log._read(0, 0)[1]
        self._tid = caller.pid
        self._tgid = _procfs.thread_group(caller.pid) if caller.pid else None
        self._fd_hint: int | None = None
        self._poll_key: int | None = None
        self._released = False
        self._started = False

    async def read(self, off: int, size: int) -> bytes:
        while True:
            pos = off + self._shift
            data, first, closed = self._log._read(pos, size)
            if pos < first:
                self._shift += first - pos
                continue
            started, self._started = self._started, True
            if data:
                self._next = pos + len(data)
                return data
            if closed or self._released or not started:
                # A descriptor whose very first read is at the end (a log
                # still empty, or an lseek to SEEK_END) gets end of file, as
                # from a regular file: GNU tail reads such a file to end of
                # file before it starts following (tail_lines() uses
                # pipe_lines() when the offset is not below st_size).
                return b""
            if self._nonblocking():
                raise ExportError(errno.EAGAIN)
            await self._wait(pos)

    async def write(self, off: int, data: bytes) -> int:
        if self._writer is None:
            raise ExportError(errno.EBADF)
        self._writer(data)
        return len(data)

    def truncate(self, size: int) -> None:
        # O_TRUNC of `echo text > file`: nothing to cut in a stream.
        if size != 0 or self._writer is None:
            raise ExportError(errno.EPERM)

    async def _wait(self, pos: int) -> None:
        event = trio.Event()
        key = self._log._subscribe(pos, trio.lowlevel.current_trio_token(), event.set)
        if key is None:
            return
        try:
            while not self._released:
                with trio.move_on_after(_CHECK_INTERVAL):
                    await event.wait()
                    return
                if self._interrupted():
                    # What a C filesystem answers to FUSE_INTERRUPT: the
                    # reader's read(2) fails with EINTR and its signal is
                    # delivered (a killed reader can then exit).
                    raise ExportError(errno.EINTR)
        finally:
            self._log._unsubscribe(key)

    def _interrupted(self) -> bool:
        if not self._tid:
            return False
        pending = _procfs.signal_pending(self._tid)
        if pending is None and self._tgid is not None:
            pending = _procfs.signal_pending(self._tgid)
        return bool(pending)

    def _nonblocking(self) -> bool:
        # GNU tail -f sets O_NONBLOCK on a regular file and reads to end of
        # file at each poll: it must get EAGAIN there, not wait (it only
        # flushes its output between polls).
        mnt_id = _mount.CURRENT.mnt_id
        if not self._tid or mnt_id is None:
            return False
        for tid in (self._tid, self._tgid):
            if tid is None:
                continue
            nonblocking, fd = _procfs.descriptor_nonblocking(tid, self.ino, mnt_id, self._fd_hint)
            if fd >= 0:
                self._fd_hint = fd
                return nonblocking
        return False

    async def release(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        self._released = True
        if self._poll_key is not None:
            self._log._unsubscribe(self._poll_key)

    def poll(self, notify: Callable[[], None]) -> int:
        if self._log._ready(self._next):
            return _READABLE
        if self._poll_key is not None:
            self._log._unsubscribe(self._poll_key)
        self._poll_key = self._log._subscribe(
            self._next, trio.lowlevel.current_trio_token(), notify
        )
        return _READABLE if self._poll_key is None else 0


class StreamFile(FileNode):
    """A read-only file following an :class:`EventLog`, like a pipe per reader.

    Each open descriptor reads from the oldest line still kept, gets every
    line from there on, and at the end waits (without holding up other
    requests) until a line is appended: ``cat`` and ``tail -f`` follow it.
    A reader that falls behind the log's bound skips ahead to the oldest
    kept line, and from then on its offsets are off by what it skipped:
    fine for sequential readers, but a reader that trusts st_size and
    reads back from it past what is kept (``tail -n N`` with more lines
    than the log keeps, or a log bound below tail's 8 KiB block) finds
    fewer bytes than st_size promised and waits for the next line.

    A waiting read ends with EINTR when its reader gets a signal (so
    Ctrl-C works), with EAGAIN when the descriptor is non-blocking (what
    ``tail -f`` expects of a regular file), and with end of file once the
    log is closed.  A descriptor's first read never waits: at the end of
    the log (nothing logged yet, or after an lseek to the end) it gets end
    of file, as ``tail -f`` needs there; so ``cat`` started before the
    first line ends at once instead of following.

    ``write``: the file is also writable (mode 0644, a device's other
    direction: ``dev/ttyS0``); the bytes of each write(2) go to
    ``write(data)`` as they come, which must not block.  Without it,
    opening for writing gives EACCES.
    """

    def __init__(self, log: EventLog, *, write: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self._log = log
        self._write = write

    def _attrs(self) -> Attrs:
        size, mtime_ns = self._log._size()
        mode = 0o444 if self._write is None else 0o644
        return self._base_attrs(stat.S_IFREG | mode, size=size, mtime_ns=mtime_ns)

    def _open(self, flags: int, caller: Caller) -> Handle:
        if access_mode(flags)[1] and self._write is None:
            raise ExportError(errno.EACCES)
        return _StreamHandle(self._log, caller, self._write)

    def _setattr(self, changes: SetAttr, handle: Handle | None) -> None:
        if changes == SetAttr(size=0) and self._write is not None:
            return  # O_TRUNC before the bytes come
        super()._setattr(changes, handle)
