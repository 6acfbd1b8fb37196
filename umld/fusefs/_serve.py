"""Mounting, serving and unmounting the export; cleaning up after a crash.

Mount options, and why:

``default_permissions``
    The kernel checks every access against the modes and owners we report
    (fuse(8)).  For the host tree these are the host's own, so a caller
    gets exactly what it would get on the host; without the option the
    daemon's credentials would be everyone's.  Root passes these checks
    as it does anywhere, which is why the nodes refuse what must be
    refused even to root (writing a read-only file) themselves in open().
``allow_other`` (only when run as root)
    Lets other users' monitors use the mount, within the permissions
    above.  A non-root user may only pass it with ``user_allow_other`` in
    /etc/fuse.conf, so it is not asked for then: the mount is then the
    mounting user's alone.
``nosuid``, ``nodev``
    libfuse's defaults, asked for all the same: a set-user-ID file the
    guest made never runs with its owner's rights on the host, and no
    device node of the guest's tree is the host's device (the host tree
    does not even show them as devices: see _hosttree).
``fsname``
    What mount(8) and /proc/self/mountinfo show as the source.

libfuse 3 sets max_write to 1 MiB and negotiates max_pages to match, and
reads are not limited below that (max_read defaults to unlimited; the
FUSE 2 option big_writes is the default in FUSE 3 and no longer exists),
so requests are as large as the kernel allows without further options.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable

import pyfuse3
import trio

from umld.errors import UmldError, get_logger
from umld.fusefs import _mount, _sockets
from umld.fusefs._node import Node
from umld.fusefs._ops import ExportOperations

_log = get_logger("umld.fusefs")

# pyfuse3 serves each request in a task and starts another one when none
# is idle, up to this many.  A stream read waiting for new lines keeps its
# task, so this bounds the readers that may wait at once (pyfuse3's own
# default of 99 is low for that).
_MAX_WORKERS = 1000

# How long clean_stale_mount() waits for stat(2) of a live mount.
_STAT_TIMEOUT = 2.0


def _canonical(mountpoint: str) -> str:
    """Absolute, symlink-free path of ``mountpoint``, without touching it.

    Only its parent is resolved: the mountpoint itself may be a stale
    mount (stat gives ENOTCONN) or our own (stat would deadlock).
    """
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _unescape(field: str) -> str:
    # proc(5): mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fuse_mount_at(path: str) -> tuple[int, int] | None:
    """(st_dev, mount id) of the topmost FUSE mount at ``path``, from mountinfo.

    Read from /proc/self/mountinfo (proc(5)) rather than by stat(2): the
    path may be a stale mount, or our own.
    """
    found: tuple[int, int] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:
                    sep = fields.index("-", 6)
                except ValueError:
                    continue
                if _unescape(fields[4]) != path or not fields[sep + 1].startswith("fuse"):
                    continue
                major, _, minor = fields[2].partition(":")
                found = (os.makedev(int(major), int(minor)), int(fields[0]))
    except OSError:
        return None
    return found


def clean_stale_mount(mountpoint: str) -> bool:
    """Lazily unmount a FUSE mount at ``mountpoint`` whose daemon is dead.

    A daemon killed without unmounting leaves its mount behind, and every
    access to it fails with ENOTCONN ("Transport endpoint is not
    connected") until it is unmounted; ``fusermount3 -u -z`` does that.
    Returns True if a stale mount was removed.  A live mount is left
    alone (its stat is answered within a moment), and so is any path that
    is not a FUSE mountpoint.  Call this before :func:`serve`, never while
    serving at ``mountpoint`` from this process.
    """
    path = _canonical(mountpoint)
    if fuse_mount_at(path) is None:
        return False
    # stat(2) of a mount whose daemon is alive but stuck would wait for it
    # forever: ask from a thread we can stop waiting for.
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            os.stat(path)
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    prober = threading.Thread(target=probe, name="umld-fusefs-stat", daemon=True)
    prober.start()
    prober.join(_STAT_TIMEOUT)
    if not outcome:
        _log.warning("fusefs: %s is a FUSE mount that does not answer; left alone", path)
        return False
    err = outcome[0]
    if not isinstance(err, OSError) or err.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
        return False
    try:
        done = subprocess.run(
            ["fusermount3", "-u", "-z", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UmldError(f"cannot unmount the stale mount at {path}: {e}") from None
    if done.returncode != 0:
        why = done.stderr.strip() or f"fusermount3 exited with status {done.returncode}"
        raise UmldError(f"cannot unmount the stale mount at {path}: {why}")
    _log.info("fusefs: removed a stale mount at %s", path)
    return True


def fuse_unusable() -> str | None:
    """Why this process cannot mount a FUSE file system, or None.  Asked
    before libfuse, which says only "fuse: failed to open /dev/fuse" on
    stderr and "fuse_session_mount failed": the device (fuse(4)), and for
    a user other than root the set-user-ID helper fusermount3 that mounts
    for it (fusermount3(1)).  os.access checks the real ids, which are
    umld's."""
    if not os.path.exists("/dev/fuse"):
        return "the kernel has no FUSE (no /dev/fuse: modprobe fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "FUSE needs /dev/fuse readable and writable by you (Debian's is mode 0666)"
    if os.geteuid() != 0 and not (
        shutil.which("fusermount3") or os.path.exists("/usr/bin/fusermount3")
    ):
        return "FUSE needs fusermount3 for a user other than root (Debian package fuse3)"
    return None


#: Seconds the end of an export waits for files open for writing.
DRAIN_TIMEOUT = 1.0


async def drain(timeout: float = DRAIN_TIMEOUT) -> None:
    """Waits until no file of the export is open for writing, ``timeout``
    at most.  The end of a machine's export calls it before it cancels
    serve(): a write whose effect ends the machine (``echo Enter >
    ui/keys`` that ends its program) then gets the answers of its write
    and close(2), not the ENOTCONN or ECONNABORTED of the unmount (3 of
    9 and 5 of 12 runs of tests/ui/test_ui.py::test_program_exit on a
    loaded host before this; 0 of 12 after).
    A writer that keeps its file open delays the end by ``timeout``."""
    with trio.move_on_after(timeout):
        while _mount.CURRENT.writers > 0:
            await trio.sleep(0.002)


async def serve(
    root: Node,
    mountpoint: str,
    *,
    fsname: str,
    ready: Callable[[], None] | None = None,
    refuse: Callable[[int], bool] | None = None,
) -> None:
    """Mount ``root`` at ``mountpoint`` and serve it until cancelled or unmounted.

    ``refuse(tid)``, when given, is asked about the thread behind every
    request that names one (its id in our pid namespace, fuse_req_ctx(3))
    and true means EACCES: umld closes the export to the guest's own
    threads, whatever the guest's mount table shows it.  It runs in
    every request: a dictionary lookup, not a read of /proc.

    Runs inside the caller's trio run (pyfuse3.init, then pyfuse3.main)
    and always unmounts on the way out (pyfuse3.close(unmount=True)), on
    cancellation too.  ``ready`` is called once the mount exists.  One
    mount per process (a pyfuse3 limit).  Raises UmldError if mounting
    fails (clean_stale_mount() first if a killed daemon may have left one).

    While serving, this process must never access ``mountpoint`` by path
    (nor anything below it): the request would wait for the very loop
    that is waiting for it.
    """
    if "," in fsname or not fsname:
        raise ValueError(f"fsname must be non-empty, without commas: {fsname!r}")
    path = _canonical(mountpoint)
    try:
        st = os.stat(path)
    except OSError as e:
        hint = " (a stale mount: clean_stale_mount())" if e.errno == errno.ENOTCONN else ""
        raise UmldError(f"cannot mount the export at {path}: {e.strerror}{hint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UmldError(f"cannot mount the export at {path}: not a directory")
    missing = fuse_unusable()
    if missing is not None:
        raise UmldError(f"cannot mount the export at {path}: {missing}")

    ops = ExportOperations(root, refuse=refuse)
    options = {f"fsname={fsname}", "default_permissions", "nosuid", "nodev"}
    if os.geteuid() == 0:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, path, options)
    except RuntimeError as e:
        if "fuse_session_new" not in str(e):  # the session exists: free it
            pyfuse3.close(unmount=False)
        raise UmldError(f"cannot mount the export at {path}: {e}") from None
    try:
        found = fuse_mount_at(path)
        if found is None:
            _log.warning("fusefs: the mount at %s is not in mountinfo", path)
        else:
            _mount.CURRENT.dev, _mount.CURRENT.mnt_id = found
        _sockets.BINDER.start(path)
        if ready is not None:
            ready()
        await pyfuse3.main(min_tasks=1, max_tasks=_MAX_WORKERS)
    finally:
        # Bound sockets hold the mount: closed before it goes.
        _sockets.BINDER.stop()
        _mount.CURRENT.dev = _mount.CURRENT.mnt_id = None
        pyfuse3.close(unmount=True)
        ops.close()
