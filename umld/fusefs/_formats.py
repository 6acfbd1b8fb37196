"""How the export shows a machine: its status file, its metrics in
Prometheus' text format, a process's status file, its diff.  The
machine's control gives the data; the formats are the export's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from umld.core import Change, MachineControl, ProcessInfo


def status(control: MachineControl) -> bytes:
    """``status``: name, uptime, counts, trapped calls, live settings."""
    stats = control.statistics()
    lines = [
        f"name: {control.name}",
        f"uptime: {control.uptime():.1f}",
        f"processes: {stats['live_processes']}",
        f"threads: {stats['live_threads']}",
        f"trapped: {stats['trapped']}",
    ]
    calls = stats.get("syscalls")
    if isinstance(calls, dict) and calls:
        lines.append("syscalls: " + " ".join(f"{k}={v}" for k, v in calls.items()))
    lines += [f"{key}: {value}" for key, value in control.resources().items()]
    for iface, counts in control.net_counters().items():
        lines += [f"net.{iface}.{key}: {n}" for key, n in zip(_NET_KEYS, counts, strict=True)]
    lines += [f"config.{key}: {value}" for key, value in control.settings().items()]
    return ("\n".join(lines) + "\n").encode()


_COUNTERS = (
    ("processes", "Guest processes started."),
    ("execs", "execve calls that succeeded."),
    ("signals", "Signals delivered to guest threads."),
    ("denied", "Syscalls refused by policy."),
    ("oom_kills", "Guest processes the kernel's OOM killer killed in the machine."),
)


#: The counters of one interface (MachineControl.net_counters), in order.
_NET_KEYS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
_NET_METRICS = (
    ("receive_bytes", "Bytes the machine's interface received."),
    ("receive_packets", "Packets the machine's interface received."),
    ("transmit_bytes", "Bytes the machine's interface sent."),
    ("transmit_packets", "Packets the machine's interface sent."),
)

#: What the machine's cgroups count (MachineControl.resources).
_RESOURCES = {
    "cpu_seconds_total": ("counter", "CPU time the machine used."),
    "cpu_throttled_seconds_total": ("counter", "Time the machine waited at its vCPU quota."),
    "memory_bytes": ("gauge", "Memory charged to the machine."),
    "memory_limit_bytes": ("gauge", "The machine's memory limit."),
}


def metrics(control: MachineControl) -> bytes:
    """``metrics.prom``: the counters in Prometheus text format 0.0.4."""
    stats = control.statistics()
    label = f'machine="{control.name}"'
    out = [
        "# HELP umld_uptime_seconds Time since the machine started.",
        "# TYPE umld_uptime_seconds gauge",
        f"umld_uptime_seconds{{{label}}} {control.uptime():.3f}",
        "# HELP umld_processes Live guest processes.",
        "# TYPE umld_processes gauge",
        f"umld_processes{{{label}}} {stats['live_processes']}",
        "# HELP umld_threads Live guest threads.",
        "# TYPE umld_threads gauge",
        f"umld_threads{{{label}}} {stats['live_threads']}",
    ]
    for key, help_text in _COUNTERS:
        out += [
            f"# HELP umld_{key}_total {help_text}",
            f"# TYPE umld_{key}_total counter",
            f"umld_{key}_total{{{label}}} {stats.get(key, 0)}",
        ]
    out += [
        "# HELP umld_syscalls_trapped_total Syscalls stopped by the seccomp filter.",
        "# TYPE umld_syscalls_trapped_total counter",
    ]
    for key, (kind, help_text) in _RESOURCES.items():
        value = control.resources().get(key)
        if value is not None:
            out += [
                f"# HELP umld_{key} {help_text}",
                f"# TYPE umld_{key} {kind}",
                f"umld_{key}{{{label}}} {value}",
            ]
    net = control.net_counters()
    if net:
        for i, (key, help_text) in enumerate(_NET_METRICS):
            out += [
                f"# HELP umld_net_{key}_total {help_text}",
                f"# TYPE umld_net_{key}_total counter",
            ]
            for iface, counts in net.items():
                out.append(f'umld_net_{key}_total{{{label},interface="{iface}"}} {counts[i]}')
    calls = stats.get("syscalls")
    if isinstance(calls, dict):
        for name, n in calls.items():
            out.append(f'umld_syscalls_trapped_total{{{label},syscall="{name}"}} {n}')
    return ("\n".join(out) + "\n").encode()


def interfaces(control: MachineControl) -> bytes:
    """``net/interfaces``: one line per interface of the machine's network
    namespace: name, MAC, state, its addresses (CIDR)."""
    lines = [" ".join([name, mac or "-", state, *addrs]) for name, mac, state, addrs in
             control.net_interfaces()]  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def ports(control: MachineControl) -> bytes:
    """``net/ports``: one line per host port that reaches the guest: the
    protocol, the host's address:port, the guest's port, and how
    (``publish`` or ``auto``)."""
    return "".join(f"{row.text()}\n" for row in control.net_ports()).encode()


def process_status(info: ProcessInfo) -> bytes:
    """``proc/PID/status``, in /proc's "Key:\\tvalue" form."""
    return (
        f"Pid:\t{info.pid}\nPPid:\t{info.ppid}\nName:\t{info.name}\nState:\t{info.state}\n"
        f"Uid:\t{info.uid}\nGid:\t{info.gid}\nThreads:\t{info.threads}\n"
        f"Syscall:\t{info.syscall}\nCpuTicks:\t{info.cpu_ticks}\nHostPid:\t{info.host_pid}\n"
    ).encode()


def diff(changes: Sequence[Change]) -> bytes:
    """The machine's diff file (and ``umld diff``): ``A path``, ``M path``
    or ``D path`` per change, sorted by path, a directory's ending in /."""
    return "".join(c.line() + "\n" for c in changes).encode()


# -- ui/: a machine's own terminal (a TerminalSnapshot of umld.core.tty) ------


def ui_screen(snap: Any) -> bytes:
    """``ui/screen``: one line per row, trailing spaces removed."""
    return str(snap.text()).encode()


def ui_ansi(snap: Any) -> bytes:
    """``ui/screen.ansi``: the rows with SGR colours and attributes."""
    return str(snap.ansi()).encode()


def ui_cursor(snap: Any) -> bytes:
    """``ui/cursor``: ``ROW COL``, 1-based."""
    row, col = snap.cursor
    return f"{row + 1} {col + 1}\n".encode()


def ui_size(snap: Any) -> bytes:
    """``ui/size``: ``COLS ROWS``."""
    return f"{snap.columns} {snap.lines}\n".encode()


def ui_title(snap: Any) -> bytes:
    """``ui/title``: the title the program set (sanitised), one line."""
    return f"{snap.title}\n".encode()


def ui_frame(snap: Any) -> bytes:
    """``ui/frame``: what ``umld attach`` draws (positioned rows, cursor)."""
    return str(snap.frame()).encode()


def ui_scrollback(lines: Sequence[str]) -> bytes:
    """``ui/scrollback``: the lines that scrolled off, oldest first."""
    return "".join(line + "\n" for line in lines).encode()
