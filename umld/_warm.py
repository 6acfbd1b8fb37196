"""The warm umld: `umld run` without Python's start-up.

A machine starts in a few milliseconds; Python and umld's modules take
~40 ms to start and import.  So the ``umld`` command is a small compiled
front end (c_tracer/front.c) that hands a non-interactive ``umld run`` to
a warm umld of the caller's, started on demand the first time (by the
front end, in the background, while that first run goes the old way):
this process.  It has imported what a run needs, and serves each run by
fork(2): the child becomes what ``umld run`` would have been in the
caller's place, so every run is a process of its own (its own tracer,
its own FUSE mount, its own exit status), as before.

The trade-off is where the run lives: a child of this process, not of the
caller.  What a process inherits from its parent is therefore taken over
from the caller explicitly, while the caller waits (it is blocked in the
front end, alive: its pidfd proves that after the reads):

* from /proc/PID: the command line, the environment (the front end never
  changes its own), the working directory (opened through /proc/PID/cwd,
  so a deleted or unreachable one is the caller's too), the umask, the
  resource limits, the ignored signals, the nice value, the CPU affinity
  and the OOM score adjustment; the blocked signals come in the request
  (the front end blocks some while it asks);
* its standard descriptors, passed over the socket (SCM_RIGHTS);
* what cannot be set per run must already be equal, or the run goes cold
  (the front end then runs Python's umld itself, exactly as before):
  every namespace, the cgroups, every uid, gid and supplementary group,
  the capability sets, no_new_privs, the seccomp state, the personality,
  the LSM label, and this umld's own code (a changed module, C extension
  or sandbox binary since this process started means a newer umld: it
  answers "cold" and exits).  The front end also names the socket by a
  hash of most of these, so that each context gets a warm umld of its own.
* A caller with a terminal on any standard descriptor always runs cold:
  the guest is put in the foreground of the caller's terminal, and job
  control works only from the caller's session.  So does a systemd
  unit's process (INVOCATION_ID): the unit's main process must be the run.

Signals sent to the front end (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1,
SIGUSR2, SIGALRM, SIGWINCH, SIGCONT) are relayed to the run; the front end
ends with the run's exit status, or by the signal that ended it.  SIGKILL
of the front end (its connection hangs up) kills the run, whose guest then
dies with its tracer (PTRACE_O_EXITKILL), as a killed umld's does; the run
has this process's death as its own parent-death signal.  What stays
different: SIGSTOP and SIGTSTP stop the front end, not the run.

Only the user's own processes reach the socket (a directory of the user's,
mode 0700, and SO_PEERCRED checked); it exits after IDLE seconds without
a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import sys
import time

from umld._peer import _exited, _ns, _pidfd, credentials
from umld.core import procfs

#: Seconds without a run before the warm umld exits.
IDLE = 600.0

#: What must be the caller's as it is ours (see the module docstring).
NAMESPACES = ("mnt", "net", "pid", "user", "uts", "ipc", "cgroup", "time")
STATUS_FIELDS = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
    "NoNewPrivs", "Seccomp", "Seccomp_filters",
)  # fmt: skip

#: /proc/PID/limits' names, in resource(2)'s order of RLIMIT_* numbers.
LIMITS = (
    "Max cpu time", "Max file size", "Max data size", "Max stack size",
    "Max core file size", "Max resident set", "Max processes", "Max open files",
    "Max locked memory", "Max address space", "Max file locks", "Max pending signals",
    "Max msgqueue size", "Max nice priority", "Max realtime priority", "Max realtime timeout",
)  # fmt: skip
RLIM_INFINITY = 0xFFFFFFFFFFFFFFFF


def _preload() -> None:
    """Import what a run needs (the point of this process)."""
    import ctypes  # noqa: F401  (the child's prctl)

    import umld.cli
    import umld.core.host
    import umld.core.machine

    with contextlib.suppress(ImportError):  # --mount's (the export extra)
        import umld.fusefs
    from umld.core import syscalls
    from umld.core.machine import Config, features
    from umld.tracer import ptrace_c  # noqa: F401

    umld.cli.command_parser().parse_args(["run", "--", "true"])  # and its patterns
    # The filter of a machine with the default settings (the usual run).
    syscalls.machine_filter(features(live=False, vcpus=None, cfg=Config()))
    _import_what_a_run_imports()


def _import_what_a_run_imports() -> None:
    """A run imports more as it goes (modules umld imports where they are
    first needed): one machine of /bin/true, run in a child, names them,
    and they are imported here, once (a child, because a run starts
    threads, and this process must fork with one)."""
    import importlib

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            from umld import cli

            cli.main(["run", "--", "true"])
            os.write(write_end, "\n".join(sorted(sys.modules)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        names = f.read().decode().split()
    os.waitpid(pid, 0)
    for name in names:
        if name not in sys.modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)


def _code_files() -> dict[str, int]:
    """Every file of umld's code this process runs, with its mtime."""
    from umld.core.sandbox import SANDBOX

    out: dict[str, int] = {}
    paths = [getattr(m, "__file__", None) for n, m in list(sys.modules.items())
             if n == "umld" or n.startswith("umld.")]  # fmt: skip
    for path in [*paths, SANDBOX]:
        if path:
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime_ns
    return out


def _stale(files: dict[str, int]) -> bool:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b"?"


def _limits(pid: int | str) -> list[tuple[int, int]]:
    """(soft, hard) of every resource, RLIMIT_* order."""
    found: dict[str, tuple[int, int]] = {}
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            name = line[:26].strip()
            soft, hard = line[26:47].split()[0], line[47:68].split()[0]

            def value(text: str) -> int:
                return RLIM_INFINITY if text == "unlimited" else int(text)

            found[name] = (value(soft), value(hard))
    return [found[name] for name in LIMITS]


class Job:
    """What the run takes over from the caller, read before the fork."""

    def __init__(self, pid: int, blocked: int) -> None:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            self.argv = [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = [e.partition(b"=") for e in f.read().split(b"\0") if b"=" in e]
        self.env = {os.fsdecode(k): os.fsdecode(v) for k, _, v in raw}
        self.cwd = os.open(f"/proc/{pid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        status = procfs.status(pid)
        self.umask = int(status["Umask"], 8)
        self.ignored = int(status["SigIgn"], 16)
        self.blocked = blocked
        self.limits = _limits(pid)
        with open(f"/proc/{pid}/stat", "rb") as f:
            self.nice = int(f.read().rsplit(b")", 1)[1].split()[16])
        self.cpus = os.sched_getaffinity(pid)
        self.oom = int(_read(f"/proc/{pid}/oom_score_adj") or b"0")

    def refusal(self) -> str | None:
        """What we could not make ours (an unprivileged process cannot
        raise a hard limit, its priority, or lower its OOM adjustment)."""
        if os.geteuid() == 0:
            return None
        import resource

        for number, (_, hard) in enumerate(self.limits):
            mine = resource.getrlimit(number)[1]
            if mine != resource.RLIM_INFINITY and (hard == RLIM_INFINITY or hard > mine):
                return f"limit {LIMITS[number]} is above ours"
        if self.nice < os.getpriority(os.PRIO_PROCESS, 0):
            return "nice value below ours"
        if self.oom < int(_read("/proc/self/oom_score_adj") or b"0"):
            return "oom_score_adj below ours"
        return None

    def apply(self) -> None:
        """In the child: become the caller's (see the module docstring)."""
        import resource

        os.fchdir(self.cwd)
        os.close(self.cwd)
        os.umask(self.umask)
        for number, (soft, hard) in enumerate(self.limits):
            soft = resource.RLIM_INFINITY if soft == RLIM_INFINITY else soft
            hard = resource.RLIM_INFINITY if hard == RLIM_INFINITY else hard
            if resource.getrlimit(number) != (soft, hard):
                resource.setrlimit(number, (soft, hard))
        if os.getpriority(os.PRIO_PROCESS, 0) != self.nice:
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)
        if os.sched_getaffinity(0) != self.cpus:
            os.sched_setaffinity(0, self.cpus)
        if int(_read("/proc/self/oom_score_adj") or b"0") != self.oom:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(self.oom))
        os.environ.clear()
        os.environ.update(self.env)
        for signo in range(1, signal.NSIG):
            if signo in (signal.SIGKILL, signal.SIGSTOP) or 32 <= signo < signal.SIGRTMIN:
                continue
            if self.ignored >> (signo - 1) & 1:
                signal.signal(signo, signal.SIG_IGN)
            elif signo == signal.SIGINT:
                signal.signal(signo, signal.default_int_handler)
            elif signo not in (signal.SIGPIPE, signal.SIGXFSZ):
                # (Python ignores those two at every start, a cold umld too.)
                signal.signal(signo, signal.SIG_DFL)
        blocked = {s for s in range(1, signal.NSIG) if self.blocked >> (s - 1) & 1}
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def context_refusal(pid: int) -> str | None:
    """Why the caller ``pid`` is not in our context, or None."""
    for kind in NAMESPACES:
        with contextlib.suppress(FileNotFoundError):
            if _ns(pid, kind) != _ns("self", kind):
                return f"another {kind} namespace"
    if _read(f"/proc/{pid}/cgroup") != _read("/proc/self/cgroup"):
        return "another cgroup"
    theirs, ours = procfs.status(pid), procfs.status("self")
    for key in STATUS_FIELDS:
        if theirs.get(key) != ours.get(key):
            return f"another {key}"
    for name in ("personality", "attr/current"):
        if _read(f"/proc/{pid}/{name}") != _read(f"/proc/self/{name}"):
            return f"another {name}"
    return None


class WarmServer:
    """The accept loop: single-threaded, so that fork(2) is safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.files = _code_files()
        self.runs: dict[int, socket.socket] = {}
        self.by_fd: dict[int, int] = {}
        self.poller = select.poll()
        self.closing = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.ino = os.stat(path).st_ino
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signo, frame: None)
        self.poller.register(self.listener, select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)

    def serve(self) -> None:
        last = time.monotonic()
        while True:
            timeout: float | None = None
            if self.runs:
                last = time.monotonic()  # idle counts from the last run's end
            else:
                if self.closing:
                    return
                left = IDLE - (time.monotonic() - last)
                if left <= 0:
                    return
                timeout = left * 1000
            try:
                events = self.poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self.listener.fileno():
                    self._accept()
                    last = time.monotonic()
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    self._reap()
                elif fd in self.by_fd:
                    # The front end hung up (killed): so does its run.
                    self.poller.unregister(fd)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.by_fd[fd], signal.SIGKILL)
            if self.runs:
                self._reap()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        self.listener.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            peer = credentials(conn)
            if peer.uid != os.geteuid() or peer.pid <= 0:
                return conn.close()
            conn.settimeout(5)
            msg, fds, _, _ = socket.recv_fds(conn, 256, 3)
            words = msg.split()
            if len(fds) != 3 or not words or words[0] != b"run":
                return conn.close()
            blocked = int(words[1], 16) if len(words) > 1 else 0
            pidfd = _pidfd(conn, peer)
            try:
                why = None
                if self.closing or _stale(self.files):
                    why, self.closing = "a newer umld", True
                why = why or context_refusal(peer.pid)
                job = Job(peer.pid, blocked) if why is None else None
                why = why or (job.refusal() if job is not None else None)
                if why is None and _exited(pidfd):
                    why = "the caller is gone"
            finally:
                os.close(pidfd)
            if why is not None or job is None:
                if job is not None:
                    os.close(job.cwd)
                conn.sendall(b"cold\n")
                return conn.close()
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, job)
            os.close(job.cwd)
            conn.sendall(f"pid {pid}\n".encode())
            conn.setblocking(False)
            self.runs[pid] = conn
            self.by_fd[conn.fileno()] = pid
            self.poller.register(conn, select.POLLIN | select.POLLHUP)
        except (OSError, ValueError, KeyError, IndexError):
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self) -> None:
        while self.runs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.runs.pop(pid, None)
            if conn is None:
                continue
            fd = conn.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(fd)
            if os.WIFSIGNALED(status):
                line = f"signal {os.WTERMSIG(status)}\n"
            else:
                line = f"exit {os.waitstatus_to_exitcode(status)}\n"
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.sendall(line.encode())
            conn.close()

    def _child(self, conn: socket.socket, fds: list[int], job: Job) -> None:
        """The run (never returns)."""
        code = 125
        try:
            import ctypes

            os.setsid()
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:
                os._exit(125)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for other in self.runs.values():
                other.close()
            conn.close()
            self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            job.apply()
            sys.argv = ["umld", *job.argv[1:]]
            from umld import cli

            cli.entry()  # exits
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(2, f"umld: the warm start failed: {exc}\n".encode())
        os._exit(code)


def main(argv: list[str]) -> int:
    """``python -m umld _warm SOCKET``: serve until idle."""
    if len(argv) != 1:
        sys.stderr.write("usage: umld _warm SOCKET (started by the umld front end)\n")
        return 2
    path = argv[0]
    os.chdir("/")
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return 0  # another one serves
        raise
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # who serves (tests, umld's user)
    _preload()
    server = WarmServer(path)
    try:
        server.serve()
    finally:
        server.close()
    return 0
