"""Machine: one guest, from configuration to exit status.

``Machine.run`` is synchronous and runs the tracer loop on the calling
thread (ptrace requests must come from the thread that attached).  It
imports nothing heavy, so ``umld run -- /bin/true`` stays fast.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TextIO, final

from umld.core.kernel import TERMINATING_SIGNALS, GuestKernel, UtsState, wait_status_to_exit_code
from umld.core.syscalls import lookup_table
from umld.core.task import Task
from umld.errors import UmldError, UsageError
from umld.tracer import TracerError, TracerUnavailable, available, open_tracer
from umld.tracer.platform import SpawnSpec, TracerPlatform
from umld.tracer.seccomp import build_filter

UTS_LEN = 64


class Config:
    """Settings of one machine (the embedded defaults are the defaults here)."""

    def __init__(
        self,
        *,
        hostname: str | None = None,
        domainname: str | None = None,
        tracer: str = "c",
        trace: bool = False,
        trace_output: TextIO | None = None,
    ) -> None:
        #: None: the host's name.
        self.hostname = hostname
        self.domainname = domainname
        self.tracer = tracer
        #: Full-trace mode: every syscall stops and is written to trace_output.
        self.trace = trace
        self.trace_output = trace_output

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Config({fields})"

    def validate(self) -> None:
        for key in ("hostname", "domainname"):
            value = getattr(self, key)
            if value is not None and len(os.fsencode(value)) > UTS_LEN:
                raise UsageError(f"{key} is longer than {UTS_LEN} bytes: {value!r}")


class RunResult(NamedTuple):
    status: int  # raw wait status of the first process
    returncode: int  # a shell's $?: code, or 128+N for signal N


def resolve_command(name: str, env: Mapping[str, str]) -> bytes:
    """The file execve(2) will run for ``name``, found the way a shell
    finds it (PATH when there is no slash).  Errors say it as bash does:
    127 when nothing is found, 126 when found but not executable."""
    if not name:
        raise UmldError("umld: : command not found", 127)
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    denied: str | None = None
    for c in candidates:
        if os.path.isdir(c):
            if "/" in name:
                raise UmldError(f"umld: {name}: Is a directory", 126)
            continue
        if os.path.exists(c):
            if os.access(c, os.X_OK):
                return os.fsencode(c)
            denied = denied or c
    if denied is not None:
        raise UmldError(f"umld: {name}: Permission denied", 126)
    if "/" in name:
        raise UmldError(f"umld: {name}: No such file or directory", 127)
    raise UmldError(f"umld: {name}: command not found", 127)


def _controlling_tty() -> int | None:
    """A terminal fd (0, 1 or 2) whose foreground group is ours: then the
    guest gets the terminal, as a shell gives it to a foreground job."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            continue
    return None


def _set_foreground(fd: int, pgrp: int) -> None:
    # tcsetpgrp(3) from a background group raises SIGTTOU unless it is
    # blocked (termios(3), "job control").
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, pgrp)
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_STAGE_TEXT = {
    "seccomp": "the kernel refused the seccomp filter",
    "setup": "setting up the guest's first process failed",
}


@final
class Machine:
    """A guest machine.  Not thread-safe: use it from one thread."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.config.validate()
        self.table = lookup_table("x86_64")
        self.kernel: GuestKernel | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> RunResult:
        """Run ``argv`` as the guest's first process until it and every
        process it started are gone."""
        if not argv:
            raise UsageError("no command given")
        environ = dict(os.environ if env is None else env)
        path = resolve_command(argv[0], environ)
        cfg = self.config
        host_signals = (signal.SIGCHLD, *TERMINATING_SIGNALS)
        old_mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, host_signals))
        try:
            reason = available(cfg.tracer)
            if reason is not None:
                hint = " (run `make install`, or use --tracer=python)" if cfg.tracer == "c" else ""
                raise UmldError(f"umld: tracer backend {cfg.tracer!r} unavailable: {reason}{hint}")
            tracer = open_tracer(cfg.tracer)
            try:
                return self._run(tracer, argv, path, environ, cwd, old_mask)
            finally:
                tracer.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _run(
        self,
        tracer: TracerPlatform,
        argv: Sequence[str],
        path: bytes,
        environ: Mapping[str, str],
        cwd: str | None,
        old_mask: set[int],
    ) -> RunResult:
        cfg = self.config
        uts = UtsState.from_host()
        if cfg.hostname is not None:
            uts.nodename = os.fsencode(cfg.hostname)
        if cfg.domainname is not None:
            uts.domainname = os.fsencode(cfg.domainname)
        kernel = GuestKernel(
            tracer,
            self.table,
            uts=uts,
            trace_output=(cfg.trace_output or sys.stderr) if cfg.trace else None,
        )
        self.kernel = kernel
        kernel.tracer.set_host_signals(TERMINATING_SIGNALS)
        tty = _controlling_tty()
        spec = SpawnSpec(
            path=path,
            argv=[os.fsencode(a) for a in argv],
            env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
            cwd=os.fsencode(cwd) if cwd is not None else None,
            seccomp_filter=build_filter(self.table.trapped(), trace_all=cfg.trace),
            new_process_group=True,
            foreground_tty=tty,
            sigmask=frozenset(int(s) for s in old_mask),
        )
        if tty is not None:
            kernel.on_group_stop = lambda task, signo: _suspend_with_guest(task, tty)
        try:
            kernel.start(spec)
        except TracerUnavailable as exc:
            raise UmldError(f"umld: {exc}") from None
        except TracerError as exc:
            raise UmldError(f"umld: cannot start the guest: {exc}") from None
        try:
            status = kernel.run()
        finally:
            if tty is not None:
                _set_foreground(tty, os.getpgrp())
        if kernel.spawn_error is not None:
            stage, err = kernel.spawn_error
            text = _STAGE_TEXT.get(stage, stage)
            name = argv[0]
            if stage == "exec":
                raise UmldError(
                    f"umld: {name}: {os.strerror(err)}", 126 if err != errno.ENOENT else 127
                )
            raise UmldError(f"umld: {text}: {os.strerror(err)}", 126)
        return RunResult(status, wait_status_to_exit_code(status))


def _suspend_with_guest(task: Task, tty: int) -> None:
    """The guest's first process was stopped (Ctrl-Z): stop umld too, so
    the shell that started umld sees its job stopped; when it is
    continued (fg), give the terminal back to the guest and continue it."""
    pgrp = task.tgid
    _set_foreground(tty, os.getpgrp())
    os.kill(os.getpid(), signal.SIGSTOP)
    # Here after SIGCONT.
    _set_foreground(tty, pgrp)
    try:
        os.killpg(pgrp, signal.SIGCONT)
    except OSError:
        pass
