"""MachineControl: a running machine as settings, processes and counters.

What the export, the daemon, the --config-dir watcher and the Python API
may see and change of a machine while it runs: its live settings (the
live rows of :mod:`umld.core.settings`), its processes as the guest sees
them, its counters, and commands (signals, pause, halt).  Data only: how
the export shows it (status, metrics, a process's status file) is the
export's business.

Every method may be called from any thread.  Reads take snapshots of the
kernel's tables (a list() of a dict is one step under the GIL); what must
happen on the tracer thread is handed to it with ``on_tracer`` (the
Host's call), and a setting written through the export is in force when
the write returns.  Calls that may wait (a setting applied on the tracer
thread, the guest's host name set in its namespace, the guest's root
before the guest runs) say so in their docstrings: the export runs them
off its event loop.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, final

from umld.core import changes, devices, procfs, settings
from umld.core.changes import Change, Unit
from umld.core.cpushare import KEEPER
from umld.core.events import GuestEvent
from umld.core.iobus import IoBus
from umld.core.policy import MachinePolicy
from umld.core.settings import SettingError
from umld.errors import get_logger
from umld.tracer.events import Tid

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.machine import Config
    from umld.core.ports import Forward
    from umld.core.sandbox import MachineFiles
    from umld.core.tty import MachineTerminal, TerminalSnapshot

log = get_logger("umld.control")
T = TypeVar("T")

__all__ = [
    "MachineControl",
    "NoTerminal",
    "ProcessInfo",
    "SettingError",
    "queue_signal",
    "signal_from_name",
    "sigval_from_text",
]


class NoTerminal(Exception):
    """The machine has no terminal of its own (no tty setting), or it is
    gone (TerminalEnded: the program ended)."""


class ProcessInfo(NamedTuple):
    """One guest process as the guest sees it (pids of its namespace)."""

    pid: int
    ppid: int
    host_pid: int
    name: str
    state: str
    threads: int
    uid: int
    gid: int
    syscall: str  # the call it is stopped in or running, or "running"
    cpu_ticks: int  # utime + stime, in clock ticks (proc(5))


_SIGNALS = {s.name: s for s in signal.Signals}


def signal_from_name(text: str) -> signal.Signals:
    name = text.strip().upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            raise SettingError(f"no signal number {name}") from None
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = _SIGNALS.get(name)
    if sig is None:
        raise SettingError(f"unknown signal {text.strip()!r}")
    return sig


def sigval_from_text(text: str) -> int:
    """A signal's value (si_value.sival_int, an int): decimal, or 0x hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise SettingError(f"the value {text!r} is not an integer") from None
    if not -(1 << 31) <= value < 1 << 31:
        raise SettingError(f"the value {text} is not a 32-bit int (sival_int)")
    return value


#: siginfo_t's si_code of a signal queued by sigqueue(3) (asm-generic/siginfo.h).
SI_QUEUE = -1
#: rt_sigqueueinfo(2)'s number on x86_64 (asm/unistd_64.h).
_NR_RT_SIGQUEUEINFO = 129


def queue_signal(tgid: int, sig: int, value: int, *, uid: int) -> None:
    """Queue ``sig`` to host process ``tgid`` with rt_sigqueueinfo(2):
    si_code SI_QUEUE, si_value.sival_int ``value``, si_pid 0, si_uid
    ``uid`` (a uid of umld's user namespace).

    What the guest's handler sees: si_pid 0, the pid Linux gives any
    signal from outside the receiver's pid namespace (the kernel sets it
    so, send_signal_locked() in kernel/signal.c: umld is in an ancestor
    namespace), and si_uid translated into the guest's user namespace
    (so ``uid`` is the host id of the guest's uid 0: the machine's root
    sent it; see :func:`_root_uid`).  ProcessLookupError once the
    process is gone."""
    import ctypes
    import struct

    # The x86_64 siginfo_t: si_signo, si_errno, si_code, padding; then
    # _rt at offset 16: si_pid, si_uid, si_value (a union of int and
    # pointer: sival_int in its low four bytes).  128 bytes in all.
    info = struct.pack("=iiiiIIq", sig, 0, SI_QUEUE, 0, 0, uid, value & 0xFFFF_FFFF)
    buf = ctypes.create_string_buffer(info.ljust(128, b"\0"), 128)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_NR_RT_SIGQUEUEINFO, tgid, sig, buf) != 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessLookupError(tgid)
        raise OSError(err, f"rt_sigqueueinfo: {os.strerror(err)}")


def _root_uid(host: int) -> int:
    """The uid of umld's user namespace that is uid 0 in process
    ``host``'s (its /proc/PID/uid_map, user_namespaces(7): read from
    another namespace, the second field is in the reader's): the
    machine's root, in a machine run by root.  A machine run by another
    user maps that user's uid alone and has no root: then that uid (the
    process's owner)."""
    root = procfs.map_id(host, "uid_map", 0)
    if root is not None:
        return root
    try:
        return os.stat(f"/proc/{host}").st_uid
    except OSError:
        return os.geteuid()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@final
class MachineControl:
    """Live view and control of one running machine."""

    def __init__(
        self,
        kernel: GuestKernel,
        files: MachineFiles,
        *,
        config: Config,
        name: str,
        uid: int,
        gid: int,
        vcpus: int,
        memory: int,
        on_tracer: Callable[[Callable[[], Any]], Any],
        terminal: MachineTerminal | None = None,
    ) -> None:
        self.kernel = kernel
        self._terminal = terminal
        # The machine's I/O-port bus (the kernel's: the guest's port I/O
        # reaches it) gets COM1's UART, the POST port and the CMOS/RTC
        # (umld.core.devices); a user may attach more.
        for device in devices.machine_devices(kernel.iobus.on_event):
            kernel.iobus.attach(device)
        self.files = files
        self.name = name
        #: The machine's network (the net setting: user, none, host, vde:PATH).
        self.net_mode = config.net
        #: Whether the guest's / is the host's, copy-on-write (changes()).
        self.copy_on_write = config.root is None and not config.root_readonly
        # What the machine mounts over its root (not changes of the host's).
        self._mount_points = {m.target for m in config.mounts}
        #: time.time() of the machine's start.
        self.started_at = time.time()
        self._on_tracer = on_tracer
        # The live settings' values as set (a row's `current` reads what
        # the guest may have changed itself).
        self._values: dict[str, Any] = {
            row.key: getattr(config, row.attr) if row.start else row.default
            for row in settings.LIVE
        }
        self._values.update(uid=uid, gid=gid, vcpus=vcpus, memory=memory)
        if self._values["limits/nofile"] is None:
            self._values["limits/nofile"] = _soft_nofile()
        policy = kernel.policy
        policy.net_accept_open = self._values["net/accept"] == "open"
        policy.net_connect = self._values["net/connect"]
        #: Limits given to the sandbox, so that they hold from the guest's
        #: first instruction (spawn_limits): the defaults, what the config
        #: and a --config-dir say before the start.
        self._spawn_limits: dict[str, str] = {"nproc": str(self._values["limits/nproc"])}
        if config.limits_nofile is not None:
            self._spawn_limits["nofile"] = str(config.limits_nofile)
        if files.cgroup is not None:
            try:
                files.cgroup.set_pids_max(
                    None
                    if self._values["limits/nproc"] == settings.UNLIMITED
                    else self._values["limits/nproc"]
                )
            except OSError as exc:
                log.warning("pids cgroup of %s: %s", name, exc)
            self.watch_oom()
        if files.cgroup is not None:
            kernel.policy.cpus = files.cgroup.cpus

    @property
    def policy(self) -> MachinePolicy:
        return self.kernel.policy

    # -- the I/O bus's devices (umld.core.devices) ---------------------------------

    @property
    def uart(self) -> devices.Uart16550:
        """COM1 (``dev/ttyS0``)."""
        device = self.iobus.device("ttyS0")
        assert isinstance(device, devices.Uart16550)
        return device

    @property
    def post(self) -> devices.PostPort:
        """The POST diagnostic port 0x80 (``dev/post``)."""
        device = self.iobus.device("post")
        assert isinstance(device, devices.PostPort)
        return device

    # -- settings (the live rows of umld.core.settings) --------------------------

    def get(self, key: str) -> str:
        """The value of live setting ``key`` as text; KeyError if none."""
        row = settings.BY_KEY.get(key)
        if row is None or not row.live:
            raise KeyError(key)
        value = row.current(self) if row.current is not None else self._values[key]
        return row.text(value)

    def set(self, key: str, text: str, *, source: str = "export") -> None:
        """Parse ``text`` with the setting's row and apply it; SettingError
        (nothing changed, the reason in the event stream) when refused.
        May wait: a change that applies on the tracer thread is in force
        when this returns."""
        row = settings.BY_KEY.get(key)
        if row is None or not row.live or row.apply is None:
            raise SettingError(f"no live setting {key!r}")
        try:
            value = row.type.parse(text)
            if key in ("uid", "gid") and value == self._values[key]:
                pass  # the value it has: nothing to change
            else:
                row.apply(self, value)
        except SettingError as exc:
            shown = text.strip()[:80]
            self.kernel.emit("config", 0, f"{key}: rejected {shown!r} from {source}: {exc}")
            raise
        self._values[key] = value
        if key.startswith("limits/") and not self.kernel.up.is_set():
            self._spawn_limits[key.split("/")[1]] = row.text(value)
        self.kernel.emit("config", 0, f"{key}={row.text(value)} by {source}")

    @property
    def iobus(self) -> IoBus:
        """The machine's I/O-port bus (umld/core/iobus.py): attach a device
        (``control.iobus.attach(device)``) and the guest's port I/O after
        ioperm(2) or iopl(2) reaches it.  Any thread."""
        return self.kernel.iobus

    def report(self, text: str) -> None:
        """A line in the machine's event stream (``config`` kind), for
        what the export refuses before a setting sees it."""
        self.kernel.emit("config", 0, text)

    def spawn_limits(self) -> list[tuple[str, str]]:
        """(nproc|nofile, value) for the sandbox: the limits in force when
        the guest starts."""
        return sorted(self._spawn_limits.items())

    @property
    def cgroups(self) -> list[str]:
        """The machine's cgroup directories (what a new process joins)."""
        return self.files.cgroup.paths if self.files.cgroup is not None else []

    def close(self) -> None:
        """The machine has ended: its terminal's reader stops (the final
        screen stays readable); the machine's cgroups and files go with
        its MachineFiles."""
        KEEPER.remove(self)
        if self._terminal is not None:
            self._terminal.close()

    def watch_oom(self) -> None:
        """With a memory limit, the guest kernel names the OOM killer's
        victims (``oom`` events): it keeps each process's name at exec.
        Without one it does not, so that an exec reads no /proc file for
        an event that the machine's own limit cannot cause."""
        cgroup = self.files.cgroup
        if cgroup is not None and cgroup.memory_limit() is not None:
            if cgroup.oom_kills() is not None:
                self.kernel.oom_kills = cgroup.oom_kills

    def started(self) -> None:
        """The guest runs: from now cpushare's keeper keeps its usage
        files fresh and its CPU share (not before: a start that fails
        leaves no thread working on a machine that is not there)."""
        KEEPER.add(self)

    def resources(self) -> dict[str, str]:
        """What the machine's cgroups count: cpu_seconds_total,
        cpu_throttled_seconds_total, memory_bytes, memory_limit_bytes (the
        ones it has)."""
        cgroup = self.files.cgroup
        if cgroup is None:
            return {}
        out: dict[str, str] = {}
        cpu = cgroup.cpu_stats()
        if "usage_usec" in cpu:
            out["cpu_seconds_total"] = f"{cpu['usage_usec'] / 1e6:.3f}"
        if "throttled_usec" in cpu:
            out["cpu_throttled_seconds_total"] = f"{cpu['throttled_usec'] / 1e6:.3f}"
        used, limit = cgroup.memory_usage(), cgroup.memory_limit()
        if used is not None:
            out["memory_bytes"] = str(used)
        if limit is not None:
            out["memory_limit_bytes"] = str(limit)
        return out

    def net_counters(self) -> dict[str, tuple[int, int, int, int]]:
        """Per interface of the machine's own network namespace: received
        bytes and packets, sent bytes and packets (none with --net host:
        those are the host's)."""
        net = self.files.net
        return {} if net is None else {k: tuple(v) for k, v in net.counters().items()}  # type: ignore[misc]

    def net_ports(self) -> list[Forward]:
        """The host's ports that reach the guest's (--publish and the
        automatic forwards); none without a network of its own."""
        from umld.core import net

        return net.ports(self)

    def net_interfaces(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """The interfaces of the machine's network namespace: (name, MAC,
        state, addresses in CIDR form).  May wait (ip(8) runs in the
        namespace).  SettingError when there is no namespace of its own."""
        net = self.files.net
        if net is None:
            raise SettingError(f"--net {self.net_mode}: the host's interfaces")
        try:
            return [tuple(i) for i in net.interfaces()]  # type: ignore[misc]
        except ValueError as exc:
            raise SettingError(str(exc)) from None

    def memory_size(self) -> int:
        """The machine's memory setting in bytes (0: the host's)."""
        return int(self._values["memory"])

    # -- what live settings apply through (umld.core.live) ------------------------

    def on_tracer(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on the tracer thread and wait for it, while the
        machine runs; before (the config is read before the start) and
        after, nothing is held there and ``fn`` is not needed."""
        k = self.kernel
        if k.root_pid is None or k.finished:
            return None
        return self._on_tracer(fn)  # type: ignore[no-any-return]

    def release_held_accepts(self) -> None:
        self.kernel.release_held_accepts()

    def guest_process(self) -> int | None:
        """The host pid of the guest's first process while it runs its
        program (before, root_pid may still be the sandbox's stage, which
        is in the host's namespaces)."""
        k = self.kernel
        if k.root_pid is None or k.root_status is not None or not k.root_found:
            return None
        return k.root_pid if k.up.is_set() else None

    def guest_host_pids(self) -> list[int]:
        internal = self.kernel.internal
        return [int(p) for p in list(self.kernel.processes) if Tid(p) not in internal]

    def is_guest_thread(self, tid: int) -> bool:
        """Whether host thread ``tid`` is one of the machine's (a guest
        thread, its init, or a sandbox entering it): every one is traced,
        and known here before it runs a guest instruction.  Any thread;
        one dictionary lookup."""
        return Tid(tid) in self.kernel.tasks

    # -- processes -----------------------------------------------------------------

    def processes(self) -> list[ProcessInfo]:
        out = []
        for host in self.guest_host_pids():
            info = self.process_by_host(host)
            if info is not None:
                out.append(info)
        return out

    def pids(self) -> dict[int, int]:
        """Guest pid -> host pid of every live guest process, from the
        kernel's tables alone (cheap: what a directory listing needs)."""
        k = self.kernel
        out = {}
        for host in self.guest_host_pids():
            pid = k.guest_pid(host)
            if pid > 0:
                out[pid] = host
        return out

    def host_pid(self, pid: int) -> int | None:
        """The host pid of guest pid ``pid``, while it is a guest process:
        one lookup once known (the export asks in every request under
        proc/PID), else a scan of every process."""
        k = self.kernel
        host = k.known_host_pid(pid)
        if host is not None and host in k.processes and Tid(host) not in k.internal:
            return host
        return self.pids().get(pid)

    def process(self, pid: int) -> ProcessInfo:
        """Guest process ``pid``; ProcessLookupError once it is gone."""
        host = self.host_pid(pid)
        info = self.process_by_host(host) if host is not None else None
        if info is None:
            raise ProcessLookupError(pid)
        return info

    def process_by_host(self, host: int) -> ProcessInfo | None:
        k = self.kernel
        group = k.processes.get(host)  # type: ignore[call-overload]
        if group is None:
            return None
        fields = procfs.status(host)
        try:
            stat = _read(f"/proc/{host}/stat")
        except OSError:
            return None
        if not fields:
            return None
        ppid_host = int(fields.get("PPid", "0") or 0)
        ppid = k.guest_pid(ppid_host) if ppid_host else 0
        syscall = "running"
        threads = list(group.threads.values())
        for t in threads:
            if t.current_syscall >= 0:
                syscall = k.syscall_name(t.current_syscall)
                break
        if syscall == "running":
            try:
                nr = _read(f"/proc/{host}/syscall").split()[0]
                if nr.lstrip(b"-").isdigit() and int(nr) >= 0:
                    syscall = k.table.name(int(nr))
            except (OSError, IndexError):
                pass
        after = stat.rsplit(b")", 1)[-1].split()
        ticks = int(after[11]) + int(after[12]) if len(after) > 12 else 0
        return ProcessInfo(
            pid=k.guest_pid(host),
            ppid=ppid,
            host_pid=host,
            name=fields.get("Name", "?"),
            state=fields.get("State", "?"),
            threads=len(threads),
            uid=int((fields.get("Uid", "0").split() or ["0"])[0]),
            gid=int((fields.get("Gid", "0").split() or ["0"])[0]),
            syscall=syscall,
            cpu_ticks=ticks,
        )

    def process_file(self, pid: int, what: str) -> bytes:
        """cmdline, environ, cwd, exe, fds or syscalls of a guest process;
        ProcessLookupError once it is gone."""
        host = self.host_pid(pid)
        if host is None:
            raise ProcessLookupError(pid)
        try:
            if what in ("cmdline", "environ"):
                return _read(f"/proc/{host}/{what}")
            if what in ("cwd", "exe"):
                return os.fsencode(os.readlink(f"/proc/{host}/{what}")) + b"\n"
            if what == "fds":
                return self._fds(host)
            if what == "syscalls":
                group = self.kernel.processes.get(host)  # type: ignore[call-overload]
                if group is None:
                    raise ProcessLookupError(pid)
                name = self.kernel.syscall_name
                counts = group.syscall_counts()
                return "".join(f"{name(nr)} {n}\n" for nr, n in counts.most_common()).encode()
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        raise KeyError(what)

    @staticmethod
    def _fds(host: int) -> bytes:
        lines = []
        base = f"/proc/{host}/fd"
        for entry in sorted(os.listdir(base), key=int):
            try:
                target = os.readlink(f"{base}/{entry}")
                flags = b"0"
                for line in _read(f"/proc/{host}/fdinfo/{entry}").splitlines():
                    if line.startswith(b"flags:"):
                        flags = line.split()[1]
            except OSError:
                continue
            lines.append(f"{entry}\t{target}\t{flags.decode()}\n")
        return "".join(lines).encode()

    # -- host gdb (proc/PID/gdb) --------------------------------------------------------

    def gdb_session(self, pid: int, sock: socket.socket, stop_fd: int | None = None) -> None:
        """Serve gdb's remote protocol on ``sock`` for guest process
        ``pid`` until gdb goes (or ``stop_fd`` becomes readable), then
        leave the process running (umld/core/gdbstub.py).  Blocks: run
        it in a thread of its own.  A process that is gone, or already
        has a debugger, gets gdb an error reply and the session ends."""
        from umld.core.gdbstub import GdbServer

        server = GdbServer(
            self.kernel,
            self.host_pid(pid) or 0,
            self.on_tracer,
            exe=lambda: self.process_file(pid, "exe"),
        )
        server.serve(sock, stop_fd)

    # -- commands --------------------------------------------------------------------

    def control_process(self, pid: int, command: str) -> None:
        """``stop``, ``cont``, ``kill``, ``signal NAME`` or ``signal NAME
        VALUE`` for one process.  With a VALUE the signal is queued as
        rt_sigqueueinfo(2) does (:func:`queue_signal`); without, it is
        sent as kill(2) sends it (SI_USER).  A bad command is SettingError,
        the reason also in the events."""
        words = command.split()
        value: int | None = None
        try:
            if not words:
                raise SettingError("empty command")
            verb = words[0]
            if verb == "stop" and len(words) == 1:
                sig = signal.SIGSTOP
            elif verb == "cont" and len(words) == 1:
                sig = signal.SIGCONT
            elif verb == "kill" and len(words) == 1:
                sig = signal.SIGKILL
            elif verb == "signal" and len(words) in (2, 3):
                sig = signal_from_name(words[1])
                if len(words) == 3:
                    value = sigval_from_text(words[2])
            else:
                raise SettingError(
                    f"unknown command {command!r} (stop, cont, kill, signal NAME [VALUE])"
                )
        except SettingError as exc:
            self.report(f"proc/{pid}/ctl: refused {command.strip()[:80]!r}: {exc}")
            raise
        host = self.host_pid(pid)
        if host is None:
            raise ProcessLookupError(pid)
        if value is None:
            os.kill(host, sig)
            self.kernel.emit("signal", host, f"{sig.name} sent by the export")
            return
        queue_signal(host, sig, value, uid=_root_uid(host))
        self.kernel.emit("signal", host, f"{sig.name} value={value} queued by the export")

    def control_machine(self, command: str) -> None:
        """``pause``, ``resume`` or ``halt`` (may wait: halt asks on the
        tracer thread)."""
        verb = command.strip()
        if verb in ("pause", "resume"):
            sig = signal.SIGSTOP if verb == "pause" else signal.SIGCONT
            for host in self.guest_host_pids():
                try:
                    os.kill(host, sig)
                except ProcessLookupError:
                    continue
        elif verb == "halt":
            k = self.kernel
            self.on_tracer(lambda: k.request_termination(signal.SIGTERM))
        else:
            raise SettingError(f"unknown command {verb!r} (pause, resume, halt)")
        self.kernel.emit("config", 0, f"machine {verb}")

    # -- counters --------------------------------------------------------------------

    def uptime(self) -> float:
        return time.time() - self.started_at

    def statistics(self) -> dict[str, object]:
        """Counters since start (GuestKernel.statistics): trapped calls by
        name, processes, threads, execs, signals, denied, live counts."""
        return self.kernel.statistics()

    def settings(self) -> dict[str, str]:
        """Every live setting's value as text, by key: a monitor's read
        (``status``), which starts nothing (net.quiet_reads)."""
        from umld.core.net import quiet_reads

        with quiet_reads():
            return {row.key: self.get(row.key) for row in settings.LIVE}

    # -- files and events ----------------------------------------------------------

    def guest_root(self) -> int:
        """An O_PATH descriptor of the guest's / (its mounts applied), for
        the export's fs/ view; the caller closes it.  May wait (up to 5 s)
        for the guest to run: until then the first process is the sandbox,
        whose root is a staging directory."""
        self.kernel.up.wait(5)
        root = self.kernel.root_pid
        if root is None or not self.kernel.root_found:
            raise ProcessLookupError(0)
        return os.open(f"/proc/{root}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def guest_ids_on_host(self, uid: int, gid: int) -> tuple[int, int] | None:
        """The host's ids of the guest's ``uid`` and ``gid`` (the maps of
        its user namespace, user_namespaces(7)); None when either has no
        mapping or the guest does not run.  The ids a file the export
        creates for a host caller gets in a tree idmapped to the guest's
        ids (a root-run machine's binds), where the caller's own have
        none."""
        root = self.kernel.root_pid
        if root is None or not self.kernel.root_found:
            return None
        host_uid = procfs.map_id(root, "uid_map", uid)
        host_gid = procfs.map_id(root, "gid_map", gid)
        if host_uid is None or host_gid is None:
            return None
        return host_uid, host_gid

    def stage_root(self) -> int:
        """An O_PATH descriptor of the sandbox stage's root (the record of
        a copy-on-write root's overlays, :mod:`umld.core.changes`); the
        caller closes it.  ProcessLookupError once the machine is gone."""
        self.kernel.up.wait(5)
        stage = self.kernel.stage
        if stage is None or not self.copy_on_write:
            raise ProcessLookupError(0)
        try:
            return os.open(f"/proc/{stage}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessLookupError(stage) from None

    def upper_units(self) -> list[Unit]:
        """The overlays of a copy-on-write root (empty for another)."""
        try:
            root = self.stage_root()
        except ProcessLookupError:
            return []
        try:
            return changes.units(root)
        finally:
            os.close(root)

    def open_upper(self, unit: Unit) -> int:
        """An O_PATH descriptor of one overlay's upper layer (a read-only
        mount: what the guest wrote there); the caller closes it."""
        root = self.stage_root()
        try:
            return changes.open_upper(root, unit)
        finally:
            os.close(root)

    def changes(self) -> list[Change]:
        """What the guest changed on the host's tree (a copy-on-write
        root; empty for another), sorted by path."""
        try:
            root = self.stage_root()
        except ProcessLookupError:
            return []
        try:
            return changes.scan(root, self._mount_points)
        finally:
            os.close(root)

    # -- the machine's own terminal (the tty setting) ------------------------------

    @property
    def has_terminal(self) -> bool:
        return self._terminal is not None

    def _tty(self) -> MachineTerminal:
        if self._terminal is None:
            raise NoTerminal("the machine has no terminal of its own (start it with --tty)")
        return self._terminal

    def terminal_snapshot(self) -> TerminalSnapshot:
        """The screen, after every byte the program wrote before the call."""
        return self._tty().snapshot()

    def terminal_scrollback(self) -> list[str]:
        """The lines that scrolled off the top of the screen, oldest first."""
        return self._tty().scrollback()

    def type_input(self, data: bytes) -> None:
        """Type ``data`` as it is.  May wait (while the program does not
        read); NoTerminal once the terminal is gone."""
        from umld.core.tty import TerminalEnded

        try:
            self._tty().write(data)
        except TerminalEnded as exc:
            raise NoTerminal(str(exc)) from None

    def type_keys(self, data: bytes) -> None:
        """Type the keys ``data`` names, as ``tmux send-keys`` reads its
        arguments (:mod:`umld.core.keys`); SettingError (nothing typed, the
        reason in the events) when it is not UTF-8 text or holds a NUL.
        May wait, as :meth:`type_input`."""
        from umld.core import keys

        tty = self._tty()
        try:
            raw = keys.encode(data, app_cursor=tty.app_cursor())
        except keys.BadKeys as exc:
            self._refused("ui/keys", str(exc))
            raise SettingError(str(exc)) from None
        self.type_input(raw)

    def resize_terminal(self, text: str) -> None:
        """``COLS ROWS``: the terminal's new size (the program gets
        SIGWINCH); SettingError (the old size kept) when it is not one."""
        from umld.core.tty import parse_size

        tty = self._tty()
        try:
            columns, lines = parse_size(text)
        except ValueError as exc:
            self._refused("ui/size", str(exc))
            raise SettingError(str(exc)) from None
        tty.resize(columns, lines)

    def _refused(self, what: str, why: str) -> None:
        self.kernel.emit("config", 0, f"{what}: refused: {why}")
        if self._terminal is not None:
            self._terminal.note("refused", f"{what}: {why}")

    def subscribe_terminal(self, listener: Callable[[str | None], None]) -> None:
        """``listener(line)`` per change of the terminal (``TIME KIND
        TEXT``: screen, title, size, exit, refused), on the thread that saw
        it (quick and thread-safe); ``listener(None)`` when it is closed."""
        self._tty().subscribe(listener)

    def unsubscribe_terminal(self, listener: Callable[[str | None], None]) -> None:
        if self._terminal is not None:
            self._terminal.unsubscribe(listener)

    def subscribe(self, listener: Callable[[GuestEvent], None]) -> None:
        """``listener`` gets every event, on the tracer thread: it must be
        quick and thread-safe."""
        self.kernel.listeners.append(listener)

    def unsubscribe(self, listener: Callable[[GuestEvent], None]) -> None:
        try:
            self.kernel.listeners.remove(listener)
        except ValueError:
            pass


def _soft_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
