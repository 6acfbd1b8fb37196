"""Disk images of machines run by an ordinary user, served by fuse2fs.

The kernel mounts an ext4 image only for root in the initial user
namespace (a loop device, then ext4, neither of which a user namespace
may mount); FUSE it mounts for anyone who owns the mount namespace
(fuse(4), user_namespaces(7)).  So an ordinary user's ``--disk`` image,
and a named machine's home, are served by ``fuse2fs`` (e2fsprogs' ext4 in
user space, Debian package fuse2fs), and root's stay on loop devices.

How one image is served:

1. umld creates the image on first use, as for root (``mkfs.ext4``, its
   root directory owned by id 0: the one id of the stage's user
   namespace, which is the user, and the guest's uid inside), locks it
   (flock) and makes an empty host directory for it in the machine's
   runtime directory.
2. The sandbox's stage asks on a socket pair ("helper FD", "fusedisk
   IMAGE GUEST DIR"), once its own user and mount namespaces are made.
3. A thread of umld's starts ``umld-sandbox serve STAGE UMLD -- fuse2fs
   IMAGE DIR -f``: it joins the stage's user and mount namespaces, chroots
   to the host's tree there and runs fuse2fs, whose mount therefore lands
   in the stage's namespace only (the host never sees it).  fuse2fs is
   not traced and has no seccomp filter: it is no guest process, the
   guest kernel neither counts nor kills it, and its calls never stop.
4. The stage waits for the mount (an event, not a delay: poll(2) on its
   mountinfo) or for umld's one line of why fuse2fs ended, and binds the
   mount at GUEST.

The machine's end is the hard part: the guest kernel SIGKILLs every
machine process, but fuse2fs must flush its caches and mark the file
system clean (its ``destroy``), or ``e2fsck`` finds it not cleanly
unmounted.  fuse2fs keeps the stage's mount namespace alive, so its mount
never goes away by itself: once the machine has ended (the stage closed
its socket, MachineFiles.close was called), umld sends it SIGTERM, on
which libfuse leaves its loop, unmounts, and fuse2fs flushes and exits;
after FINISH_TIMEOUT seconds it is killed, and that is logged.

If umld itself is killed (SIGKILL), PTRACE_O_EXITKILL kills the guest
and the stage, but not fuse2fs (it is not traced): its parent-death
signal (PR_SET_PDEATHSIG, set by ``serve``) is SIGTERM, and it ends as
above.  fuse2fs holds the image's lock (the descriptor is passed on), so
the image is free again exactly when it is clean: ``e2fsck -fn`` passes
once the lock can be taken.  A guest's writes that had returned are in
the image; fuse2fs does not use the ext4 journal.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import final

from umld.core.sandbox import serve_argv
from umld.errors import UmldError, get_logger

log = get_logger("umld.fusedisk")

#: Seconds fuse2fs has to flush and exit once its machine has ended.
FINISH_TIMEOUT = 30.0

#: What fuse2fs says on every read-write mount of an image with a journal
#: (every image mkfs.ext4 makes): not a reason for anything.
_NOTICE = "Writing to the journal is not supported."


def needed() -> bool:
    """Whether this process's disk images are served by fuse2fs: the
    kernel's loop device and ext4 are root's alone (an ordinary user may
    mount neither, even in a user namespace of its own)."""
    return os.geteuid() != 0


def fuse2fs_path() -> str | None:
    return shutil.which("fuse2fs") or shutil.which("fuse2fs", path="/usr/sbin:/sbin:/usr/bin")


def check_usable(image: str) -> str:
    """The path of fuse2fs, or UmldError with the one thing missing."""
    path = fuse2fs_path()
    if path is None:
        raise UmldError(
            f"umld: --disk {image}: an ordinary user's disk images are served by fuse2fs, which "
            "is not installed (Debian package fuse2fs)"
        )
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UmldError(
            f"umld: --disk {image}: an ordinary user's disk images need FUSE, and /dev/fuse is "
            "not readable and writable by you"
        )
    return path


def _clean(image: str) -> bool:
    """Whether an ext2/3/4 image says it is clean: s_state (le16 at 0x3A
    of the superblock, at 1024) has EXT2_VALID_FS, which fuse2fs clears
    while it has the image mounted read-write and sets again at its
    unmount (ext2fs(5): "not clean")."""
    try:
        with open(image, "rb") as f:
            f.seek(1024 + 0x38)
            raw = f.read(4)
    except OSError:
        return True
    if len(raw) != 4 or raw[:2] != b"\x53\xef":  # s_magic: not ext2/3/4, fuse2fs says so
        return True
    return bool(int.from_bytes(raw[2:], "little") & 1)


_live_lock = threading.Lock()
_live: set[FuseDisks] = set()


def wait_all(timeout: float = FINISH_TIMEOUT + 5) -> bool:
    """Wait until every fuse2fs this process started has ended (``umld
    run`` before it exits: the next run finds the image free and clean).
    False if one is still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with _live_lock:
        pending = list(_live)
    return all(d.done.wait(max(0.0, deadline - time.monotonic())) for d in pending)


def releasing(image: str) -> threading.Event | None:
    """The event set when this process's fuse2fs of ``image`` (a machine
    that ended, finishing its image) has ended, if there is one."""
    with _live_lock:
        for disks in _live:
            if disks.serves(image):
                return disks.done
    return None


@final
class FuseDisks:
    """The images of one machine that fuse2fs serves, and the helper
    socket its stage asks on.  Any thread."""

    def __init__(self, rundir: str, fuse2fs: str) -> None:
        self._rundir = rundir
        self._fuse2fs = fuse2fs
        #: host directory -> (image, descriptor holding its lock)
        self._served: dict[str, tuple[str, int]] = {}
        # Both close-on-exec (PEP 446); the stage's end is made
        # inheritable for the sandbox alone (stage_fd).
        self._ours, self._stage_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._procs: list[tuple[subprocess.Popen[bytes], str]] = []
        #: Images the stage has bound in the guest's tree.
        self._mounted: set[str] = set()
        #: Set when the machine has ended: fuse2fs may finish.
        self._ended = threading.Event()
        #: Set when every fuse2fs of this machine has ended.
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        with _live_lock:
            _live.add(self)

    def serves(self, image: str) -> bool:
        return any(img == image for img, _ in self._served.values())

    def add(self, image: str, lock_fd: int) -> str:
        """A host directory (new, empty) where fuse2fs is to mount ``image``."""
        if not _clean(image):
            log.warning(
                "disk image %s was not cleanly unmounted (was its fuse2fs killed?); "
                "check it with e2fsck -f when no machine uses it",
                image,
            )
        path = os.path.join(self._rundir, f"disk{len(self._served)}")
        os.mkdir(path, 0o700)
        self._served[path] = (image, lock_fd)
        return path

    def stage_fd(self) -> int:
        """The stage's end of the helper socket, inheritable until start."""
        fd = self._stage_end.fileno()
        os.set_inheritable(fd, True)
        return fd

    def start(self, stage: int) -> None:
        """The sandbox's stage (host pid ``stage``) runs: serve what it
        asks for, from a thread that lives as long as any fuse2fs does
        (the thread that starts a process is its parent for the
        parent-death signal, prctl(2))."""
        self._stage_end.close()
        self._thread = threading.Thread(
            target=self._run, args=(stage,), name="umld-fusedisk", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """The machine has ended (every process of it is gone): fuse2fs
        may finish.  Returns at once; ``done`` is set once it has."""
        self._ended.set()
        if self._thread is None:
            self._stage_end.close()
            self._end()

    # -- the serving thread ---------------------------------------------------------

    def _run(self, stage: int) -> None:
        try:
            with self._ours.makefile("rb") as requests:
                # Until the stage is gone: it holds its end all its life.
                for line in requests:
                    word, _, arg = line.rstrip(b"\n").partition(b" ")
                    path = os.fsdecode(arg)
                    if word == b"mount" and path in self._served:
                        self._serve(stage, path)
                    elif word == b"mounted" and path in self._served:
                        self._mounted.add(self._served[path][0])
                    else:
                        log.warning("disk helper: unknown request %r", line[:200])
            self._ended.wait()
            self._finish()
        except Exception:
            log.exception("the disk helper failed")
        finally:
            self._end()

    def _serve(self, stage: int, path: str) -> None:
        image, lock = self._served[path]
        argv = serve_argv(stage, [self._fuse2fs, image, path, "-f"])
        # Its output goes to a file, not a pipe: killed with umld, a pipe's
        # reader would be gone, and fuse2fs writes its buffered notices at
        # exit, after libfuse has set SIGPIPE back to its default: it would
        # die of SIGPIPE before flushing the image.
        output = path + ".log"
        try:
            out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    # It holds the image's lock until it has flushed it.
                    pass_fds=(lock,),
                    # A group of its own: no Ctrl-C of umld's terminal
                    # reaches it, and it can be killed whole.
                    start_new_session=True,
                )
            finally:
                os.close(out)
        except OSError as exc:
            self._tell_stage(f"cannot start fuse2fs: {exc.strerror}")
            return
        self._procs.append((proc, image))
        threading.Thread(
            target=self._watch, args=(proc, output, image), name="umld-fuse2fs", daemon=True
        ).start()

    def _watch(self, proc: subprocess.Popen[bytes], output: str, image: str) -> None:
        """Waits for fuse2fs to end; says why, when the machine still runs
        (the stage may be waiting for its mount)."""
        status = proc.wait()
        try:
            with open(output, "rb") as f:
                text = f.read().decode(errors="replace")
            os.unlink(output)
        except OSError:
            text = ""
        lines = [
            ln.strip().removeprefix(f"{image}: ")
            for ln in text.splitlines()
            if ln.strip() and _NOTICE not in ln
        ]
        if not self._ended.is_set():
            why = " ".join(lines) or f"fuse2fs ended with status {status}"
            if image in self._mounted:
                log.warning("disk image %s: fuse2fs ended under its machine: %s", image, why)
            else:
                self._tell_stage(why)  # which is waiting for its mount, and says it
        elif status != 0:
            log.warning("disk image %s: fuse2fs ended with status %s: %s", image, status, lines)

    def _tell_stage(self, why: str) -> None:
        try:
            self._ours.sendall((" ".join(why.split()) + "\n").encode())
        except OSError:
            pass  # the stage is gone: nobody is waiting

    def _finish(self) -> None:
        """SIGTERM to each fuse2fs: libfuse leaves its loop, unmounts, and
        fuse2fs flushes the image and marks it clean."""
        for proc, _ in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + FINISH_TIMEOUT
        for proc, image in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "disk image %s: fuse2fs did not finish in %d s and was killed; check the "
                    "image with e2fsck",
                    image,
                    FINISH_TIMEOUT,
                )
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _end(self) -> None:
        self._ours.close()
        for path in [*self._served, self._rundir]:
            try:
                os.rmdir(path)
            except OSError:
                pass  # the runtime directory: while MachineFiles has files there
        with _live_lock:
            _live.discard(self)
        self.done.set()
