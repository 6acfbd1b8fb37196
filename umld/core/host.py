"""Host: one tracer thread for many machines (the daemon, the library).

ptrace requests must come from the thread that attached, and a tracer
learns of its tracees' stops through SIGCHLD, which is sent to the whole
process: two tracer threads would steal each other's wake-ups.  So one
process has one tracer thread, and every machine's kernel is driven from
it; events go to the kernel that owns the thread they concern.  Other
threads talk to it only through :meth:`Host.call`, which runs a function
on the tracer thread and returns its result.

``umld run`` does not use this: its single machine runs the same kernel
on the main thread, with nothing else to wait for.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, final

from umld.core.control import MachineControl
from umld.core.kernel import GuestKernel, wait_status_to_exit_code
from umld.core.machine import Config, features, machine_argv, prepare, uts_for
from umld.core.sandbox import (
    SANDBOX,
    MachineFiles,
)
from umld.core.syscalls import lookup_table, machine_filter
from umld.errors import UmldError, get_logger
from umld.tracer import available, open_tracer
from umld.tracer.events import Cloned, Exited, HostSignal, Tid, Wakeup
from umld.tracer.platform import SpawnSpec, TracerPlatform

log = get_logger("umld.host")
POLL = 0.05
T = TypeVar("T")


class _Call:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


@final
class HostedMachine:
    """A machine run by a :class:`Host`.  Its state changes on the tracer
    thread; the other threads read it."""

    def __init__(self, host: Host, config: Config, argv: Sequence[str]) -> None:
        self.host = host
        self.config = config
        self.argv = list(argv)
        self.name = config.name or f"machine-{id(self):x}"
        self.state = "starting"
        self.started = time.time()
        self.ended: float | None = None
        self.returncode: int | None = None
        self.kernel: GuestKernel | None = None
        self.control: MachineControl | None = None
        self.files: MachineFiles | None = None
        self.uid = os.geteuid() if config.uid is None else config.uid
        self.gid = os.getegid() if config.gid is None else config.gid
        self.exited = threading.Event()
        self.on_exit: list[Callable[[HostedMachine], None]] = []
        #: Called with the control once it exists, before the guest runs.
        self.on_control: list[Callable[[MachineControl], None]] = []

    @property
    def running(self) -> bool:
        return self.state == "running"

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdio: tuple[int, int, int] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_exit: Callable[[int], None],
    ) -> int:
        """Start ``argv`` inside the running machine (its mounts, identity
        and pid namespace).  ``stdio`` descriptors become its 0, 1, 2;
        ``on_exit`` gets its raw wait status, on the tracer thread.
        Returns the host pid of the session: the leader of the process
        group the command starts in (alive until ``on_exit``)."""
        if not argv:
            raise UmldError("umld: no command")
        return self.host.call(lambda: self._exec(list(argv), stdio, env, cwd, on_exit))

    def _exec(
        self,
        argv: list[str],
        stdio: tuple[int, int, int] | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        on_exit: Callable[[int], None],
    ) -> int:
        kernel = self.kernel
        if kernel is None or self.state != "running" or kernel.root_status is not None:
            raise UmldError(f"umld: machine {self.name} is not running")
        root = kernel.root_pid
        ops = [str(SANDBOX), "enter", str(root)]
        inherited: list[int] = []
        if stdio is not None:
            # The sandbox inherits these (not close-on-exec) and makes them
            # its child's 0, 1, 2; only the tracer thread spawns, so no
            # other child can inherit them meanwhile.
            inherited = [os.dup(fd) for fd in stdio]
            for fd in inherited:
                os.set_inheritable(fd, True)
            ops += ["stdio", *map(str, inherited)]
        if self.control is not None:
            for path in self.control.cgroups:
                ops += ["cgroup", path]
        ops += ["ids", str(self.uid), str(self.gid), "cwd", cwd or "/", "--", *argv]
        environ = {**_guest_env(self), **(env or {})}
        spec = SpawnSpec(
            path=os.fsencode(SANDBOX),
            argv=[os.fsencode(a) for a in ops],
            env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
            seccomp_filter=self.host.filter,
            new_process_group=True,
            new_session=True,  # never the daemon's terminal
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

    def kill(self) -> None:
        self.host.call(lambda: self.kernel.kill_all() if self.kernel else None)


def _guest_env(machine: HostedMachine) -> dict[str, str]:
    home = "/root" if machine.uid == 0 else "/"
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": home,
        "TERM": os.environ.get("TERM", "dumb"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


@final
class Host:
    """The tracer thread of this process and the machines it runs."""

    def __init__(self, tracer: str = "c") -> None:
        reason = available(tracer)
        if reason is not None:
            raise UmldError(f"umld: tracer backend {tracer!r} unavailable: {reason}")
        if not os.access(SANDBOX, os.X_OK):
            raise UmldError(f"umld: {SANDBOX} is missing (run `make install`)")
        self.tracer_name = tracer
        self.table = lookup_table("x86_64")
        #: Every machine of the daemon is live; run by root, it is hostroot.
        self.features = features(live=True, vcpus=None)
        self.filter = machine_filter(self.features)
        self.machines: dict[str, HostedMachine] = {}
        self._owner: dict[Tid, GuestKernel] = {}
        self._by_kernel: dict[int, HostedMachine] = {}
        self._calls: deque[_Call] = deque()
        self._tracer: TracerPlatform | None = None
        self._thread = threading.Thread(target=self._main, name="umld-tracer", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._closing = False

    # -- any thread --------------------------------------------------------

    def start(self) -> None:
        """Start the tracer thread.  SIGCHLD must be blocked in every
        thread of the process (it is waited for with sigtimedwait); this
        blocks it in the caller, so call it before starting other threads."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise UmldError(f"umld: cannot start the tracer: {self._failure}")

    def call(self, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
        """Run ``fn`` on the tracer thread; its result, or its exception."""
        if threading.current_thread() is self._thread:
            return fn()
        c = _Call(fn)
        self._calls.append(c)
        tracer = self._tracer
        if tracer is None or not self._thread.is_alive():
            raise UmldError("umld: the tracer thread is not running")
        tracer.wake()
        if not c.done.wait(timeout):
            raise UmldError("umld: the tracer thread did not answer")
        if c.error is not None:
            raise c.error
        return c.result  # type: ignore[no-any-return]

    def start_machine(
        self,
        config: Config,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_control: Callable[[MachineControl], None] | None = None,
    ) -> HostedMachine:
        """Start a machine whose first process is ``argv`` (or that idles
        when ``argv`` is empty, for machines driven by exec)."""
        config.validate()
        # An unnamed machine gets a name for the export, but not the
        # persistent home disk that a name (Config.name) asks for.
        name = config.name or f"machine-{len(self.machines) + 1}"
        old = self.machines.get(name)
        if old is not None and old.state in ("starting", "running"):
            raise UmldError(f"umld: a machine named {name} is already running")
        m = HostedMachine(self, config, argv)
        m.name = name
        if on_control is not None:
            m.on_control.append(on_control)
        self.machines[name] = m
        try:
            self.call(lambda: self._start(m, env))
        except BaseException:
            if self.machines.get(name) is m:
                del self.machines[name]
            raise
        # Up once its first process runs its program (or it ended).
        assert m.kernel is not None
        m.kernel.started.wait(30)
        return m

    def close(self, grace: float = 10.0) -> None:
        """Stop every machine (SIGTERM, then SIGKILL after ``grace``) and
        the tracer thread."""
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

    # -- tracer thread -----------------------------------------------------

    def adopt(self, tid: Tid, kernel: GuestKernel) -> None:
        self._owner[tid] = kernel

    def _start(self, m: HostedMachine, env: Mapping[str, str] | None) -> None:
        assert self._tracer is not None
        cfg = m.config
        files = MachineFiles()
        m.files = files
        try:
            environ = dict(_guest_env(m) if env is None else env)
            uts = uts_for(cfg)
            prep = prepare(cfg, files, environ, live=True, name=m.name)
            vcpus, memory = prep.vcpus or 1, prep.memory or 0
            kernel = GuestKernel(self._tracer, self.table, uts=uts, features=self.features)
            kernel.vcpus = cfg.vcpus
            m.kernel = kernel
            m.control = MachineControl(
                kernel, files, name=m.name, uid=m.uid, gid=m.gid, vcpus=vcpus, memory=memory
            )
            for hook in m.on_control:
                hook(m.control)
            argv = machine_argv(
                cfg,
                prep,
                files,
                live=True,
                argv=m.argv,
                cwd="/",
                cwd_strict=False,
                uts=uts,
                rlimits=m.control.spawn_limits(),
            )
            spec = SpawnSpec(
                path=argv[0],
                argv=argv,
                env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
                seccomp_filter=self.filter,
                new_process_group=True,
                new_session=True,  # never the daemon's terminal
            )
            tid = kernel.start(spec)
        except BaseException:
            files.close()
            m.state = "failed"
            m.exited.set()
            raise
        self._owner[Tid(tid)] = kernel
        self._by_kernel[id(kernel)] = m
        m.state = "running"

    def _main(self) -> None:
        # Every signal is for the other threads (the daemon's trio loop);
        # SIGCHLD is waited for by the tracer itself.
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
        try:
            tracer = open_tracer(self.tracer_name)
            tracer.set_host_signals(())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._tracer = tracer
        self._ready.set()
        try:
            self._loop(tracer)
        finally:
            for kernel in {id(k): k for k in self._owner.values()}.values():
                kernel.kill_all()
            tracer.close()

    def _loop(self, tracer: TracerPlatform) -> None:
        owner = self._owner
        while not (self._closing and not owner):
            self._run_calls()
            timeout: float | None = None
            now = time.monotonic()
            for kernel in {id(k): k for k in owner.values()}.values():
                if kernel.kill_deadline is not None:
                    left = kernel.kill_deadline - now
                    if left <= 0:
                        kernel.kill_deadline = None
                        kernel.kill_all()
                    else:
                        timeout = left if timeout is None else min(timeout, left)
            # A SIGCHLD taken by a thread that does not block it (a library
            # user's) is lost to sigtimedwait: poll now and then as well.
            timeout = POLL if timeout is None else min(timeout, POLL)
            ev = tracer.wait(timeout)
            if ev is None or isinstance(ev, HostSignal):
                continue
            if isinstance(ev, Wakeup):
                for kernel in {id(k): k for k in owner.values()}.values():
                    kernel.handle(ev)
                continue
            found = owner.get(ev.tid)
            if found is None:
                log.warning("event for a thread no machine owns: %r", ev)
                if isinstance(ev, Exited):
                    continue
                try:
                    tracer.resume(ev.tid)
                except Exception:
                    pass
                continue
            kernel = found
            if isinstance(ev, Cloned):
                owner[ev.child] = kernel
            try:
                kernel.handle(ev)
            except Exception:
                log.exception("the kernel failed on %r", ev)
            if isinstance(ev, Exited):
                owner.pop(ev.tid, None)
                if kernel.finished:
                    self._finish(kernel)

    def _run_calls(self) -> None:
        calls = self._calls
        while calls:
            c = calls.popleft()
            try:
                c.result = c.fn()
            except BaseException as exc:
                c.error = exc
            c.done.set()

    def _finish(self, kernel: GuestKernel) -> None:
        m = self._by_kernel.pop(id(kernel), None)
        for tid in [t for t, k in self._owner.items() if k is kernel]:
            del self._owner[tid]
        if m is None:
            return
        status = kernel.root_status if kernel.root_status is not None else 0
        m.returncode = wait_status_to_exit_code(status)
        m.state = "exited"
        m.ended = time.time()
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
