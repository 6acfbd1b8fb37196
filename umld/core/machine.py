"""Machine: one guest, from configuration to exit status.

``Machine.run`` is synchronous and runs the tracer loop on the calling
thread (ptrace requests must come from the thread that attached).  It
imports nothing heavy, so ``umld run -- /bin/true`` stays fast.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TextIO, final

from umld.core.cgroups import MachineCgroup
from umld.core.control import DEFAULT_NPROC, MachineControl
from umld.core.ids import IdRange, lease as lease_ids
from umld.core.kernel import TERMINATING_SIGNALS, GuestKernel, UtsState, wait_status_to_exit_code
from umld.core.sandbox import (
    SANDBOX,
    Layout,
    MachineFiles,
    Mount,
    cpu_list,
    cpuinfo_for,
    host_memory,
    meminfo_for,
    sandbox_argv,
)
from umld.core.syscalls import lookup_table, machine_filter
from umld.core.syscalls.sys_utsname import UTS_LEN
from umld.errors import UmldError, UsageError, get_logger
from umld.tracer import TracerError, TracerUnavailable, available, open_tracer
from umld.tracer.platform import SpawnSpec, TracerPlatform

log = get_logger("umld.machine")


class Config:
    """Settings of one machine (the embedded defaults are the defaults here).

    Mounts: with no ``root`` the guest's / is the host's, read-only, with
    ramdisks on /tmp, /run and /dev/shm and a home directory that is a
    ramdisk, or the machine's disk image when the machine has a ``name``.
    With ``root`` the guest's / is that directory (writable unless
    ``root_readonly``) with the host's /dev and /sys read-only.  ``mounts``
    are added on top, in order.
    """

    def __init__(
        self,
        *,
        hostname: str | None = None,
        domainname: str | None = None,
        tracer: str = "c",
        trace: bool = False,
        trace_output: TextIO | None = None,
        name: str | None = None,
        root: str | None = None,
        root_readonly: bool = False,
        mounts: Sequence[Mount] = (),
        uid: int | None = None,
        gid: int | None = None,
        vcpus: int | None = None,
        memory: int | None = None,
        kernel_release: str | None = None,
        uname_machine: str | None = None,
        state_dir: str | None = None,
        unsafe_host_ids: bool = False,
        hidden: Sequence[str] = (),
    ) -> None:
        #: None: the host's name.
        self.hostname = hostname
        self.domainname = domainname
        self.tracer = tracer
        #: Full-trace mode: every syscall stops and is written to trace_output.
        self.trace = trace
        self.trace_output = trace_output
        self.name = name
        self.root = root
        self.root_readonly = root_readonly
        self.mounts = list(mounts)
        #: None: the host user's ids.  0 is fake root.
        self.uid = uid
        self.gid = gid
        #: None: the host's count / size.
        self.vcpus = vcpus
        self.memory = memory
        self.kernel_release = kernel_release
        self.uname_machine = uname_machine
        #: Where named machines keep their disk images.
        self.state_dir = state_dir
        #: Run by root: the guest's ids are the host's own (its root is the
        #: host's root on every host file it reaches) instead of a range
        #: of its own.  Dangerous; for compatibility only.
        self.unsafe_host_ids = unsafe_host_ids
        #: Host paths the guest must not reach although a tree it is
        #: given holds them (the daemon's control socket).
        self.hidden = list(hidden)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Config({fields})"

    def validate(self) -> None:
        for key in ("hostname", "domainname", "kernel_release", "uname_machine"):
            value = getattr(self, key)
            if value is not None and len(os.fsencode(value)) > UTS_LEN:
                raise UsageError(f"{key} is longer than {UTS_LEN} bytes: {value!r}")
        if self.name is not None and not _NAME.match(self.name):
            raise UsageError(f"bad machine name {self.name!r} (letters, digits, . _ -)")
        if self.vcpus is not None and not 1 <= self.vcpus <= 1024:
            raise UsageError(f"vcpus must be between 1 and 1024, not {self.vcpus}")
        if self.memory is not None and self.memory < 1 << 20:
            raise UsageError("memory must be at least 1M")
        for key in ("uid", "gid"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < (1 << 32) - 1:
                raise UsageError(f"bad {key} {value}")
        if self.root is not None and not os.path.isdir(self.root):
            raise UsageError(f"--root {self.root}: not a directory")

    def home_disk(self) -> str | None:
        """The disk image behind a named machine's home directory."""
        if self.name is None:
            return None
        base = self.state_dir or (
            "/var/lib/umld"
            if os.geteuid() == 0
            else os.path.join(
                os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "umld"
            )
        )
        return os.path.join(base, "machines", self.name, "home.img")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Prepared(NamedTuple):
    """What a machine's start needs, from its configuration."""

    layout: Layout
    uid: int
    gid: int
    vcpus: int | None  # None: the host's, and not bound over /proc
    memory: int | None
    ids: IdRange | None  # the machine's host ids (root-run machines)


def prepare(
    cfg: Config, files: MachineFiles, environ: Mapping[str, str], *, live: bool, name: str
) -> Prepared:
    """The machine's host side: its generated files, its host ids and its
    cgroups.  A live machine can change its CPU count and memory size
    later, so its /proc and /sys files are the machine's from the start."""
    vcpus = cfg.vcpus or ((os.cpu_count() or 1) if live else None)
    memory = cfg.memory or (host_memory() if live else None)
    if vcpus is not None:
        files.write("/proc/cpuinfo", cpuinfo_for(vcpus))
        files.write("/sys/devices/system/cpu/online", cpu_list(vcpus))
    if memory is not None:
        files.write("/proc/meminfo", meminfo_for(memory))
    uid = os.geteuid() if cfg.uid is None else cfg.uid
    gid = os.getegid() if cfg.gid is None else cfg.gid
    layout = Layout(
        root=cfg.root,
        root_readonly=cfg.root_readonly,
        mounts=cfg.mounts,
        home=environ.get("HOME") or None,
        home_disk=cfg.home_disk(),
    )
    ids = None
    if os.geteuid() == 0 and not cfg.unsafe_host_ids:
        files.ids = lease_ids()
        ids = files.ids.ids
    elif os.geteuid() == 0:
        log.warning(
            "machine %s: --unsafe-host-ids: the guest's root is the host's root on every host "
            "file, cgroup, socket and keyring it can reach",
            name,
        )
    files.cgroup = MachineCgroup.create(name)
    return Prepared(layout, uid, gid, vcpus, memory, ids)


def machine_argv(
    cfg: Config,
    prep: Prepared,
    files: MachineFiles,
    *,
    live: bool,
    argv: Sequence[str],
    cwd: str,
    cwd_strict: bool,
    uts: UtsState,
    rlimits: Sequence[tuple[str, str]],
) -> list[bytes]:
    """umld-sandbox's argument list for a prepared machine."""
    return sandbox_argv(
        prep.layout,
        files,
        uid=prep.uid,
        gid=prep.gid,
        cwd=cwd,
        cwd_strict=cwd_strict,
        argv=argv,
        memory=prep.memory or host_memory(),
        export_dir=live,
        uts=(os.fsdecode(uts.nodename), os.fsdecode(uts.domainname)),
        ids=prep.ids,
        cgroups=files.cgroup.paths if files.cgroup is not None else (),
        hidden=cfg.hidden,
        rlimits=rlimits,
    )


def features(*, live: bool, vcpus: int | None) -> set[str]:
    """The machine features that decide its conditional traps (Syscall.needs):
    a live machine can change any setting, so it traps them all; a machine
    run by host root writes the host's files as root ("hostroot")."""
    out = set()
    if live:
        out |= {"live", "vcpus"}
    if vcpus is not None:
        out.add("vcpus")
    if os.geteuid() == 0:
        out.add("hostroot")
    return out


def uts_for(cfg: Config) -> UtsState:
    """The guest's uname(2): the host's, with what the config sets."""
    uts = UtsState.from_host()
    for field, value in (
        ("nodename", cfg.hostname),
        ("domainname", cfg.domainname),
        ("release", cfg.kernel_release),
        ("machine", cfg.uname_machine),
    ):
        if value is not None:
            setattr(uts, field, os.fsencode(value))
    return uts


class RunResult(NamedTuple):
    status: int  # raw wait status of the first process
    returncode: int  # a shell's $?: code, or 128+N for signal N


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
        #: While a live machine runs (``on_start`` given): its control.
        self.control: MachineControl | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Callable[[MachineControl], None] | None = None,
    ) -> RunResult:
        """Run ``argv`` as the guest's first process until it and every
        process it started are gone."""
        if not argv:
            raise UsageError("no command given")
        environ = dict(os.environ if env is None else env)
        cfg = self.config
        if not os.access(SANDBOX, os.X_OK):
            raise UmldError(f"umld: {SANDBOX} is missing (run `make install`)")
        host_signals = (signal.SIGCHLD, *TERMINATING_SIGNALS)
        old_mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, host_signals))
        try:
            reason = available(cfg.tracer)
            if reason is not None:
                hint = " (run `make install`, or use --tracer=python)" if cfg.tracer == "c" else ""
                raise UmldError(f"umld: tracer backend {cfg.tracer!r} unavailable: {reason}{hint}")
            tracer = open_tracer(cfg.tracer)
            try:
                files = MachineFiles()
                try:
                    return self._run(tracer, files, argv, environ, cwd, old_mask, on_start)
                finally:
                    files.close()
            finally:
                tracer.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _run(
        self,
        tracer: TracerPlatform,
        files: MachineFiles,
        argv: Sequence[str],
        environ: Mapping[str, str],
        cwd: str | None,
        old_mask: set[int],
        on_start: Callable[[MachineControl], None] | None,
    ) -> RunResult:
        cfg = self.config
        uts = uts_for(cfg)
        live = on_start is not None
        name = cfg.name or f"umld-{os.getpid()}"
        prep = prepare(cfg, files, environ, live=live, name=name)
        uid, gid, vcpus, memory = prep.uid, prep.gid, prep.vcpus, prep.memory
        feats = features(live=live, vcpus=vcpus)
        kernel = GuestKernel(
            tracer,
            self.table,
            uts=uts,
            trace_output=(cfg.trace_output or sys.stderr) if cfg.trace else None,
            features=feats,
        )
        kernel.vcpus = cfg.vcpus
        self.kernel = kernel
        kernel.tracer.set_host_signals(TERMINATING_SIGNALS)
        tty = _controlling_tty()
        if on_start is not None:
            self.control = MachineControl(
                kernel,
                files,
                name=name,
                uid=uid,
                gid=gid,
                vcpus=vcpus or 1,
                memory=memory or 0,
            )
            on_start(self.control)
        sandbox = machine_argv(
            cfg,
            prep,
            files,
            live=live,
            argv=argv,
            cwd=cwd if cwd is not None else os.getcwd(),
            cwd_strict=cwd is not None,
            uts=uts,
            rlimits=(
                self.control.spawn_limits()
                if self.control is not None
                else [("nproc", str(DEFAULT_NPROC))]
            ),
        )
        if files.cgroup is not None and self.control is None:
            files.cgroup.set_pids_max(DEFAULT_NPROC)
        spec = SpawnSpec(
            path=sandbox[0],
            argv=sandbox,
            env=[os.fsencode(f"{k}={v}") for k, v in environ.items()],
            seccomp_filter=machine_filter(feats, trace_all=cfg.trace),
            new_process_group=True,
            # Without the terminal the guest must not keep umld's: its own
            # session, where /dev/tty is ENXIO (issue 9).
            new_session=tty is None,
            foreground_tty=tty,
            sigmask=frozenset(int(s) for s in old_mask),
        )
        if tty is not None:
            kernel.on_group_stop = lambda task, signo: _suspend_with_guest(kernel.pgrp, tty)
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
            if self.control is not None:
                self.control.close()
        if kernel.spawn_error is not None:
            stage, err = kernel.spawn_error
            text = _STAGE_TEXT.get(stage, stage)
            if stage == "exec":
                text = f"cannot run {SANDBOX}"
            raise UmldError(f"umld: {text}: {os.strerror(err)}", 125)
        return RunResult(status, wait_status_to_exit_code(status))


def _suspend_with_guest(pgrp: int, tty: int) -> None:
    """The guest's first process was stopped (Ctrl-Z): stop umld too, so
    the shell that started umld sees its job stopped; when it is
    continued (fg), give the terminal back to the guest and continue it."""
    _set_foreground(tty, os.getpgrp())
    os.kill(os.getpid(), signal.SIGSTOP)
    # Here after SIGCONT.
    _set_foreground(tty, pgrp)
    try:
        os.killpg(pgrp, signal.SIGCONT)
    except OSError:
        pass
