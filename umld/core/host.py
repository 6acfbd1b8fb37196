"""Host: the one runtime of umld's machines.

ptrace requests must come from the thread that attached, and a tracer
learns of its tracees' stops through SIGCHLD, which is sent to the whole
process: two tracer threads would steal each other's wake-ups.  So one
process has one tracer thread, and every machine's kernel is driven from
its loop; events go to the kernel that owns the thread they concern.
Other threads talk to it only through :meth:`Host.call` (run a function
there and wait for its result) and :meth:`Host.post` (hand it work).

Every way of running machines is a Host:

* the daemon and the Python API start the loop in a thread of its own
  (:meth:`Host.start`) and run any number of machines;
* ``umld run`` (:class:`umld.core.machine.Machine`) opens the Host on the
  main thread (:meth:`Host.open`), starts its one machine and runs the
  loop there (:meth:`Host.serve`) until the machine ends; the host
  signals it is given (SIGINT, SIGTERM, SIGHUP, SIGQUIT) then go to the
  guest, and the guest may have umld's terminal (:class:`Launch`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TextIO, TypeVar, final

from umld.core import procfs
from umld.core.control import MachineControl
from umld.core.kernel import GuestKernel
from umld.core.machine import Config, features, machine_argv, prepare, uts_for
from umld.core.policy import MachinePolicy
from umld.core.privileged import HLT_POLL
from umld.core.sandbox import (
    DEFAULT_PRIVILEGES,
    SANDBOX,
    MachineFiles,
    Privileges,
    enter_argv,
)
from umld.core.syscalls import lookup_table, machine_filter
from umld.core.terminal import set_foreground, suspend_with_guest
from umld.errors import UmldError, get_logger
from umld.tracer import TracerError, TracerUnavailable, available, open_tracer
from umld.tracer.events import Cloned, Exited, HostSignal, Tid, Wakeup
from umld.tracer.platform import SpawnSpec, TracerPlatform

log = get_logger("umld.host")
#: How often a background loop looks for stops even without SIGCHLD (a
#: thread of an embedding program may take it first).
POLL = 0.05
T = TypeVar("T")


class _Call:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Launch(NamedTuple):
    """How a machine's first process starts: what differs between
    ``umld run`` and a machine of the daemon or the API."""

    #: The guest's environment; None: a login-like one (_guest_env).
    env: Mapping[str, str] | None = None
    #: Its working directory (a guest path); ``cwd_strict``: fail when
    #: the guest has no such directory, else fall back to /.
    cwd: str = "/"
    cwd_strict: bool = False
    #: Whether its settings may change while it runs (an export, a
    #: --config-dir, the daemon, the API): it then traps what they need.
    live: bool = True
    #: A terminal fd whose foreground group the guest becomes (umld run
    #: with a terminal); None: the guest runs in a session of its own.
    tty: int | None = None
    #: The signal mask its first process starts with.
    sigmask: frozenset[int] = frozenset()
    #: Full-trace mode: every syscall stops and is written here.
    trace_output: TextIO | None = None
    #: (columns, rows) of a machine's own terminal (the tty setting) at
    #: its start; None: 80x24.
    terminal_size: tuple[int, int] | None = None
    #: A socket (inheritable) on which the machine's first process, the
    #: machine made, says ``held\n`` and waits for ``g`` before it runs
    #: the command (the OCI runtime's create, then start); None: no wait.
    hold: int | None = None
    #: The first process's groups, capabilities and seccomp filter.
    privileges: Privileges = DEFAULT_PRIVILEGES
    #: A socket (inheritable) connected to someone else's console socket
    #: (an OCI engine's --console-socket): the machine's first process
    #: runs on a terminal of the guest's own devpts, whose master goes
    #: there (SCM_RIGHTS), not to umld; None: no such terminal.
    console: int | None = None


@final
class HostedMachine:
    """A machine run by a :class:`Host`.  Its state changes on the tracer
    thread; the other threads read it."""

    def __init__(self, host: Host, config: Config, argv: Sequence[str], launch: Launch) -> None:
        self.host = host
        self.config = config
        self.argv = list(argv)
        self.launch = launch
        self.name = ""
        #: starting, running, exited or failed (it could not start).
        self.state = "starting"
        #: time.time() of its start and end.
        self.started_at = time.time()
        self.ended_at: float | None = None
        #: The raw wait status of its first process, once it ended.
        self.status: int | None = None
        #: Why its first process could not start: (stage, errno).
        self.spawn_error: tuple[str, int] | None = None
        self.kernel: GuestKernel | None = None
        self.control: MachineControl | None = None
        self.files: MachineFiles | None = None
        self.filter = b""
        self.uid = os.geteuid() if config.uid is None else config.uid
        self.gid = os.getegid() if config.gid is None else config.gid
        self.exited = threading.Event()
        self.on_exit: list[Callable[[HostedMachine], None]] = []
        #: Called with the control once it exists, before the guest runs.
        self.on_control: list[Callable[[MachineControl], None]] = []

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def returncode(self) -> int | None:
        """As subprocess: the exit code, or -N for signal N; None while it runs."""
        return None if self.status is None else procfs.returncode(self.status)

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdio: tuple[int, int, int] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        privileges: Privileges = DEFAULT_PRIVILEGES,
        console: tuple[int, int, int] | None = None,
        on_exit: Callable[[int], None],
    ) -> int:
        """Start ``argv`` inside the running machine (its mounts, identity
        and pid namespace; ``uid``/``gid``/``privileges``: another guest
        identity than the machine's; ``console``: (a socket connected to
        a console socket, columns, rows): it runs on a new terminal of the
        machine's, whose master goes there).  ``stdio`` descriptors become
        its 0, 1, 2; ``on_exit`` gets its raw wait status, on the tracer
        thread.  Returns the host pid of the session: the leader of the
        process group the command starts in (alive until ``on_exit``)."""
        if not argv:
            raise UmldError("umld: no command")
        return self.host.call(
            lambda: self._exec(
                list(argv),
                stdio,
                env,
                cwd,
                on_exit,
                uid=uid,
                gid=gid,
                privileges=privileges,
                console=console,
            )
        )

    def _exec(
        self,
        argv: list[str],
        stdio: tuple[int, int, int] | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        on_exit: Callable[[int], None],
        *,
        uid: int | None = None,
        gid: int | None = None,
        privileges: Privileges = DEFAULT_PRIVILEGES,
        console: tuple[int, int, int] | None = None,
    ) -> int:
        kernel = self.kernel
        if kernel is None or self.state != "running" or kernel.root_status is not None:
            raise UmldError(f"umld: machine {self.name} is not running")
        assert kernel.root_pid is not None
        inherited: list[int] = []
        if stdio is not None:
            # The sandbox inherits these (not close-on-exec) and makes them
            # its child's 0, 1, 2; only the tracer thread spawns, so no
            # other child can inherit them meanwhile.
            inherited = [os.dup(fd) for fd in stdio]
        tty = None
        if console is not None:
            inherited.append(os.dup(console[0]))
            tty = (inherited[-1], console[1], console[2])
        for fd in inherited:
            os.set_inheritable(fd, True)
        ops = enter_argv(
            kernel.root_pid,
            argv,
            uid=self.uid if uid is None else uid,
            gid=self.gid if gid is None else gid,
            cwd=cwd or "/",
            stdio=inherited[:3] if stdio is not None else (),
            cgroups=self.control.cgroups if self.control is not None else (),
            privileges=privileges,
            tty=tty,
        )
        environ = {**_guest_env(self), **(env or {})}
        spec = SpawnSpec(
            path=ops[0],
            argv=ops,
            env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
            seccomp_filter=self.filter,
            new_process_group=True,
            new_session=True,  # never the caller's terminal
        )
        try:
            tid = kernel.start_session(spec, on_exit)
        finally:
            for fd in inherited:
                os.close(fd)
        self.host.adopt(tid, kernel)
        return int(tid)

    def stop(self, grace: float = 10.0) -> None:
        """Ask the machine to end (SIGTERM to its processes, SIGKILL after
        ``grace`` seconds); returns at once."""

        def ask() -> None:
            k = self.kernel
            if k is not None and not k.finished:
                k.termination_grace = grace
                k.request_termination(signal.SIGTERM)

        self.host.call(ask)


def _guest_env(machine: HostedMachine) -> dict[str, str]:
    """A login-like environment (the daemon's and the API's machines)."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": _home_of(machine.uid),
        "TERM": os.environ.get("TERM", "dumb"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def _home_of(uid: int) -> str:
    """The home directory of guest ``uid``, as login(1) would set it: the
    account's in the host's passwd (the guest's /etc is the host's), or /
    without one.  An ordinary user's daemon runs its machines as that
    user, whose home is then the host's, copy-on-write (the default root),
    or a named machine's home disk under --read-only-root."""
    if uid == 0:
        return "/root"
    import pwd

    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
    return home if home.startswith("/") else "/"


_STAGE_TEXT = {
    "seccomp": "the kernel refused the seccomp filter",
    "setup": "setting up the guest's first process failed",
    "exec": f"cannot run {SANDBOX}",
}


def spawn_failure(m: HostedMachine) -> UmldError | None:
    """Why a machine's first process could not start, as one line (exit
    status 125, as env(1) for its own errors); None if it started."""
    if m.spawn_error is None:
        return None
    stage, err = m.spawn_error
    return UmldError(f"umld: {_STAGE_TEXT.get(stage, stage)}: {os.strerror(err)}", 125)


@final
class Host:
    """The tracer thread of this process and the machines it runs."""

    def __init__(self, tracer: str = "c", *, host_signals: Sequence[int] = ()) -> None:
        reason = available(tracer)
        if reason is not None:
            hint = " (run `make install`, or use --tracer=python)" if tracer == "c" else ""
            raise UmldError(f"umld: tracer backend {tracer!r} unavailable: {reason}{hint}")
        if not os.access(SANDBOX, os.X_OK):
            raise UmldError(f"umld: {SANDBOX} is missing (run `make install`)")
        self.tracer_name = tracer
        #: Host signals the loop passes to every machine (umld run's).
        self.host_signals = tuple(host_signals)
        self.table = lookup_table("x86_64")
        self.machines: dict[str, HostedMachine] = {}
        self._unnamed = 0
        self._owner: dict[Tid, GuestKernel] = {}
        self._by_kernel: dict[int, HostedMachine] = {}
        #: Machines that wait for a look (threads at hlt or in a held wait,
        #: a kill deadline): the loop visits only these (serve).
        self._attention: set[GuestKernel] = set()
        self._calls: deque[_Call] = deque()
        self._tracer: TracerPlatform | None = None
        self._thread_id: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._closing = False
        self._old_mask: set[int] | None = None

    # -- the tracer thread: in the background, or this one ----------------------

    def start(self) -> None:
        """Run the loop in a thread of its own.  SIGCHLD must be blocked in
        every thread of the process (it is waited for with sigtimedwait);
        this blocks it in the caller, so call it before starting other
        threads."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        self._thread = threading.Thread(target=self._main, name="umld-tracer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise UmldError(f"umld: cannot start the tracer: {self._failure}")

    def open(self) -> None:
        """Make the calling thread the tracer thread (``umld run``): then
        :meth:`serve` runs the loop here.  SIGCHLD and the host signals are
        blocked here until :meth:`close` (the loop takes them)."""
        self._old_mask = set(
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *self.host_signals})
        )
        try:
            self._open_tracer()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            self._old_mask = None
            raise

    @property
    def caller_mask(self) -> frozenset[int]:
        """The signal mask of the thread that opened the host, as it was
        (what ``umld run``'s guest starts with)."""
        return frozenset(int(s) for s in self._old_mask or ())

    def _open_tracer(self) -> TracerPlatform:
        tracer = open_tracer(self.tracer_name)
        tracer.set_host_signals(self.host_signals)
        self._tracer = tracer
        self._thread_id = threading.get_ident()
        return tracer

    def _main(self) -> None:
        # Every signal is for the other threads (the daemon's trio loop);
        # SIGCHLD is waited for by the tracer itself.
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
        try:
            tracer = self._open_tracer()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.serve()
        finally:
            self._shutdown(tracer)

    def serve(self, until: Callable[[], bool] | None = None) -> None:
        """The loop, on the tracer thread: until ``until()`` holds, or (by
        default) until :meth:`close` and every machine has ended."""
        tracer = self._tracer
        assert tracer is not None and threading.get_ident() == self._thread_id
        owner = self._owner
        background = self._thread is not None
        while True:
            self._run_calls()
            if until is not None and until():
                return
            if until is None and self._closing and not owner:
                return
            timeout: float | None = None
            now = time.monotonic()
            # Only the machines that asked for a look: the loop's cost per
            # event is O(1), not O(threads of every machine).
            attention = self._attention
            for kernel in list(attention):
                if not kernel.polling() and kernel.kill_deadline is None:
                    attention.discard(kernel)
                    continue
                if kernel.polling():
                    # Threads at hlt or in a held wait wait for a signal:
                    # nothing reports one queued to a thread in a ptrace
                    # stop (privileged.py, guest_ptrace.py).
                    kernel.poll()
                    if kernel.polling():
                        timeout = HLT_POLL if timeout is None else min(timeout, HLT_POLL)
                if kernel.kill_deadline is not None:
                    left = kernel.kill_deadline - now
                    if left <= 0:
                        kernel.kill_deadline = None
                        kernel.kill_all()
                    else:
                        timeout = left if timeout is None else min(timeout, left)
            if background:
                # A SIGCHLD taken by a thread that does not block it (a
                # library user's) is lost to sigtimedwait: poll as well.
                timeout = POLL if timeout is None else min(timeout, POLL)
            ev = tracer.wait(timeout)
            if ev is None or isinstance(ev, Wakeup):
                continue
            if isinstance(ev, HostSignal):
                for m in list(self._by_kernel.values()):
                    if m.kernel is not None:
                        m.kernel.request_termination(ev.signo)
                        attention.add(m.kernel)
                continue
            kernel_of = owner.get(ev.tid)
            if kernel_of is None:
                log.warning("event for a thread no machine owns: %r", ev)
                if not isinstance(ev, Exited):
                    try:
                        tracer.resume(ev.tid)
                    except Exception:
                        pass
                continue
            if isinstance(ev, Cloned):
                owner[ev.child] = kernel_of
            try:
                kernel_of.handle(ev)
            except Exception:
                log.exception("the kernel failed on %r", ev)
            if kernel_of.kill_deadline is not None or kernel_of.polling():
                attention.add(kernel_of)
            if isinstance(ev, Exited):
                owner.pop(ev.tid, None)
                if kernel_of.finished:
                    self._finish(kernel_of)

    def _run_calls(self) -> None:
        calls = self._calls
        if not calls:
            return
        while calls:
            c = calls.popleft()
            try:
                c.result = c.fn()
            except BaseException as exc:
                c.error = exc
            c.done.set()
        # Work from other threads (a stop, a live setting) may have made
        # any machine want a look: rare enough to look at them all.
        for m in list(self._by_kernel.values()):
            if m.kernel is not None:
                self._attention.add(m.kernel)

    def _shutdown(self, tracer: TracerPlatform) -> None:
        for kernel in {id(k): k for k in self._owner.values()}.values():
            kernel.kill_all()
        tracer.close()
        for m in list(self._by_kernel.values()):
            self._ended(m, None)
        self._by_kernel.clear()
        self._owner.clear()

    # -- any thread ------------------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
        """Run ``fn`` on the tracer thread; its result, or its exception."""
        if threading.get_ident() == self._thread_id:
            return fn()
        tracer = self._tracer
        background_gone = self._thread is not None and not self._thread.is_alive()
        if tracer is None or background_gone:
            raise UmldError("umld: the tracer thread is not running")
        c = _Call(fn)
        self._calls.append(c)
        tracer.wake()
        if not c.done.wait(timeout):
            raise UmldError("umld: the tracer thread did not answer")
        if c.error is not None:
            raise c.error
        return c.result  # type: ignore[no-any-return]

    def post(self, fn: Callable[[], None]) -> None:
        """Hand ``fn`` to the tracer thread without waiting (from any
        thread; an exception it raises is logged)."""

        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception("work handed to the tracer thread failed")

        self._calls.append(_Call(run))
        if self._tracer is not None:
            self._tracer.wake()

    def start_machine(
        self,
        config: Config,
        argv: Sequence[str],
        *,
        launch: Launch | None = None,
        on_control: Callable[[MachineControl], None] | None = None,
    ) -> HostedMachine:
        """Start a machine whose first process is ``argv`` (or that idles
        when ``argv`` is empty, for machines driven by exec).  From another
        thread than the tracer's, returns once the guest runs its program
        (or ended)."""
        config.validate()
        name = config.name or self._default_name()
        old = self.machines.get(name)
        if old is not None and old.state in ("starting", "running"):
            raise UmldError(f"umld: a machine named {name} is already running")
        m = HostedMachine(self, config, argv, launch or Launch())
        m.name = name
        if on_control is not None:
            m.on_control.append(on_control)
        self.machines[name] = m
        try:
            self.call(lambda: self._start(m))
        except BaseException:
            if self.machines.get(name) is m:
                del self.machines[name]
            raise
        if threading.get_ident() != self._thread_id:
            assert m.kernel is not None
            m.kernel.up.wait(30)
        return m

    def _default_name(self) -> str:
        """The name of an unnamed machine: umld-PID, then umld-PID-N (a
        name is only for the export; Config.name also gives a home disk)."""
        self._unnamed += 1
        suffix = "" if self._unnamed == 1 else f"-{self._unnamed}"
        return f"umld-{os.getpid()}{suffix}"

    def close(self, grace: float = 10.0) -> None:
        """Stop every machine (SIGTERM, then SIGKILL after ``grace``) and
        the loop."""
        if self._thread is None:
            # Foreground: the loop has returned; what is left is killed.
            if self._tracer is not None:
                self._shutdown(self._tracer)
                self._tracer = None
            if self._old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
                self._old_mask = None
            return
        for m in list(self.machines.values()):
            if m.state in ("starting", "running"):
                try:
                    m.stop(grace)
                except UmldError:
                    pass
        deadline = time.monotonic() + grace + 5
        for m in list(self.machines.values()):
            m.exited.wait(max(0.0, deadline - time.monotonic()))
        self._closing = True
        if self._tracer is not None:
            self._tracer.wake()
        self._thread.join(10)

    # -- tracer thread ------------------------------------------------------------------

    def adopt(self, tid: Tid, kernel: GuestKernel) -> None:
        self._owner[tid] = kernel

    def _start(self, m: HostedMachine) -> None:
        tracer = self._tracer
        assert tracer is not None
        cfg, launch = m.config, m.launch
        files = MachineFiles()
        m.files = files
        terminal = None
        try:
            environ = dict(_guest_env(m) if launch.env is None else launch.env)
            uts = uts_for(cfg)
            prep = prepare(cfg, files, environ, live=launch.live, name=m.name)
            feats = frozenset(features(live=launch.live, vcpus=prep.vcpus, cfg=cfg))
            trace_output = launch.trace_output
            kernel = GuestKernel(
                tracer,
                self.table,
                policy=MachinePolicy(uts, vcpus=cfg.vcpus),
                trace_output=trace_output,
                features=feats,
                post=self.post,
            )
            m.kernel = kernel
            kernel.policy.cpuid_own = cfg.cpuid == "own"
            if cfg.devices_loop and prep.ids is not None:
                from umld.core.loopdev import MachineLoops

                # Nodes owned by the guest's root and its group disk (6).
                files.loops = kernel.policy.loops = MachineLoops(
                    cfg.devices_loop, prep.ids.uid, prep.ids.gid + 6
                )
            if files.net is not None and files.net.lazy:
                kernel.policy.network = files.net
            if cfg.tty and launch.console is None:
                from umld.core.tty import DEFAULT_SIZE, MachineTerminal

                terminal = MachineTerminal(*(launch.terminal_size or DEFAULT_SIZE))
            # Where the first process's terminal master goes: umld's own
            # emulator (the tty setting), or an engine's console socket.
            tty_sock = terminal.stage_fd() if terminal is not None else launch.console
            tty_size = (
                terminal.initial_size if terminal is not None else launch.terminal_size or (80, 24)
            )
            if tty_sock is not None:
                # Its first process leads a session of its own there.
                kernel.own_session = True
            m.filter = machine_filter(feats, trace_all=trace_output is not None)
            m.control = MachineControl(
                kernel,
                files,
                config=cfg,
                name=m.name,
                uid=prep.uid,
                gid=prep.gid,
                vcpus=prep.vcpus or os.cpu_count() or 1,
                memory=prep.memory or 0,
                on_tracer=self.call,
                terminal=terminal,
            )
            for hook in m.on_control:
                hook(m.control)
            argv = machine_argv(
                cfg,
                prep,
                files,
                live=launch.live,
                argv=m.argv,
                cwd=launch.cwd,
                cwd_strict=launch.cwd_strict,
                uts=uts,
                rlimits=m.control.spawn_limits(),
                tty=None if tty_sock is None else (tty_sock, *tty_size),
                hold=launch.hold,
                privileges=launch.privileges,
            )
            # A machine with a terminal of its own never gets the caller's.
            tty = None if tty_sock is not None else launch.tty
            spec = SpawnSpec(
                path=argv[0],
                argv=argv,
                env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
                seccomp_filter=m.filter,
                new_process_group=True,
                # Without the terminal the guest must not keep umld's: its
                # own session, where /dev/tty is ENXIO.
                new_session=tty is None,
                foreground_tty=tty,
                sigmask=launch.sigmask,
            )
            if tty is not None:
                kernel.on_group_stop = lambda task, signo: suspend_with_guest(kernel.pgrp, tty)
            try:
                tid = kernel.start(spec)
            except TracerUnavailable as exc:
                raise UmldError(f"umld: {exc}") from None
            except TracerError as exc:
                raise UmldError(f"umld: cannot start the guest: {exc}") from None
            if files.disks is not None:
                files.disks.start(tid)
            if files.net is not None:
                files.net.on_event = m.control.report
                files.net.start()
            if terminal is not None:
                terminal.start()
            m.control.started()
        except BaseException:
            if terminal is not None:
                terminal.close()
            files.close()
            m.state = "failed"
            m.exited.set()
            raise
        self._owner[Tid(tid)] = kernel
        self._by_kernel[id(kernel)] = m
        m.state = "running"

    def _finish(self, kernel: GuestKernel) -> None:
        self._attention.discard(kernel)
        m = self._by_kernel.pop(id(kernel), None)
        for tid in [t for t, k in self._owner.items() if k is kernel]:
            del self._owner[tid]
        if m is not None:
            self._ended(m, kernel)

    def _ended(self, m: HostedMachine, kernel: GuestKernel | None) -> None:
        if kernel is not None:
            m.status = kernel.root_status if kernel.root_status is not None else 0
            m.spawn_error = kernel.spawn_error
        elif m.status is None:
            m.status = signal.SIGKILL  # killed with the tracer
        m.state = "exited"
        m.ended_at = time.time()
        if m.launch.tty is not None:
            set_foreground(m.launch.tty, os.getpgrp())
        if m.files is not None:
            m.files.close()
        if m.control is not None:
            m.control.close()
        m.exited.set()
        for hook in m.on_exit:
            try:
                hook(m)
            except Exception:
                log.exception("a machine's exit hook failed")
