"""Unix sockets in the export: ``proc/PID/gdb``.

gdb connects to ``target remote PATH`` as to a Unix socket when stat(2)
of PATH says S_IFSOCK (gdb/serial.c, serial_open; gdb/ser-uds.c connects
with PATH itself as sun_path, so PATH must be shorter than 108 bytes).
connect(2) of a path finds the socket bound on the path's *inode*
(unix(7); unix_find_bsd() in net/unix/af_unix.c looks the socket up by
the inode the path walk ends at), and only bind(2) puts a socket on an
inode: it makes the node with mknod(2), which for a FUSE mount is our own
MKNOD request.  So a socket node of the export is made like this:

* the node (:class:`SocketNode`, mode S_IFSOCK 0600, owned by the user
  running umld) is one object per process, so it keeps one inode number;
* when its owner (or root) looks it up and it has no listener yet, the
  lookup waits while a helper process (:class:`_Binder`, a child of umld
  that does nothing else) binds a socket at ``MOUNT/.umld-bind/TOKEN``
  and sends the listening descriptor back with SCM_RIGHTS (unix(7));
  the MKNOD of TOKEN, from the helper's pid only, is answered with the
  very node, so the socket is bound on its inode.  The bind happens in
  a directory of its own: the lookup in progress holds the lock of the
  process's directory, which a mknod there would need (a deadlock);
* the lookup then answers with the same node: the kernel finds the
  inode it already has for that node id (the bound socket keeps it, with
  its dentry, until it is closed), and gdb's connect reaches our
  listener.  umld itself never touches the mount by path (its own
  request would wait for itself): only the helper does;
* an accept thread takes the connections (of the machine's user or
  root only: SO_PEERCRED, on top of the mode) and serves each in a
  thread of its own; a listener whose process is gone is closed, and so
  is every listener when the export ends (a bound socket holds its
  mount: the unmount would fail with EBUSY).

Nothing here leaves the export: the socket is inside the mount, and the
helper only binds there.
"""

from __future__ import annotations

import array
import errno
import os
import secrets
import selectors
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import trio

from umld.errors import get_logger
from umld.fusefs._errors import ExportError
from umld.fusefs._node import Attrs, Caller, DirNode, Node

log = get_logger("umld.fusefs")

#: The directory at the mount's root where the helper binds (not listed).
BIND_DIR = b".umld-bind"

#: What serves one connection: (connection, a descriptor that becomes
#: readable when the export ends).
Serve = Callable[[socket.socket, int], None]

# The helper: binds BIND_DIR/TOKEN relative to the mount (chdir there for
# the call only, so that sun_path stays short and the helper never keeps
# the mount busy), listens, and sends the descriptor back.  It ends when
# umld closes its end of the socket pair.
_HELPER = r"""
import array, os, socket, sys
ctl = socket.socket(fileno=int(sys.argv[1]))
while True:
    msg = ctl.recv(8192)
    if not msg:
        break
    mount, name = msg.split(b"\0", 1)
    try:
        os.chdir(mount)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(name)
        finally:
            os.chdir("/")
        s.listen(4)
        fds = array.array("i", [s.fileno()])
        ctl.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        s.close()
    except OSError as exc:
        ctl.send(b"E%d" % (exc.errno or 5))
"""


class SocketNode(Node):
    """A Unix socket of the export, bound at its first lookup by the
    machine's user.  ``serve`` takes each connection; ``alive`` says
    whether what it serves is still there (its listener is closed once
    not)."""

    def __init__(self, serve: Serve, alive: Callable[[], bool]) -> None:
        super().__init__()
        self.serve = serve
        self.alive = alive
        self.listener: socket.socket | None = None

    def _attrs(self) -> Attrs:
        # 0600 and the export's owner: with default_permissions only that
        # user (and root) may connect (connect(2) needs write permission).
        return self._base_attrs(stat.S_IFSOCK | 0o600)

    async def _prepare(self, caller: Caller) -> None:
        if caller.uid not in (0, os.geteuid()) or self.listener is not None:
            return
        if not self.alive():
            raise ExportError(errno.ENOENT)
        await BINDER.bind(self)


class _BindDirectory(DirNode):
    """MOUNT/.umld-bind: where the helper's bind makes its nodes."""

    def __init__(self, binder: _Binder) -> None:
        super().__init__()
        self._binder = binder

    def _attrs(self) -> Attrs:
        return self._base_attrs(stat.S_IFDIR | 0o700)

    def _child(self, name: bytes) -> Node | None:
        return None

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        return ()

    def _mknod(self, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        node = self._binder.pending.get(name)
        if node is None or not stat.S_ISSOCK(mode) or caller.pid != self._binder.helper_pid:
            raise ExportError(errno.EPERM)
        return node


class _Binder:
    """The helper process, the bind directory and the accept thread of
    the one mount of this process (pyfuse3 serves one)."""

    def __init__(self) -> None:
        self.directory = _BindDirectory(self)
        self.pending: dict[bytes, SocketNode] = {}
        self.helper_pid = -1
        self._mount: bytes | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._lock = trio.Lock()
        self._acceptor: _Acceptor | None = None

    def start(self, mountpoint: str) -> None:
        self._mount = os.fsencode(mountpoint)

    async def bind(self, node: SocketNode) -> None:
        async with self._lock:
            if node.listener is not None:
                return
            if self._mount is None:
                raise ExportError(errno.ENOENT)
            self._ensure_helper()
            ctl = self._ctl
            assert ctl is not None
            token = secrets.token_hex(8).encode()
            self.pending[token] = node
            try:
                ctl.sendall(self._mount + b"\0" + BIND_DIR + b"/" + token)
                fd = await trio.to_thread.run_sync(_receive_fd, ctl)
            finally:
                self.pending.pop(token, None)
            if fd < 0:
                log.warning("cannot make a socket in the export: %s", os.strerror(-fd))
                raise ExportError(errno.EIO)
            listener = socket.socket(fileno=fd)
            node.listener = listener
            if self._acceptor is None:
                self._acceptor = _Acceptor()
            self._acceptor.add(node)

    def _ensure_helper(self) -> None:
        if self._helper is not None and self._helper.poll() is None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        finally:
            theirs.close()
        self._ctl = ours
        self.helper_pid = self._helper.pid

    def stop(self) -> None:
        """The export ends: every listener closed (before the unmount),
        every session told, the helper gone."""
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._helper is not None:
            try:
                self._helper.wait(5)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait()
            self._helper = None
        self.helper_pid = -1
        self._mount = None


def _receive_fd(ctl: socket.socket) -> int:
    """The helper's answer: a descriptor, or -errno."""
    fds = array.array("i")
    try:
        msg, anc, _flags, _addr = ctl.recvmsg(64, socket.CMSG_SPACE(fds.itemsize))
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if msg == b"ok" and fds:
        return fds[0]
    for fd in fds:
        os.close(fd)
    try:
        return -int(msg[1:]) if msg.startswith(b"E") else -errno.EIO
    except ValueError:
        return -errno.EIO


class _Acceptor:
    """One thread accepting on every listener; one thread per session."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Readable (EOF) once the export ends: every session stops.
        self._end_r, self._end_w = os.pipe2(os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._nodes: list[SocketNode] = []
        self._sessions: list[threading.Thread] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="umld-sockets", daemon=True)
        self._thread.start()

    def add(self, node: SocketNode) -> None:
        with self._lock:
            self._nodes.append(node)
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        registered: set[int] = set()
        while not self._stopping:
            with self._lock:
                nodes = list(self._nodes)
            for node in nodes:
                listener = node.listener
                if listener is None:
                    continue
                if not node.alive():
                    self._close(node, registered)
                elif listener.fileno() not in registered:
                    self._sel.register(listener, selectors.EVENT_READ, node)
                    registered.add(listener.fileno())
            for key, _ in self._sel.select(1.0):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._accept(key.data)
        with self._lock:
            nodes, self._nodes = list(self._nodes), []
        for node in nodes:
            self._close(node, registered)

    def _close(self, node: SocketNode, registered: set[int]) -> None:
        listener, node.listener = node.listener, None
        if listener is None:
            return
        if listener.fileno() in registered:
            registered.discard(listener.fileno())
            self._sel.unregister(listener)
        listener.close()
        with self._lock:
            if node in self._nodes:
                self._nodes.remove(node)

    def _accept(self, node: SocketNode) -> None:
        listener = node.listener
        if listener is None:
            return
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):
            conn.close()  # the mode says so already; not a rule to rely on one check for
            return

        def session() -> None:
            try:
                node.serve(conn, self._end_r)
            except Exception:
                log.exception("a session on an export socket failed")
            finally:
                conn.close()

        t = threading.Thread(target=session, name="umld-gdb", daemon=True)
        self._sessions = [s for s in self._sessions if s.is_alive()]
        self._sessions.append(t)
        t.start()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        os.close(self._end_w)  # every session sees EOF and detaches
        for t in self._sessions:
            t.join(5)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w, self._end_r):
            os.close(fd)


#: The binder of this process's mount (serve() starts and stops it).
BINDER = _Binder()
