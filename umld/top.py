"""``umld top``: a live full-screen view of the daemon's machines and their
processes, built only from what the export shows (DIR/machines,
DIR/NAME/status, DIR/NAME/proc/PID/status).  CPU is the change of each
process's CpuTicks between two frames; syscalls/s the change of the
machine's trapped-syscall count; a machine's cpu (in CPUs, of its vCPUs),
throttled share and memory (of its limit) come from its cgroups."""

from __future__ import annotations

import curses
import os
import time
from typing import NamedTuple

from umld.errors import UmldError


class Row(NamedTuple):
    machine: str
    pid: str
    name: str
    state: str
    syscall: str
    cpu: float


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _fields(text: str, sep: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(sep)
        out[key.strip()] = value.strip()
    return out


class Sampler:
    def __init__(self, mount: str, *, with_oci: bool = True) -> None:
        self.mount = mount
        #: The OCI runtime's containers too (its default root).
        self.with_oci = with_oci
        self.ticks: dict[tuple[str, str], int] = {}
        self.trapped: dict[str, int] = {}
        #: Per machine: CPU seconds and throttled seconds at the last frame.
        self.cpu: dict[str, tuple[float, float]] = {}
        self.last = time.monotonic()
        self.tck = os.sysconf("SC_CLK_TCK")

    def frame(self) -> tuple[list[str], list[Row]]:
        now = time.monotonic()
        dt = max(now - self.last, 1e-3)
        self.last = now
        machines = self._machines()
        header: list[str] = []
        rows: list[Row] = []
        ticks: dict[tuple[str, str], int] = {}
        for name, state, uptime, export in machines:
            status = _fields(_read(os.path.join(export, "status")), ":")
            trapped = int(status.get("trapped", "0") or 0)
            rate = (trapped - self.trapped.get(name, trapped)) / dt
            self.trapped[name] = trapped
            procs = status.get("processes", "-")
            header.append(
                f"{name:16.16} {state:12.12} up {uptime:>6}s  procs {procs:>4}"
                f"  syscalls/s {rate:8.0f}" + self._resources(name, status, dt)
            )
            proc_dir = os.path.join(export, "proc")
            try:
                pids = sorted(os.listdir(proc_dir), key=lambda p: int(p) if p.isdigit() else 0)
            except OSError:
                continue
            for pid in pids:
                st = _fields(_read(os.path.join(proc_dir, pid, "status")), ":\t")
                if not st:
                    continue
                t = int(st.get("CpuTicks", "0") or 0)
                ticks[(name, pid)] = t
                cpu = 100.0 * (t - self.ticks.get((name, pid), t)) / self.tck / dt
                rows.append(
                    Row(name, pid, st.get("Name", "?"), st.get("State", "?")[:1],
                        st.get("Syscall", "?"), cpu)
                )  # fmt: skip
        self.ticks = ticks
        rows.sort(key=lambda r: -r.cpu)
        return header, rows

    def _machines(self) -> list[tuple[str, str, str, str]]:
        """(name, state, uptime, export directory) of the daemon's machines
        (DIR/machines) and of the OCI runtime's running containers
        (``oci:ID``, their own exports)."""
        table = _read(os.path.join(self.mount, "machines"))
        out = []
        for line in table.splitlines()[1:]:
            cols = line.split("\t")
            out.append((cols[0], cols[1], cols[2], os.path.join(self.mount, cols[0])))
        if self.with_oci:
            from umld import oci

            for c in oci.containers():
                if c["mount"]:
                    out.append((f"oci:{c['id']}", c["status"], f"{c['uptime']:.0f}", c["mount"]))
        if not table and not out:
            raise UmldError(f"umld: no daemon export at {self.mount}, and no OCI container")
        return out

    def _resources(self, name: str, status: dict[str, str], dt: float) -> str:
        """CPU use and throttling (in CPUs, against the machine's vCPUs)
        and memory use against its limit, from the machine's cgroups as
        its status shows them; "" when it has none."""
        if "cpu_seconds_total" not in status:
            return ""
        used = float(status["cpu_seconds_total"] or 0)
        throttled = float(status.get("cpu_throttled_seconds_total", "0") or 0)
        u0, t0 = self.cpu.get(name, (used, throttled))
        self.cpu[name] = (used, throttled)
        vcpus = status.get("config.vcpus", "?")
        out = f"  cpu {(used - u0) / dt:4.2f}/{vcpus} thr {100 * (throttled - t0) / dt:3.0f}%"
        if "memory_bytes" in status:
            mib = int(status["memory_bytes"]) >> 20
            limit = status.get("memory_limit_bytes")
            out += f"  mem {mib}M/{(int(limit) >> 20) if limit else '-'}M"
        return out


def render(header: list[str], rows: list[Row], width: int, height: int) -> list[str]:
    lines = [f"umld top — {len(header)} machine(s), {len(rows)} process(es)"[:width], ""]
    lines += [h[:width] for h in header]
    lines.append("")
    lines.append(f"{'MACHINE':16} {'PID':>7} {'S':1} {'CPU%':>6}  {'SYSCALL':16} NAME"[:width])
    for r in rows[: max(0, height - len(lines) - 1)]:
        lines.append(
            f"{r.machine:16.16} {r.pid:>7} {r.state:1} {r.cpu:6.1f}  {r.syscall:16.16} {r.name}"[
                :width
            ]
        )
    return lines


def main(mount: str, interval: float, once: bool) -> int:
    sampler = Sampler(mount)
    if once or not os.isatty(1):
        sampler.frame()
        time.sleep(min(interval, 0.5))
        header, rows = sampler.frame()
        print("\n".join(render(header, rows, 200, 10_000)))
        return 0

    def loop(screen: curses.window) -> None:
        curses.curs_set(0)
        screen.timeout(int(interval * 1000))
        while True:
            header, rows = sampler.frame()
            h, w = screen.getmaxyx()
            screen.erase()
            for i, line in enumerate(render(header, rows, w - 1, h)):
                screen.addstr(i, 0, line)
            screen.refresh()
            if screen.getch() in (ord("q"), 27):
                return

    try:
        curses.wrapper(loop)
    except KeyboardInterrupt:
        pass
    return 0
