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

#: v1 controllers a machine gets a cgroup in (cpuset is left out: a v1
#: cpuset cgroup takes no process until cpus and mems are set).
V1_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct")
#: v2 controllers enabled for machines where the parent allows it.
V2_CONTROLLERS = ("pids", "memory", "cpu")


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
