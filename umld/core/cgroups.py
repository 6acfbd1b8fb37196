"""A machine's own cgroups, in every hierarchy that can bound it.

Each machine lives in a cgroup of its own, created below umld's own cgroup
in the unified (v2) hierarchy and in the v1 hierarchies of the controllers
that bound a machine (pids, memory, cpu, cpuacct), so that a host with a
hybrid layout (v1 controllers beside an empty v2 tree, as this project's
CI host) and a pure v2 host both work.  The sandbox joins them before it
builds anything, and the guest's first process gets a cgroup namespace
rooted there (cgroup_namespaces(7)): a guest that mounts cgroup2 sees only
its own subtree, and what lies above it (``cgroup.kill``,
``cgroup.procs``, the limits of its own cgroup) belongs to host ids the
guest does not have.

Created below umld's own cgroup, not at a hierarchy's root, so whatever
bounds umld (a systemd unit, a container) bounds its machines too.  v2's
"no internal processes" rule (cgroups(7)) may forbid enabling controllers
for a child of a cgroup that has processes (a login session's scope): the
machine then keeps a cgroup without those controllers, and its limits
fall back to the per-user-namespace rlimits (see MachineControl).

Without root this needs a delegated subtree (systemd's ``Delegate=yes``,
a user's ``user@UID.service``): where umld's cgroup is not writable the
machine runs without cgroups of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import final

from umld.errors import get_logger

log = get_logger("umld.cgroups")

#: v1 controllers a machine gets a cgroup in (a v1 cpuset cgroup takes no
#: process until its cpus and mems are set: create() copies its parent's).
V1_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "cpuset")
#: v2 controllers enabled for machines where the parent allows it.
V2_CONTROLLERS = ("pids", "memory", "cpu", "cpuset")

#: The CFS bandwidth period (sched-bwc, Documentation/scheduler/
#: sched-bwc.rst): a machine gets ``vcpus`` periods of CPU time per period,
#: so a change applies within 100 ms.
PERIOD_US = 100_000
#: v1 cpu.shares and v2 cpu.weight of one vCPU (their defaults: a 1-vCPU
#: machine weighs what a host process does), and their maxima.
SHARES_PER_VCPU, MAX_SHARES = 1024, 262_144
WEIGHT_PER_VCPU, MAX_WEIGHT = 100, 10_000


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (proc(5))."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 3 < len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def hierarchies(
    mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup"
) -> dict[str, str]:
    """Where this process's cgroup is in each hierarchy that matters:
    ``"v2"`` or a v1 controller name -> directory."""
    try:
        with open(cgroup) as f:
            own = f.read().splitlines()
        with open(mountinfo) as f:
            mounts = f.read().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in own:
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and not controllers:
            paths["v2"] = path
        else:
            for c in controllers.split(","):
                paths[c] = path
    out: dict[str, str] = {}
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, sup = left.split(), right.split()
        if len(fields) < 5 or len(sup) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if sup[0] == "cgroup2":
            keys = ["v2"]
        elif sup[0] == "cgroup":
            keys = [c for c in sup[2].split(",") if c in V1_CONTROLLERS]
        else:
            continue
        for key in keys:
            own_path = paths.get(key)
            if own_path is None or key in out:
                continue
            # A cgroup namespace's mount shows its root as "/"; elsewhere
            # the mount's root is a prefix of our path.
            rel = own_path[len(root) :] if root != "/" and own_path.startswith(root) else own_path
            out[key] = os.path.normpath(os.path.join(point, rel.lstrip("/")))
    return out


@final
class MachineCgroup:
    """The cgroups of one machine: key (``v2`` or a v1 controller) -> dir."""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs
        #: The host CPUs the machine runs on (set_cpus); None: unbound.
        self.cpus: list[int] | None = None
        #: Its weight as set (the cpu_weight setting, set_weight); None:
        #: WEIGHT_PER_VCPU per vCPU, following set_cpus.
        self.weight: int | None = None
        self._count = 0

    @classmethod
    def create(cls, name: str) -> MachineCgroup | None:
        """Make the machine's cgroups; None where none can be made."""
        made: dict[str, str] = {}
        leaf = f"umld-{name}-{os.getpid()}"
        found = hierarchies()
        remove_stale(found.values())
        for key, parent in sorted(found.items()):
            # One directory serves every controller of a hierarchy
            # mounted with several (cpu,cpuacct).
            path = os.path.join(parent, leaf)
            if path in made.values():
                made[key] = path
                continue
            if not os.access(parent, os.W_OK):
                continue
            if key == "v2":
                _enable_v2(parent)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                # A machine of this name in a killed umld of this pid.
                if not _remove(path):
                    continue
                try:
                    os.mkdir(path, 0o755)
                except OSError:
                    continue
            except OSError as exc:
                log.debug("no %s cgroup for %s: %s", key, name, exc)
                continue
            if key == "cpuset" and not _init_cpuset(parent, path):
                _remove(path)
                continue
            made[key] = path
        return cls(made) if made else None

    @property
    def paths(self) -> list[str]:
        """Each directory once: what a process joins to be in the machine."""
        return list(dict.fromkeys(self.dirs.values()))

    def controller_dir(self, controller: str) -> str | None:
        """The directory that has ``controller``'s files, v1 or v2."""
        d = self.dirs.get(controller)
        if d is not None:
            return d
        v2 = self.dirs.get("v2")
        if v2 is not None and controller in _read(os.path.join(v2, "cgroup.controllers")).split():
            return v2
        return None

    def set_pids_max(self, limit: int | None) -> bool:
        """pids.max; False when the machine has no pids controller."""
        d = self.controller_dir("pids")
        if d is None:
            return False
        with open(os.path.join(d, "pids.max"), "w") as f:
            f.write("max" if limit is None else str(limit))
        return True

    def memory_usage(self) -> int | None:
        """Bytes charged to the machine (ramdisk pages included)."""
        d = self.controller_dir("memory")
        if d is None:
            return None
        for name in ("memory.current", "memory.usage_in_bytes"):
            text = _read(os.path.join(d, name)).strip()
            if text.isdigit():
                return int(text)
        return None

    def memory_limit(self) -> int | None:
        """The machine's memory limit in bytes; None when unlimited or
        without a memory controller."""
        d = self.controller_dir("memory")
        if d is None:
            return None
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = _read(os.path.join(d, name)).strip()
            # v1 shows "no limit" as a huge page-aligned number.
            if text.isdigit() and int(text) < 1 << 62:
                return int(text)
        return None

    def set_memory(self, limit: int | None) -> bool:
        """The memory limit, swap included (v2 memory.max and
        memory.swap.max 0; v1 memory.limit_in_bytes and
        memory.memsw.limit_in_bytes, which bounds memory plus swap): a
        machine never pushes the host's other processes into swap beyond
        its size.  False when the machine has no memory controller.
        OSError when the kernel refuses (EBUSY: usage above it)."""
        d = self.controller_dir("memory")
        if d is None:
            return False
        if os.path.exists(os.path.join(d, "memory.max")):
            _write(os.path.join(d, "memory.max"), "max" if limit is None else str(limit))
            swap = os.path.join(d, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "max" if limit is None else "0")
            return True
        value = "-1" if limit is None else str(limit)
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        # memsw must never be below the memory limit (cgroup-v1/memory.rst
        # 2.5): raise it first when growing, lower it after when shrinking.
        old = self.memory_limit()
        growing = limit is None or (old is not None and limit >= old)
        if has_memsw and growing:
            _write(memsw, value)
        _write(os.path.join(d, "memory.limit_in_bytes"), value)
        if has_memsw and not growing:
            _write(memsw, value)
        return True

    def oom_kills(self) -> int | None:
        """Processes the kernel's OOM killer killed in the machine (v2
        memory.events oom_kill; v1 memory.oom_control oom_kill, since
        Linux 4.13); None without a memory controller."""
        d = self.controller_dir("memory")
        if d is None:
            return None
        for name in ("memory.events", "memory.oom_control"):
            for line in _read(os.path.join(d, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
        return None

    def host_cpus(self) -> list[int]:
        """The host CPUs the machine may use at most: its parent cpuset's
        (v1 cpuset.cpus or v2 cpuset.cpus.effective), else umld's own
        affinity."""
        d = self.controller_dir("cpuset")
        if d is not None:
            parent = os.path.dirname(d)
            for name in ("cpuset.cpus.effective", "cpuset.cpus"):
                cpus = parse_cpu_list(_read(os.path.join(parent, name)))
                if cpus:
                    return cpus
        return sorted(os.sched_getaffinity(0))

    def set_cpus(self, vcpus: int | None) -> list[str]:
        """Bound the machine to ``vcpus`` CPUs' worth of time (CFS
        bandwidth: v2 cpu.max, v1 cpu.cfs_quota_us), weigh it (v2
        cpu.weight, v1 cpu.shares; by its vCPUs unless a weight was set,
        set_weight), and, with fewer vCPUs than the host has, keep its
        threads on ``vcpus`` host CPUs (cpuset.cpus), the ones the other
        machines' cpusets use least.  None: the host's CPUs (no bound,
        weighed as that many vCPUs).  The names of what could not be set
        (no such controller here)."""
        missing = []
        host = self.host_cpus()
        count = self._count = vcpus or len(host)
        cpu = self.controller_dir("cpu")
        if cpu is None:
            missing.append("cpu")
        else:
            self.set_quota(None if vcpus is None else float(vcpus))
            self._write_weight(cpu)
        cpuset = self.controller_dir("cpuset")
        if cpuset is None:
            missing.append("cpuset")
            self.cpus = host
        else:
            self.cpus = host if count >= len(host) else self._least_used(host, count)
            _write(os.path.join(cpuset, "cpuset.cpus"), format_cpu_list(self.cpus))
        return missing

    def set_weight(self, weight: int | None) -> bool:
        """The machine's weight against the others on a busy host (the
        cpu_weight setting: v2 cpu.weight's scale, where a host process
        weighs 100; v1 cpu.shares gets 10.24 times it).  None: 100 per
        vCPU again.  False without a cpu controller."""
        self.weight = weight
        cpu = self.controller_dir("cpu")
        if cpu is None:
            return False
        self._write_weight(cpu)
        return True

    def _write_weight(self, cpu: str) -> None:
        weight = self.weight or WEIGHT_PER_VCPU * (self._count or len(self.host_cpus()))
        if os.path.exists(os.path.join(cpu, "cpu.weight")):
            _write(os.path.join(cpu, "cpu.weight"), str(min(weight, MAX_WEIGHT)))
        else:
            shares = weight * SHARES_PER_VCPU // WEIGHT_PER_VCPU
            _write(os.path.join(cpu, "cpu.shares"), str(max(2, min(shares, MAX_SHARES))))

    def set_quota(self, cpus: float | None) -> None:
        """The CFS bandwidth quota: ``cpus`` CPUs' worth of time each
        100 ms period (None: no bound).  The kernel's minimum is 1 ms."""
        cpu = self.controller_dir("cpu")
        if cpu is None:
            return
        quota = None if cpus is None else max(1000, int(cpus * PERIOD_US))
        if os.path.exists(os.path.join(cpu, "cpu.max")):
            _write(os.path.join(cpu, "cpu.max"), f"{quota or 'max'} {PERIOD_US}")
        else:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(PERIOD_US))
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota or -1))

    def quota(self) -> float | None:
        """The CFS bandwidth quota in CPUs; None: no bound."""
        cpu = self.controller_dir("cpu")
        if cpu is None:
            return None
        text = _read(os.path.join(cpu, "cpu.max")).split()
        if len(text) == 2:
            quota, period = text
        else:
            quota = _read(os.path.join(cpu, "cpu.cfs_quota_us")).strip()
            period = _read(os.path.join(cpu, "cpu.cfs_period_us")).strip()
        if quota.isdigit() and period.isdigit() and int(period):
            return int(quota) / int(period)
        return None

    def _least_used(self, host: list[int], count: int) -> list[int]:
        """``count`` of the host CPUs, those fewest other machines are
        bound to (their cpuset.cpus narrower than the host's): machines
        with one vCPU each spread over the host rather than share CPU 0."""
        own = self.controller_dir("cpuset")
        assert own is not None
        parent, leaf = os.path.split(own)
        load = dict.fromkeys(host, 0)
        for entry in _machine_leaves(parent):
            if entry == leaf:
                continue
            cpus = parse_cpu_list(_read(os.path.join(parent, entry, "cpuset.cpus")))
            if len(cpus) < len(host):
                for c in cpus:
                    if c in load:
                        load[c] += 1
        return sorted(sorted(host, key=lambda c: load[c])[:count])

    def share(self) -> float | None:
        """The machine's weight in vCPUs' worth (100 of cpu.weight, 1024
        of cpu.shares, per vCPU: set_cpus, set_weight)."""
        cpu = self.controller_dir("cpu")
        if cpu is None:
            return None
        for name, unit in (("cpu.weight", WEIGHT_PER_VCPU), ("cpu.shares", SHARES_PER_VCPU)):
            text = _read(os.path.join(cpu, name)).strip()
            if text.isdigit():
                return int(text) / unit
        return None

    def cpu_count(self) -> int | None:
        """How many host CPUs the machine's cpuset holds (its vCPUs, at
        most the host's: set_cpus); None without a cpuset."""
        cpuset = self.controller_dir("cpuset")
        if cpuset is None:
            return None
        return len(parse_cpu_list(_read(os.path.join(cpuset, "cpuset.cpus")))) or None

    def cpu_pressure_usec(self) -> int | None:
        """Time at least one of the machine's threads was runnable but not
        running ("some" total of cpu.pressure, PSI; v2 only, and None where
        PSI is off)."""
        v2 = self.dirs.get("v2")
        if v2 is None:
            return None
        for line in _read(os.path.join(v2, "cpu.pressure")).splitlines():
            if line.startswith("some "):
                total = line.rpartition("total=")[2].strip()
                return int(total) if total.isdigit() else None
        return None

    def runnable(self, at_most: int = 256) -> dict[int, list[int]]:
        """The machine's runnable threads (state R in /proc/TID/stat,
        proc(5)) by the host CPU each last ran on, looking at most at
        ``at_most`` threads."""
        d = self.controller_dir("cpu") or self.dirs.get("v2")
        if d is None:
            return {}
        names = ("cgroup.threads", "tasks")
        text = next((t for t in (_read(os.path.join(d, n)) for n in names) if t), "")
        out: dict[int, list[int]] = {}
        for tid in text.split()[:at_most]:
            fields = _read(f"/proc/{tid}/stat").rpartition(")")[2].split()
            if len(fields) > 36 and fields[0] == "R" and fields[36].isdigit():
                out.setdefault(int(fields[36]), []).append(int(tid))
        return out

    def cpu_stats(self) -> dict[str, int]:
        """usage_usec (CPU time used), throttled_usec and nr_throttled
        (periods the machine used up its quota), from v2 cpu.stat or v1
        cpuacct.usage and cpu.stat; {} without either."""
        out: dict[str, int] = {}
        cpu = self.controller_dir("cpu")
        if cpu is not None:
            for line in _read(os.path.join(cpu, "cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                value = value.strip()
                if not value.isdigit():
                    continue
                if key in ("usage_usec", "throttled_usec", "nr_throttled", "nr_periods"):
                    out[key] = int(value)
                elif key == "throttled_time":  # v1: nanoseconds
                    out["throttled_usec"] = int(value) // 1000
        acct = self.dirs.get("cpuacct")
        if "usage_usec" not in out and acct is not None:
            text = _read(os.path.join(acct, "cpuacct.usage")).strip()
            if text.isdigit():
                out["usage_usec"] = int(text) // 1000
        return out

    def close(self) -> None:
        """Remove the cgroups (their processes are gone, or going)."""
        for path in self.paths:
            _remove(path)
        self.dirs.clear()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def parse_cpu_list(text: str) -> list[int]:
    """The kernel's cpulist format ("0-3,8"), as CPU numbers."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def format_cpu_list(cpus: Iterable[int]) -> str:
    """CPU numbers in the kernel's cpulist format."""
    ranges: list[list[int]] = []
    for c in sorted(set(cpus)):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _machine_leaves(parent: str) -> list[str]:
    """The machines' cgroups (umld-NAME-PID) below ``parent``."""
    try:
        return [e for e in os.listdir(parent) if e.startswith("umld-")]
    except OSError:
        return []


def siblings(own: MachineCgroup) -> dict[str, MachineCgroup]:
    """Every machine's cgroups beside ``own`` (its own included), by leaf
    name, across the hierarchies ``own`` has: the machines of every umld
    process that share its parent cgroup."""
    anchor = own.controller_dir("cpu") or own.dirs.get("v2")
    if anchor is None:
        return {}
    parents = {key: os.path.dirname(d) for key, d in own.dirs.items()}
    out: dict[str, MachineCgroup] = {}
    for leaf in _machine_leaves(os.path.dirname(anchor)):
        dirs = {k: os.path.join(p, leaf) for k, p in parents.items()}
        out[leaf] = (
            own
            if os.path.basename(anchor) == leaf
            else MachineCgroup({k: d for k, d in dirs.items() if os.path.isdir(d)})
        )
    return out


def _init_cpuset(parent: str, path: str) -> bool:
    """A new v1 cpuset takes no process until its cpus and mems are set
    (cgroup-v1/cpusets.rst 2.1): its parent's, which set_cpus narrows."""
    try:
        for name in ("cpuset.mems", "cpuset.cpus"):
            _write(os.path.join(path, name), _read(os.path.join(parent, name)).strip())
    except OSError as exc:
        log.debug("no cpuset cgroup at %s: %s", path, exc)
        return False
    return True


def _enable_v2(parent: str) -> None:
    """Offer the controllers a machine uses to the children of ``parent``,
    where the hierarchy has them and the parent may (cgroups(7), "no
    internal processes" makes this fail for a non-root cgroup that has
    processes: then the machine goes without)."""
    have = set(_read(os.path.join(parent, "cgroup.controllers")).split())
    on = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
    for c in V2_CONTROLLERS:
        if c in have and c not in on:
            try:
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{c}")
            except OSError:
                continue


def _remove(path: str) -> bool:
    """rmdir a cgroup, waiting briefly for its last processes (a killed
    machine's tasks leave the cgroup when they are reaped)."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                log.warning("cannot remove the cgroup %s: %s", path, exc)
                return False
            time.sleep(0.01)


def remove_stale(parents: Iterable[str]) -> None:
    """Cgroups of machines whose umld was killed (SIGKILL leaves no chance
    to clean up): umld-NAME-PID whose PID is gone, once empty."""
    for parent in set(parents):
        try:
            entries = os.listdir(parent)
        except OSError:
            continue
        for entry in entries:
            pid = entry.rpartition("-")[2]
            if not entry.startswith("umld-") or not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except OSError:
                continue
            try:
                os.rmdir(os.path.join(parent, entry))
            except OSError:
                continue


def enforce(
    cgroup: MachineCgroup | None, name: str, *, vcpus: int | None, memory: int | None
) -> list[str]:
    """Bound a new machine to its vCPUs and memory; where that cannot be
    done (no cgroup of its own, a controller missing), say so once, in one
    line, naming what and why: the guest is still shown the values.
    Returns what is not enforced ("vcpus", "memory")."""
    unenforced: list[str] = []
    why = ""
    if cgroup is None:
        unenforced = [n for n, v in (("vcpus", vcpus), ("memory", memory)) if v is not None]
        why = (
            "umld's cgroup is not writable by this user "
            "(run as root, or in a systemd unit or user session with Delegate=yes)"
        )
    else:
        problems: list[str] = []
        try:
            missing = cgroup.set_cpus(vcpus)
        except OSError as exc:
            missing, problems = ["cpu"], [str(exc)]
        if vcpus is not None and "cpu" in missing:
            unenforced.append("vcpus")
        if memory is not None:
            try:
                if not cgroup.set_memory(memory):
                    unenforced.append("memory")
            except OSError as exc:
                unenforced.append("memory")
                problems.append(str(exc))
        why = "; ".join(problems) or "no cpu or memory controller in the machine's cgroup"
    if unenforced:
        log.warning(
            "machine %s: %s not enforced, only shown to the guest: %s",
            name,
            " and ".join(unenforced),
            why,
        )
    return unenforced
