"""A machine: its settings (Config), its host side, and ``umld run``.

:class:`Config` holds the settings a machine starts with, one attribute
per start row of :mod:`umld.core.settings`, plus how umld runs it.
:func:`prepare` and :func:`machine_argv` turn it into the machine's host
side (generated files, host ids, cgroups) and the sandbox's operations.
:class:`Machine` is ``umld run``: a :class:`~umld.core.host.Host` of one
machine on the calling thread.  This module imports nothing heavy, so
``umld run -- /bin/true`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TextIO, final

from umld.core import procfs, settings, vde
from umld.core.cgroups import MachineCgroup, enforce
from umld.core.control import MachineControl
from umld.core.ids import IdRange, lease as lease_ids
from umld.core.kernel import TERMINATING_SIGNALS, GuestKernel
from umld.core.live import write_cpu_views
from umld.core.net import MachineNet, Publish, check as check_net, lazy_network
from umld.core.policy import UtsState
from umld.core.sandbox import (
    DEFAULT_PRIVILEGES,
    IdExtents,
    Layout,
    MachineFiles,
    Mount,
    Privileges,
    host_memory,
    meminfo_for,
    sandbox_argv,
    upper_layer,
)
from umld.errors import UmldError, UsageError, get_logger

log = get_logger("umld.machine")


class Config:
    """A machine's settings, and how umld runs it.

    Settings are keyword arguments named as the attributes of the start
    rows of :mod:`umld.core.settings` (``hostname``, ``vcpus``, ``memory``,
    ``bind``, ``net_connect``, ``limits_nproc``, ...) and take what their
    row takes, text or a Python value (``memory="512M"`` or
    ``memory=536870912``); a value a row refuses raises
    :class:`~umld.core.settings.SettingError`, an unknown name TypeError.
    A setting not given has its row's default (None: the host's).

    How umld runs it (not settings): ``tracer`` (``c`` or ``python``),
    ``trace`` (full-trace mode: every syscall stops and is written to
    ``trace_output``, stderr by default), ``state_dir`` (where named
    machines keep their disk images), ``hidden`` (host paths the guest must
    not reach although a tree it is given holds them), ``masked`` and
    ``readonly`` (guest paths covered, or made read-only, once every mount
    is made: an OCI bundle's maskedPaths and readonlyPaths), and
    ``mounts`` (Mount rows added after the binds, ramdisks and disks).
    """

    # One per start row of umld.core.settings (a test checks), typed for
    # the type checker; the rows parse and validate them.
    name: str | None
    hostname: str | None
    domainname: str | None
    kernel_release: str | None
    uname_machine: str | None
    root: str | None
    root_readonly: bool
    root_uids: IdExtents | None
    root_gids: IdExtents | None
    upper_size: int | None
    bind: list[Mount]
    tmpfs: list[Mount]
    disk: list[Mount]
    sysctl: list[tuple[str, str]]
    uid: int | None
    gid: int | None
    vcpus: int | None
    cpu_weight: int | None
    cpuid: str
    memory: int | None
    net: str
    publish: list[Publish]
    net_address: str | None
    net_link: str
    net_forward: str
    net_accept: str
    net_connect: str
    limits_nproc: int
    limits_nofile: int | None
    limits_oom_floor: int
    devices_loop: int
    tty: bool
    nest: bool
    unsafe_host_ids: bool

    def __init__(
        self,
        *,
        tracer: str = "c",
        trace: bool = False,
        trace_output: TextIO | None = None,
        state_dir: str | None = None,
        hidden: Sequence[str] = (),
        masked: Sequence[str] = (),
        readonly: Sequence[str] = (),
        mounts: Sequence[Mount] = (),
        **values: Any,
    ) -> None:
        known = {row.attr: row for row in settings.START}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"Config() has no setting {', '.join(unknown)}")
        for attr, row in known.items():
            value = values.get(attr)
            if value is None:
                default = row.default
                value = list(default) if isinstance(default, tuple) else default
            else:
                value = row.type.parse(value)
            setattr(self, attr, value)
        self.tracer = tracer
        self.trace = trace
        self.trace_output = trace_output
        self.state_dir = state_dir
        self.hidden = list(hidden)
        for path in (*masked, *readonly):
            if not path.startswith("/") or "\0" in path:
                raise UsageError(f"umld: {path!r}: a guest path is absolute")
        self.masked = list(masked)
        self.readonly = list(readonly)
        self.extra_mounts = list(mounts)

    @property
    def mounts(self) -> list[Mount]:
        """The mounts asked for, in order: binds, ramdisks, disks, extras."""
        return [*self.bind, *self.tmpfs, *self.disk, *self.extra_mounts]

    def settings(self) -> dict[str, Any]:
        """The settings, by key (``net/connect``), as set."""
        return {row.key: getattr(self, row.attr) for row in settings.START}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Config({fields})"

    def validate(self) -> None:
        """Check every setting again (attributes may have been set since);
        SettingError names the first bad one."""
        for row in settings.START:
            value = getattr(self, row.attr)
            if value is not None and value != row.default:
                try:
                    row.type.parse(value)
                except settings.SettingError as exc:
                    raise settings.SettingError(f"{row.key}: {exc}") from None

    def machine_dir(self) -> str | None:
        """Where a named machine keeps what persists between its runs: its
        upper layer (the default, copy-on-write root) or its home disk
        (``--read-only-root``)."""
        if self.name is None:
            return None
        base = self.state_dir or (
            "/var/lib/umld"
            if os.geteuid() == 0
            else os.path.join(
                os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "umld"
            )
        )
        return os.path.join(base, "machines", self.name)

    def home_disk(self) -> str | None:
        """The disk image behind a named machine's home directory, under
        ``--read-only-root`` (the default root keeps the host's home,
        copy-on-write)."""
        base = self.machine_dir()
        if base is None or not self.root_readonly or self.root is not None:
            return None
        return os.path.join(base, "home.img")


class Prepared(NamedTuple):
    """What a machine's start needs, from its configuration."""

    layout: Layout
    uid: int
    gid: int
    vcpus: int | None  # None: the host's, and not bound over /proc
    memory: int | None
    ids: IdRange | None  # the machine's host ids (root-run machines)
    upper: tuple[str, str] | None  # a copy-on-write root's upper layer


def check_oom_floor(cfg: Config, unenforced: Sequence[str] | None = None) -> None:
    """A floor below 0 lets the guest's processes hide from the OOM killer
    (oom_score_adj -1000 exempts a process, proc(5)): only where a memory
    limit of the machine's own keeps its OOMs in its cgroup, and only
    where umld may lower the floor (CAP_SYS_RESOURCE of the host, which
    sets a process's oom_score_adj_min when it writes oom_score_adj)."""
    if cfg.limits_oom_floor >= 0:
        return
    needs_memory = (
        "umld: --limits-oom-floor below 0 needs an enforced --memory (a process at -1000 "
        "is exempt from the OOM killer: only the machine's own memory limit keeps its OOMs "
        "inside it)"
    )
    if cfg.memory is None:
        raise UsageError(needs_memory)
    if not procfs.host_root() or not procfs.has_capability(procfs.CAP_SYS_RESOURCE):
        raise UmldError(
            "umld: --limits-oom-floor below 0 needs umld run by root with CAP_SYS_RESOURCE "
            "(lowering oom_score_adj takes it)",
            125,
        )
    if unenforced is not None and "memory" in unenforced:
        raise UmldError(needs_memory, 125)


def prepare(
    cfg: Config, files: MachineFiles, environ: Mapping[str, str], *, live: bool, name: str
) -> Prepared:
    """The machine's host side: its generated files, its host ids and its
    cgroups.  A live machine can change its CPU count and memory size
    later, so its /proc and /sys files are the machine's from the start."""
    vcpus = cfg.vcpus or ((os.cpu_count() or 1) if live else None)
    memory = cfg.memory or (host_memory() if live else None)
    uid = os.geteuid() if cfg.uid is None else cfg.uid
    gid = os.getegid() if cfg.gid is None else cfg.gid
    layout = Layout(
        root=cfg.root,
        root_readonly=cfg.root_readonly,
        mounts=cfg.mounts,
        # "/" is no home of its own: a ramdisk or disk there would hide
        # the whole tree.
        home=environ.get("HOME", "").rstrip("/") or None,
        home_disk=cfg.home_disk(),
    )
    if cfg.nest and cfg.unsafe_host_ids:
        # The uncovered /proc of --nest holds host files umld otherwise
        # masks (sysrq-trigger): harmless to a root that is not the host's.
        raise UsageError("umld: --nest and --unsafe-host-ids cannot be used together")
    if cfg.devices_loop and (cfg.unsafe_host_ids or not procfs.host_root()):
        raise UmldError(
            "umld: --devices-loop needs a machine run by root with ids of its own (not "
            "--unsafe-host-ids): a loop device is the host's, leased to the machine",
            125,
        )
    ids = None
    if procfs.host_root() and not cfg.unsafe_host_ids:
        files.ids = lease_ids()
        ids = files.ids.ids
    elif procfs.host_root():
        log.warning(
            "machine %s: --unsafe-host-ids: the guest's root is the host's root on every host "
            "file, cgroup, socket and keyring it can reach",
            name,
        )
    if (cfg.root_uids or cfg.root_gids) and (ids is None or cfg.root is None):
        raise UmldError(
            "umld: --root-uids and --root-gids apply to a --root DIR of a machine run by root "
            "with ids of its own (not --unsafe-host-ids): the tree is shown through an idmap",
            125,
        )
    if cfg.net == "host" and any(key.startswith("net.") for key, _ in cfg.sysctl):
        raise UsageError(
            "umld: --sysctl net.*: the machine shares the host's network (--net host), whose "
            "sysctls are the host's"
        )
    check_oom_floor(cfg)
    files.cgroup = MachineCgroup.create(name)
    # The configured vCPUs and memory bound the machine; a live one's
    # defaults (the host's) bound nothing until they are changed.
    unenforced = enforce(files.cgroup, name, vcpus=cfg.vcpus, memory=cfg.memory)
    if cfg.cpu_weight is not None and (
        files.cgroup is None or not files.cgroup.set_weight(cfg.cpu_weight)
    ):
        log.warning("machine %s: --cpu-weight is not enforced: no cpu cgroup of its own", name)
    check_oom_floor(cfg, unenforced)
    if vcpus is not None:
        cpus = files.cgroup.cpus if files.cgroup is not None else None
        write_cpu_views(files, vcpus, cpus or sorted(os.sched_getaffinity(0)))
    if memory is not None:
        files.write("/proc/meminfo", meminfo_for(memory))
    check_net(cfg.net, cfg.publish)
    if cfg.net != "host" and not cfg.net.startswith("ns:"):
        files.net = MachineNet(
            cfg.net,
            rundir=files.dir,
            publish=cfg.publish,
            address=cfg.net_address,
            link=cfg.net_link,
            forward=cfg.net_forward,
            mac=vde.mac_for(name) if cfg.net.startswith("vde:") else None,
            lazy=lazy_network(cfg.net, cfg.publish),
        )
    upper = None
    if layout.copy_on_write:
        upper = upper_layer(
            files,
            memory=memory or host_memory(),
            size=cfg.upper_size,
            keep=cfg.machine_dir(),
            ids=ids,
        )
    return Prepared(layout, uid, gid, vcpus, memory, ids, upper)


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
    tty: tuple[int, int, int] | None = None,
    hold: int | None = None,
    privileges: Privileges = DEFAULT_PRIVILEGES,
) -> list[bytes]:
    """umld-sandbox's argument list for a prepared machine (``tty``: the
    socket its terminal's master goes to, and the terminal's size;
    ``hold``: the socket of the wait before the command, Launch.hold;
    ``privileges``: the first process's, Launch.privileges)."""
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
        masked=cfg.masked,
        readonly=cfg.readonly,
        rlimits=rlimits,
        upper=prep.upper,
        tty=tty,
        net=None if files.net is None else (files.net.stage_fd(),),
        nest=cfg.nest,
        oom_floor=cfg.limits_oom_floor,
        loop=cfg.devices_loop > 0,
        hold=hold,
        privileges=privileges,
        netjoin=cfg.net[3:] if cfg.net.startswith("ns:") else None,
        root_ids=(cfg.root_uids or (), cfg.root_gids or ())
        if cfg.root_uids or cfg.root_gids
        else None,
        sysctls=cfg.sysctl,
    )


def features(*, live: bool, vcpus: int | None, cfg: Config | None = None) -> set[str]:
    """The machine features that decide its conditional traps (Syscall.needs):
    a live machine can change any setting, so it traps them all, and so
    does one whose network policy is not the open default from the start;
    a machine run by host root writes the host's files as root
    ("hostroot"); mount(2) stops in a live machine (to report it) and in
    one with loop devices (to mount them, "mounts")."""
    out = set()
    policed = cfg is not None and (cfg.net_accept != "open" or cfg.net_connect != "allow")
    if live or policed:
        out |= {"live", "vcpus", "mounts"}
    if cfg is not None and cfg.devices_loop:
        # A leased loop device's mount(2) is umld's to make (loopdev.py).
        out.add("mounts")
    if vcpus is not None:
        out.add("vcpus")
    if cfg is not None and cfg.cpuid == "own":
        out.add("cpuid")
    if cfg is not None and lazy_network(cfg.net, cfg.publish):
        out.add("lazynet")
    if procfs.host_root():
        # Root of a machine (nesting) writes as its host machine's root,
        # whose guest kernel already refuses these writes.
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


def _caller_size() -> tuple[int, int] | None:
    """The size of umld's own terminal (the first of 0, 1, 2 that is
    one), as the guest's terminal starts; None without one."""
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    return None


class RunResult(NamedTuple):
    status: int  # raw wait status of the first process
    returncode: int  # as subprocess: the exit code, or -N for signal N


@final
class Machine:
    """``umld run``: one machine, run by a Host on the calling thread
    (ptrace requests come from the thread that attached) until it and
    every process it started are gone.  SIGINT, SIGTERM, SIGHUP and
    SIGQUIT sent to umld meanwhile go to the guest."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.config.validate()
        self.kernel: GuestKernel | None = None
        self.control: MachineControl | None = None
        self._hosted: Any = None

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdio: tuple[int, int, int],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        privileges: Privileges = DEFAULT_PRIVILEGES,
        console: tuple[int, int, int] | None = None,
        on_exit: Callable[[int], None],
    ) -> int:
        """Start ``argv`` in the machine while :meth:`run` runs it (any
        thread): HostedMachine.exec, the daemon's ``umld exec``."""
        if self._hosted is None:
            raise UmldError("umld: the machine is not running")
        return int(
            self._hosted.exec(argv, stdio=stdio, env=env, cwd=cwd, uid=uid, gid=gid,
                              privileges=privileges, console=console, on_exit=on_exit)
        )  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_start: Callable[[MachineControl], None] | None = None,
        live: bool | None = None,
        hold: int | None = None,
        privileges: Privileges = DEFAULT_PRIVILEGES,
        console: int | None = None,
        console_size: tuple[int, int] | None = None,
    ) -> RunResult:
        """Run ``argv`` as the guest's first process.  ``on_start`` gets
        the control before the guest's first instruction; the machine is
        live (its settings may change: an export, a --config-dir) when
        ``live`` says so, by default when there is an ``on_start``.
        ``hold``: a socket (see :class:`~umld.core.host.Launch`) on which
        the made machine's first process says ``held`` and waits for
        ``g`` before it runs ``argv``.  ``privileges``: its groups,
        capabilities and seccomp filter (sandbox.Privileges).  ``console``: a socket
        connected to a console socket (Launch.console), ``console_size``
        (columns, rows) its terminal's first size."""
        from umld.core.host import Host, Launch, spawn_failure
        from umld.core.terminal import controlling_tty
        from umld.errors import UmldError

        if not argv:
            raise UsageError("no command given")
        cfg = self.config
        if cwd is None:
            try:
                cwd = os.getcwd()
            except OSError as exc:
                raise UmldError(
                    f"umld: the working directory is gone ({exc.strerror}): "
                    "cd somewhere, or give -C DIR",
                    125,
                ) from None
            explicit_cwd = False
        else:
            explicit_cwd = True
        terminal_size = console_size or (_caller_size() if cfg.tty else None)
        host = Host(cfg.tracer, host_signals=TERMINATING_SIGNALS)
        host.open()
        try:
            launch = Launch(
                env=dict(os.environ if env is None else env),
                cwd=cwd,
                # The caller's directory is the guest's when the guest's /
                # is the host's (an error when it cannot be there: never a
                # silent /); another root (--root) starts in / as chroot(1)
                # does when the directory is not in it.
                cwd_strict=explicit_cwd or cfg.root is None,
                live=on_start is not None if live is None else live,
                # With a terminal of its own the guest never gets the
                # caller's (umld run --tty attaches to it instead).
                tty=None if cfg.tty else controlling_tty(),
                terminal_size=terminal_size,
                sigmask=host.caller_mask,
                trace_output=(cfg.trace_output or sys.stderr) if cfg.trace else None,
                hold=hold,
                privileges=privileges,
                console=console,
            )
            m = host.start_machine(cfg, argv, launch=launch, on_control=on_start)
            self.kernel, self.control, self._hosted = m.kernel, m.control, m
            host.serve(until=m.exited.is_set)
        finally:
            host.close()
            disks = sys.modules.get("umld.core.fusedisk")
            if disks is not None:
                # fuse2fs flushes an ordinary user's disk images after the
                # machine: the next run finds them free and clean.
                disks.wait_all()
        failure = spawn_failure(m)
        if failure is not None:
            raise failure
        assert m.status is not None
        return RunResult(m.status, procfs.returncode(m.status))
