"""The export tree of one machine, and the thread that serves it.

Built only from umld.core's public API (a test enforces it):

    fs/           the guest's file tree as the guest sees it
    config/       one file per setting (value + newline), applied at write
    proc/PID/     status cmdline cwd exe environ fds syscalls ctl, gdb (a Unix
                  socket: gdb's remote protocol for the process)
    events        one line per event; tail -f follows it
    dev/          the machine's I/O-bus devices: ttyS0 (COM1's output, tail -f
                  follows it; a write is the UART's input), post (the last
                  POST code)
    ctl           pause | resume | halt
    status        uptime, processes, trapped syscalls, config
    export/       the guest's /run/umld/export, both ways
    changes/      what the guest wrote over the host's tree (a copy-on-write
                  root); changes/.deleted, what it deleted or replaced
    diff          A/M/D path per change, as umld diff prints it
    metrics.prom  Prometheus text format
    net/interfaces  its own network's interfaces: name, MAC, state, addresses
    net/ports     the host's ports that reach the guest's: published, and
                  each server it listens on (net/forward auto)
    syscalls      the syscall table (generated from it)
    ui/           the machine's own terminal (the tty setting): screen,
                  screen.ansi, cursor, title, size (writable), input,
                  keys, events, scrollback, frame

The tree is served from a thread of its own running trio; the tracer
thread keeps the guest running whatever the export does, so a slow or
stuck reader never stalls the guest.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import Any

import trio

from umld.core import (
    GuestEvent,
    MachineControl,
    NoTerminal,
    SettingError,
    live_keys,
    lookup_table,
)
from umld.errors import UmldError, get_logger
from umld.fusefs import _formats
from umld.fusefs._changes import ChangesRoot
from umld.fusefs._errors import ExportError
from umld.fusefs._hosttree import HostTree
from umld.fusefs._node import Node
from umld.fusefs._ops import forget_entry
from umld.fusefs._serve import clean_stale_mount, drain, serve
from umld.fusefs._sockets import SocketNode
from umld.fusefs._stream import EventLog, StreamFile
from umld.fusefs._synthetic import (
    ControlFile,
    Directory,
    DynamicDirectory,
    InputFile,
    SnapshotFile,
    WritableFile,
)
from umld.fusefs._sys import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

log = get_logger("umld.export")

#: Where guest programs put what they export (created by the sandbox).
GUEST_EXPORT_DIR = b"run/umld/export"

PROCESS_FILES = ("status", "cmdline", "cwd", "exe", "environ", "fds", "syscalls")
#: What only the machine's user (and root) may read, as in /proc (proc(5):
#: environ is 0400, fd/, cwd and exe need ptrace access): the mount of a
#: root machine is open to every user (allow_other).
PRIVATE_FILES = frozenset(("environ", "fds", "cwd", "exe"))


def _setting_file(control: MachineControl, key: str) -> WritableFile:
    def read() -> bytes:
        return (control.get(key) + "\n").encode()

    def apply(data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            control.report(f"{key}: rejected a value that is not UTF-8")
            raise ExportError(errno.EINVAL) from None
        try:
            control.set(key, text)
        except SettingError as exc:
            raise ExportError(errno.EINVAL, str(exc)) from None

    # A setting may apply on the tracer thread, or in the guest's
    # namespaces: it waits, off the export's event loop.
    return WritableFile(read, apply, blocking=True)


def _guarded(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    """A vanished process reads as ENOENT, never a hang or EIO."""

    def generate() -> bytes:
        try:
            return fn()
        except (ProcessLookupError, FileNotFoundError):
            raise ExportError(errno.ENOENT) from None

    return generate


def _interfaces(control: MachineControl) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return _formats.interfaces(control)
        except SettingError as exc:  # not up yet, or gone
            control.report(f"net/interfaces: {exc}")
            raise ExportError(errno.EAGAIN) from None

    return read


def _command(fn: Callable[[str], None]) -> Callable[[str], None]:
    def run(line: str) -> None:
        try:
            fn(line)
        except SettingError as exc:
            raise ExportError(errno.EINVAL, str(exc)) from None
        except ProcessLookupError:
            raise ExportError(errno.ESRCH) from None

    return run


class _ProcessDirs:
    """proc/: one directory per live guest process, kept while it lives
    (the node object is the inode, so the same process keeps its inode)."""

    def __init__(self, control: MachineControl) -> None:
        self.control = control
        self._dirs: dict[int, tuple[int, Directory]] = {}
        # The kernel may keep a process's entry while it lives: its exit
        # event, on the tracer thread, has the export's thread drop it
        # (forget_entry), so a dead process's directory is gone at once
        # for lookups as for listings.  Without a trio run to send that to
        # (a tree built outside one), every lookup asks.
        self._token: trio.lowlevel.TrioToken | None = None
        try:
            self._token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            control.subscribe(self._on_event)

    def _on_event(self, ev: GuestEvent) -> None:
        if ev.kind != "exit" or self._token is None:
            return
        try:
            self._token.run_sync_soon(self._exited, ev.pid)
        except trio.RunFinishedError:
            self._token = None

    def _exited(self, pid: int) -> None:
        known = self._dirs.pop(pid, None)
        if known is not None:
            forget_entry(known[1])

    def _dir(self, pid: int, host_pid: int) -> Directory:
        known = self._dirs.get(pid)
        if known is not None and known[0] == host_pid:
            return known[1]
        c = self.control
        files: dict[str, Node] = {
            "status": SnapshotFile(_guarded(lambda: _formats.process_status(c.process(pid)))),
            "ctl": ControlFile(_command(lambda line: c.control_process(pid, line))),
        }
        for what in PROCESS_FILES[1:]:
            files[what] = SnapshotFile(
                _guarded(lambda w=what: c.process_file(pid, w)),  # type: ignore[misc]
                private=what in PRIVATE_FILES,
            )
        # gdb's remote protocol for the process (umld/core/gdbstub.py):
        # `target remote DIR/proc/PID/gdb`.
        files["gdb"] = SocketNode(
            lambda conn, end: c.gdb_session(pid, conn, end),
            lambda: c.host_pid(pid) == host_pid,
        )
        for f in files.values():
            # The files of a process stay as long as it does, and a read
            # of a vanished one fails at open(2) with ENOENT anyway: the
            # kernel may keep their entries (a monitor's glob of
            # proc/*/status then costs one lookup less per process).
            f.entry_timeout = f.attr_timeout = 1.0
        # Except the socket: each lookup is when it gets its listener.
        files["gdb"].entry_timeout = files["gdb"].attr_timeout = 0.0
        node = Directory(files)
        if self._token is not None:
            # Kept until the exit event drops it (_on_event): a monitor's
            # walk to proc/PID/status then costs no lookup of PID either.
            node.entry_timeout = node.attr_timeout = 1.0
        self._dirs[pid] = (host_pid, node)
        return node

    def list(self) -> dict[str, Node]:
        live = self.control.pids()
        for gone in set(self._dirs) - set(live):
            del self._dirs[gone]
        return {str(pid): self._dir(pid, host) for pid, host in live.items()}

    def lookup(self, name: str) -> Node | None:
        if not name.isdigit():
            return None
        pid = int(name)
        host = self.control.host_pid(pid)
        if host is None:
            return None
        return self._dir(pid, host)


def _syscall_list() -> bytes:
    table = lookup_table("x86_64")
    rows = [
        f"{r.nr}\t{r.name}\t{(r.family.name or '').lower()}\t{r.disposition.value}\t{r.note}\n"
        for r in table
    ]
    return "".join(rows).encode()


def _ui_tree(control: MachineControl) -> Directory:
    """ui/: the machine's own terminal, read and typed into live.  Every
    file is built whole at open from one snapshot of the screen; writes
    wait (in a worker thread) while the program does not read."""
    log_ = EventLog()

    def follow(line: str | None) -> None:
        if line is None:
            log_.close()
        else:
            log_.append(line)

    control.subscribe_terminal(follow)

    def view(fmt: Callable[[Any], bytes]) -> SnapshotFile:
        return SnapshotFile(lambda: fmt(control.terminal_snapshot()))

    def typing(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            try:
                fn(data)
            except SettingError as exc:
                raise ExportError(errno.EINVAL, str(exc)) from None
            except NoTerminal:
                raise ExportError(errno.EIO, "the program's terminal is closed") from None

        return write

    def resize(data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = "(not UTF-8)"
        try:
            control.resize_terminal(text)
        except SettingError as exc:
            raise ExportError(errno.EINVAL, str(exc)) from None

    tree = Directory(
        {
            "screen": view(_formats.ui_screen),
            "screen.ansi": view(_formats.ui_ansi),
            "cursor": view(_formats.ui_cursor),
            "title": view(_formats.ui_title),
            "size": WritableFile(lambda: _formats.ui_size(control.terminal_snapshot()), resize),
            "frame": view(_formats.ui_frame),
            "scrollback": SnapshotFile(
                lambda: _formats.ui_scrollback(control.terminal_scrollback())
            ),
            "input": InputFile(typing(control.type_input), blocking=True),
            "keys": InputFile(typing(control.type_keys), blocking=True),
            "events": StreamFile(log_),
        }
    )
    # The files stay as long as the terminal does and their content is
    # made at open: the kernel may keep their lookups and attributes for a
    # second (a reader polling ui/screen then costs two requests less per
    # read; a machine's end makes every open fail with ENOENT anyway).
    for name in ("screen", "screen.ansi", "cursor", "title", "frame", "scrollback"):
        node = tree.lookup_child(name)
        node.entry_timeout = node.attr_timeout = 1.0
    tree.entry_timeout = 1.0
    return tree


def _dev_tree(control: MachineControl) -> Directory:
    """dev/: the devices of the machine's I/O bus (umld.core.devices)."""
    serial = EventLog()
    # What COM1 transmitted before (the daemon builds a tree at its first
    # lookup), then each byte as the guest writes it.
    control.uart.follow(serial.write)

    def receive(data: bytes) -> None:
        # Never waits: what the receive FIFO cannot take is an overrun.
        control.uart.receive(data)

    def post() -> bytes:
        last = control.post.last
        return b"" if last is None else f"{last:#04x}\n".encode()

    return Directory(
        {
            "ttyS0": StreamFile(serial, write=receive),
            "post": SnapshotFile(post),
        }
    )


def build_tree(control: MachineControl, events: EventLog) -> Directory:
    """The export tree of one machine."""

    def guest_export_dir() -> int:
        root = control.guest_root()
        try:
            return openat2(
                root,
                GUEST_EXPORT_DIR,
                os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                0,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
        finally:
            os.close(root)

    config = Directory()
    subdirs: dict[str, Directory] = {}
    for key in live_keys():
        group, _, leaf = key.rpartition("/")
        parent = config
        if group:
            parent = subdirs.get(group) or config.add(group, Directory())
            subdirs[group] = parent
        parent.add(leaf, _setting_file(control, key))

    procs = _ProcessDirs(control)
    procs_dir = DynamicDirectory(procs.list, lookup=procs.lookup)
    # proc/ itself stays for the machine's life (a walk to proc/PID/status
    # then asks nothing of it).
    procs_dir.entry_timeout = procs_dir.attr_timeout = 1.0
    tree = Directory(
        {
            "fs": HostTree(control.guest_root, creator=control.guest_ids_on_host),
            "config": config,
            "proc": procs_dir,
            "events": StreamFile(events),
            "ctl": ControlFile(_command(control.control_machine), blocking=True),
            "status": SnapshotFile(lambda: _formats.status(control)),
            "export": HostTree(guest_export_dir),
            "metrics.prom": SnapshotFile(lambda: _formats.metrics(control)),
            "syscalls": SnapshotFile(_syscall_list),
            "dev": _dev_tree(control),
        }
    )
    if control.net_mode != "host" and not control.net_mode.startswith("ns:"):
        # Its own network namespace's interfaces (not the host's).
        tree.add(
            "net",
            Directory(
                {
                    "interfaces": SnapshotFile(_interfaces(control)),
                    "ports": SnapshotFile(lambda: _formats.ports(control)),
                }
            ),
        )
    if control.has_terminal:
        tree.add("ui", _ui_tree(control))
    if control.copy_on_write:
        tree.add("changes", ChangesRoot(control))
        tree.add("diff", SnapshotFile(lambda: _formats.diff(control.changes())))
    # These entries stay for the machine's life and their content is made
    # at open: the kernel may keep their lookups for a second (a monitor's
    # `cat DIR/*/status` then costs one request less per file).
    for name in ("status", "metrics.prom", "syscalls", "ctl"):
        node = tree.lookup_child(name)
        node.entry_timeout = node.attr_timeout = 1.0
    # The tree's own entry (DIR/NAME in a daemon's export) is looked up
    # every time: a machine stopped and started again under its name is a
    # new tree, and a kept entry would lead to the old one for a second.
    # Nor are its attributes kept: a stat of a dead export's root must
    # meet the dead connection (ENOTCONN), not a kept answer.
    tree.entry_timeout = 0.0
    return tree


class ExportThread:
    """Serves one machine's tree from a thread of its own.

    ``start`` returns once the tree is mounted (the guest's first
    instruction comes after); ``stop`` unmounts and joins.
    """

    def __init__(self, control: MachineControl, mountpoint: str, *, name: str) -> None:
        self.control = control
        self.mountpoint = os.path.abspath(mountpoint)
        self.name = name
        self.events = EventLog()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="umld-export", daemon=True)
        self._created_dir = False

    def start(self, timeout: float = 15.0) -> None:
        clean_stale_mount(self.mountpoint)
        if not os.path.isdir(self.mountpoint):
            try:
                os.makedirs(self.mountpoint, mode=0o755)
            except OSError as exc:
                raise UmldError(f"umld: cannot create {self.mountpoint}: {exc.strerror}") from None
            self._created_dir = True
        self.control.subscribe(self._on_event)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            if isinstance(self._error, UmldError):  # serve's, which names the export
                raise UmldError(f"umld: {self._error}")
            why = self._error or "timed out"
            raise UmldError(f"umld: cannot mount the export at {self.mountpoint}: {why}")

    def _on_event(self, ev: GuestEvent) -> None:
        self.events.append(ev.line())

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._cancel = scope
                root = build_tree(self.control, self.events)
                await serve(
                    root,
                    self.mountpoint,
                    fsname=f"umld-{self.name}",
                    ready=self._ready.set,
                    # A machine never sees its own export, even where
                    # its mount table would show it.
                    refuse=self.control.is_guest_thread,
                )

        try:
            trio.run(main)
        except BaseException as exc:  # reported by start(), or logged
            self._error = exc
            if self._ready.is_set():
                log.error("the export at %s failed: %s", self.mountpoint, exc)
            self._ready.set()

    def stop(self) -> None:
        self.events.close()
        token, scope = self._token, self._cancel
        if token is not None and scope is not None and self._thread.is_alive():
            try:
                trio.from_thread.run(drain, trio_token=token)
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass
        if self._thread.is_alive():
            self._thread.join(10)
        if self._created_dir:
            try:
                os.rmdir(self.mountpoint)
            except OSError:
                pass
