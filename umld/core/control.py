"""MachineControl: a running machine as settings, processes and counters.

What the export (and the daemon, and scripts) may see and change of a
machine while it runs.  Every method may be called from any thread: reads
take snapshots of the kernel's tables (a list() of a dict is one step
under the GIL), and changes that need the tracer thread are handed to it
with :meth:`GuestKernel.call_soon`, waiting until they are applied so a
setting written through the export is in force when the write returns.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, final

from umld.core.events import GuestEvent
from umld.core.sandbox import cpu_list, cpuinfo_for, meminfo_for, parse_size
from umld.core.syscalls.sys_utsname import UTS_LEN
from umld.errors import UsageError, get_logger
from umld.tracer.events import Tid

if TYPE_CHECKING:
    from umld.core.kernel import GuestKernel
    from umld.core.sandbox import MachineFiles

log = get_logger("umld.control")

#: limits/nproc of a new machine: processes and threads, together (the
#: pids controller counts tasks; podman's default is 2048).
DEFAULT_NPROC = 4096


class SettingError(ValueError):
    """A value a setting refuses; the message says why."""


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


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _limit(text: str) -> int:
    if text == "unlimited":
        return resource.RLIM_INFINITY
    # The length first: int() of thousands of digits raises ValueError.
    if not text.isdigit() or len(text) > 10 or not 0 < int(text) < 1 << 31:
        raise SettingError(f"{text!r} is not a positive number or 'unlimited'")
    return int(text)


@final
class MachineControl:
    """Live view and control of one running machine."""

    SETTINGS = (
        "hostname",
        "vcpus",
        "memory",
        "uid",
        "gid",
        "trace",
        "net/accept",
        "net/connect",
        "limits/nproc",
        "limits/nofile",
    )

    def __init__(
        self,
        kernel: GuestKernel,
        files: MachineFiles,
        *,
        name: str,
        uid: int,
        gid: int,
        vcpus: int,
        memory: int,
    ) -> None:
        self.kernel = kernel
        self.files = files
        self.name = name
        self.started = time.time()
        self._values: dict[str, str] = {
            "vcpus": str(vcpus),
            "memory": str(memory),
            "uid": str(uid),
            "gid": str(gid),
            "trace": "off",
            "limits/nproc": str(DEFAULT_NPROC),
            "limits/nofile": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        }
        #: Limits changed before the guest runs: given to the sandbox, so
        #: they hold from its first instruction (spawn_limits).
        self._spawn_limits: dict[str, str] = {"nproc": str(DEFAULT_NPROC)}
        if files.cgroup is not None:
            try:
                files.cgroup.set_pids_max(DEFAULT_NPROC)
            except OSError as exc:
                log.warning("pids cgroup of %s: %s", name, exc)

    # -- settings ----------------------------------------------------------

    def get(self, key: str) -> str:
        k = self.kernel
        if key == "hostname":
            return k.uts.nodename.decode(errors="replace")
        if key == "net/accept":
            return "open" if k.net_accept_open else "closed"
        if key == "net/connect":
            return k.net_connect
        if key in self._values:
            return self._values[key]
        raise KeyError(key)

    def set(self, key: str, text: str, *, source: str = "export") -> None:
        """Validate ``text`` and apply it; SettingError (nothing changed,
        the reason in the event stream) when it is not acceptable."""
        value = text.strip()
        try:
            self._apply(key, value)
        except SettingError as exc:
            self.kernel.emit("config", 0, f"{key}: rejected {value[:80]!r} from {source}: {exc}")
            raise
        self.kernel.emit("config", 0, f"{key}={value} by {source}")

    def _apply(self, key: str, value: str) -> None:
        k = self.kernel
        if "\n" in value or "\0" in value:
            raise SettingError("one line expected")
        if key == "hostname":
            raw = value.encode()
            if not raw or len(raw) > UTS_LEN:
                raise SettingError(f"a host name is 1 to {UTS_LEN} bytes")
            k.uts.nodename = raw
            if k.root_pid is not None and k.root_status is None:
                _set_guest_hostname(k.root_pid, raw)
        elif key == "vcpus":
            if not value.isdigit() or len(value) > 4 or not 1 <= int(value) <= 1024:
                raise SettingError("a number from 1 to 1024")
            n = int(value)
            self.files.write("/proc/cpuinfo", cpuinfo_for(n))
            self.files.write("/sys/devices/system/cpu/online", cpu_list(n))
            k.vcpus = n
            self._values[key] = str(n)
        elif key == "memory":
            if len(value) > 24:
                raise SettingError("a size such as 512M or 4G")
            try:
                size = parse_size(value)
            except (UsageError, ValueError, OverflowError):
                raise SettingError("a size such as 512M or 4G") from None
            if not 1 << 20 <= size <= 1 << 50:
                raise SettingError("from 1M to 1P")
            self.files.write("/proc/meminfo", meminfo_for(size))
            self._values[key] = str(size)
        elif key in ("uid", "gid"):
            if value != self._values[key]:
                raise SettingError(
                    f"the {key} of running processes cannot change; start the machine with --{key}"
                )
        elif key == "trace":
            if value not in ("off", "syscalls"):
                raise SettingError("'off' or 'syscalls'")
            k.trace_events = value == "syscalls"
            self._values[key] = value
        elif key == "net/accept":
            if value not in ("open", "closed"):
                raise SettingError("'open' or 'closed'")
            is_open = value == "open"
            if k.root_pid is None or k.finished:
                # No tracer loop yet (a --config-dir read before the start,
                # on the thread that is about to run the loop) or any more:
                # no thread is held, and nobody would run a call_soon.
                k.net_accept_open = is_open
            elif not k.call_soon(lambda: k.set_accept_open(is_open), wait=5.0):
                k.net_accept_open = is_open
        elif key == "net/connect":
            if value not in ("allow", "loopback", "deny"):
                raise SettingError("'allow', 'loopback' or 'deny'")
            k.net_connect = value
        elif key in ("limits/nproc", "limits/nofile"):
            n = _limit(value)
            which = resource.RLIMIT_NPROC if key == "limits/nproc" else resource.RLIMIT_NOFILE
            if which == resource.RLIMIT_NOFILE and n > _nr_open():
                raise SettingError(f"more than the kernel's nr_open ({_nr_open()})")
            # Limits are per process and inherited (getrlimit(2)): set them
            # on every guest process now; later ones inherit them.
            # RLIMIT_NPROC is counted per user namespace, so it bounds the
            # guest's processes, not the host user's.
            pids = self._guest_host_pids()
            for pid in pids:
                try:
                    resource.prlimit(pid, which, (n, n))
                except (ProcessLookupError, PermissionError):
                    continue
            self._spawn_limits[key.split("/")[1]] = value
            if which == resource.RLIMIT_NPROC and self.files.cgroup is not None:
                # The pids controller bounds the whole machine, whatever
                # its ids (the kernel never applies RLIMIT_NPROC to a root
                # that is the host's, --unsafe-host-ids); fork(2) then
                # fails with EAGAIN, as with the rlimit.
                try:
                    self.files.cgroup.set_pids_max(None if n == resource.RLIM_INFINITY else n)
                except OSError as exc:
                    log.warning("pids cgroup of %s: %s", self.name, exc)
            self._values[key] = value
        else:
            raise SettingError(f"no setting {key!r}")

    def spawn_limits(self) -> list[tuple[str, str]]:
        """(nproc|nofile, value) for the sandbox: the limits in force when
        the guest starts (the defaults, and what --config-dir set)."""
        return sorted(self._spawn_limits.items())

    @property
    def cgroups(self) -> list[str]:
        """The machine's cgroup directories (what a new process joins)."""
        return self.files.cgroup.paths if self.files.cgroup is not None else []

    def close(self) -> None:
        """Nothing of the machine is left to remove here: its cgroups and
        files go with MachineFiles."""

    def is_guest_thread(self, tid: int) -> bool:
        """Whether host thread ``tid`` is one of the machine's (a guest
        thread, its init, or a sandbox entering it): every one is traced,
        and known here before it runs a guest instruction.  Any thread;
        one dictionary lookup."""
        return Tid(tid) in self.kernel.tasks

    def _guest_host_pids(self) -> list[int]:
        internal = self.kernel.internal
        return [int(p) for p in list(self.kernel.processes) if Tid(p) not in internal]

    # -- processes ---------------------------------------------------------

    def processes(self) -> list[ProcessInfo]:
        out = []
        for host in self._guest_host_pids():
            info = self.process_by_host(host)
            if info is not None:
                out.append(info)
        return out

    def pids(self) -> dict[int, int]:
        """Guest pid -> host pid of every live guest process, from the
        kernel's tables alone (cheap: what a directory listing needs)."""
        k = self.kernel
        out = {}
        for host in self._guest_host_pids():
            pid = k.guest_pid(host)
            if pid > 0:
                out[pid] = host
        return out

    def host_pid(self, pid: int) -> int | None:
        """The host pid of guest pid ``pid``, while it is a guest process."""
        return self.pids().get(pid)

    def process_by_host(self, host: int) -> ProcessInfo | None:
        k = self.kernel
        group = k.processes.get(host)  # type: ignore[call-overload]
        if group is None:
            return None
        try:
            status = _read(f"/proc/{host}/status")
            stat = _read(f"/proc/{host}/stat")
        except OSError:
            return None
        fields: dict[bytes, bytes] = {}
        for line in status.splitlines():
            key, _, value = line.partition(b":")
            fields[key] = value.strip()
        ppid_host = int(fields.get(b"PPid", b"0") or 0)
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
            name=fields.get(b"Name", b"?").decode(errors="replace"),
            state=fields.get(b"State", b"?").decode(errors="replace"),
            threads=len(threads),
            uid=int((fields.get(b"Uid", b"0").split() or [b"0"])[0]),
            gid=int((fields.get(b"Gid", b"0").split() or [b"0"])[0]),
            syscall=syscall,
            cpu_ticks=ticks,
        )

    def process_status(self, pid: int) -> bytes:
        host = self.host_pid(pid)
        info = self.process_by_host(host) if host is not None else None
        if info is None:
            raise ProcessLookupError(pid)
        return (
            f"Pid:\t{info.pid}\nPPid:\t{info.ppid}\nName:\t{info.name}\nState:\t{info.state}\n"
            f"Uid:\t{info.uid}\nGid:\t{info.gid}\nThreads:\t{info.threads}\n"
            f"Syscall:\t{info.syscall}\nCpuTicks:\t{info.cpu_ticks}\nHostPid:\t{info.host_pid}\n"
        ).encode()

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

    def control_process(self, pid: int, command: str) -> None:
        """``stop``, ``cont``, ``kill`` or ``signal NAME`` for one process."""
        words = command.split()
        if not words:
            raise SettingError("empty command")
        verb = words[0]
        if verb == "stop" and len(words) == 1:
            sig = signal.SIGSTOP
        elif verb == "cont" and len(words) == 1:
            sig = signal.SIGCONT
        elif verb == "kill" and len(words) == 1:
            sig = signal.SIGKILL
        elif verb == "signal" and len(words) == 2:
            sig = signal_from_name(words[1])
        else:
            raise SettingError(f"unknown command {command!r} (stop, cont, kill, signal NAME)")
        host = self.host_pid(pid)
        if host is None:
            raise ProcessLookupError(pid)
        os.kill(host, sig)
        self.kernel.emit("signal", host, f"{sig.name} sent by the export")

    def control_machine(self, command: str) -> None:
        """``pause``, ``resume`` or ``halt``."""
        verb = command.strip()
        if verb in ("pause", "resume"):
            sig = signal.SIGSTOP if verb == "pause" else signal.SIGCONT
            for host in self._guest_host_pids():
                try:
                    os.kill(host, sig)
                except ProcessLookupError:
                    continue
        elif verb == "halt":
            k = self.kernel
            k.call_soon(lambda: k.request_termination(signal.SIGTERM))
        else:
            raise SettingError(f"unknown command {verb!r} (pause, resume, halt)")
        self.kernel.emit("config", 0, f"machine {verb}")

    # -- status and metrics ------------------------------------------------

    def uptime(self) -> float:
        return time.time() - self.started

    def status(self) -> bytes:
        stats = self.kernel.statistics()
        lines = [
            f"name: {self.name}",
            f"uptime: {self.uptime():.1f}",
            f"processes: {stats['live_processes']}",
            f"threads: {stats['live_threads']}",
            f"trapped: {stats['trapped']}",
        ]
        calls = stats.get("syscalls")
        if isinstance(calls, dict) and calls:
            lines.append("syscalls: " + " ".join(f"{k}={v}" for k, v in calls.items()))
        lines += [f"config.{key}: {self.get(key)}" for key in self.SETTINGS]
        return ("\n".join(lines) + "\n").encode()

    def metrics(self) -> bytes:
        """The counters in Prometheus text exposition format 0.0.4."""
        stats = self.kernel.statistics()
        label = f'machine="{self.name}"'
        out = [
            "# HELP umld_uptime_seconds Time since the machine started.",
            "# TYPE umld_uptime_seconds gauge",
            f"umld_uptime_seconds{{{label}}} {self.uptime():.3f}",
            "# HELP umld_processes Live guest processes.",
            "# TYPE umld_processes gauge",
            f"umld_processes{{{label}}} {stats['live_processes']}",
            "# HELP umld_threads Live guest threads.",
            "# TYPE umld_threads gauge",
            f"umld_threads{{{label}}} {stats['live_threads']}",
        ]
        for key, help_text in (
            ("processes", "Guest processes started."),
            ("execs", "execve calls that succeeded."),
            ("signals", "Signals delivered to guest threads."),
            ("denied", "Syscalls refused by policy."),
        ):
            out += [
                f"# HELP umld_{key}_total {help_text}",
                f"# TYPE umld_{key}_total counter",
                f"umld_{key}_total{{{label}}} {stats.get(key, 0)}",
            ]
        out += [
            "# HELP umld_syscalls_trapped_total Syscalls stopped by the seccomp filter.",
            "# TYPE umld_syscalls_trapped_total counter",
        ]
        calls = stats.get("syscalls")
        if isinstance(calls, dict):
            for name, n in calls.items():
                out.append(f'umld_syscalls_trapped_total{{{label},syscall="{name}"}} {n}')
        return ("\n".join(out) + "\n").encode()

    # -- files and events --------------------------------------------------

    def guest_root(self) -> int:
        """An O_PATH descriptor of the guest's / (its mounts applied), for
        the export's fs/ view.  The caller closes it."""
        # Until the guest's first process runs, root_pid is the sandbox
        # stage, whose root is a staging directory: wait for the guest.
        self.kernel.started.wait(5)
        root = self.kernel.root_pid
        if root is None or not self.kernel.root_found:
            raise ProcessLookupError(0)
        return os.open(f"/proc/{root}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def subscribe(self, listener: Callable[[GuestEvent], None]) -> None:
        """``listener`` gets every event, on the tracer thread: it must be
        quick and thread-safe."""
        self.kernel.listeners.append(listener)


def _set_guest_hostname(pid: int, name: bytes) -> None:
    """sethostname(2) in the UTS namespace of guest process ``pid``, from a
    thread of its own: a thread may join another UTS namespace (setns(2)),
    and the change of namespace ends with it."""
    import ctypes
    import threading

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if libc.setns(fd, 0x04000000) != 0 or libc.sethostname(name, len(name)) != 0:
                log.warning("guest hostname: %s", os.strerror(ctypes.get_errno()))
        finally:
            os.close(fd)

    t = threading.Thread(target=work, name="umld-uts")
    t.start()
    t.join(5)


def _nr_open() -> int:
    try:
        return int(_read("/proc/sys/fs/nr_open"))
    except (OSError, ValueError):
        return 1 << 20
