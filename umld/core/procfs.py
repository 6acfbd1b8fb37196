"""What the host's /proc says, parsed once (proc(5)), and wait statuses.

Every reader of ``/proc/PID/status``, ``cmdline``, ``comm`` and
``mountinfo`` above the tracer layer uses these functions, so each file's
format is known in one place.  The tracer layer (:mod:`umld.tracer`)
keeps its own few reads: it imports nothing of the guest kernel.

A process that is gone reads as missing (an empty result), never as an
exception: the kernel's tables and /proc change under every reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple


def status(pid: int | str, fields: Iterable[str] | None = None) -> dict[str, str]:
    """Fields of /proc/PID/status (all, or only ``fields``); {} when gone."""
    wanted = None if fields is None else set(fields)
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for raw in f:
                key, sep, value = raw.decode(errors="replace").partition(":")
                if sep and (wanted is None or key in wanted):
                    out[key] = value.strip()
                    if wanted is not None and len(out) == len(wanted):
                        break
    except OSError:
        return {}
    return out


_own_level: int | None = None


def _machine_level() -> int:
    """Where a machine's pid namespace is in a guest's NSpid: just below
    umld's own, whose depth is the length of umld's NSpid (1 unless this
    /proc belongs to an outer pid namespace)."""
    global _own_level
    if _own_level is None:
        _own_level = len(status("self", ("NSpid",)).get("NSpid", "1").split()) or 1
    return _own_level


def guest_pid(pid: int | str) -> int:
    """The pid a host pid has in the machine's pid namespace (NSpid, proc(5),
    lists it from the outermost namespace in): 0 when the process is gone
    or not in a machine.  Not the innermost: a machine's process may be in
    a namespace of its own below (an inner umld's machine, nesting)."""
    ids = status(pid, ("NSpid",)).get("NSpid", "").split()
    level = _machine_level()
    return int(ids[level]) if len(ids) > level else 0


def map_id(pid: int | str, kind: str, value: int, *, inward: bool = False) -> int | None:
    """An id through process ``pid``'s ``uid_map`` or ``gid_map``
    (user_namespaces(7): read from another namespace, its second field is
    in the reader's): the reader's id of its namespace's ``value``, or
    with ``inward`` the other way; None when unmapped or gone."""
    try:
        with open(f"/proc/{pid}/{kind}", encoding="ascii") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                start, other = (outside, inside) if inward else (inside, outside)
                if start <= value < start + count:
                    return other + value - start
    except (OSError, ValueError):
        pass
    return None


def guest_uid(tid: int) -> int:
    """The real uid of a thread as its own user namespace sees it: the
    host's view (Uid of /proc/TID/status) mapped back through the thread's
    uid_map.  65534 (the overflow uid) when unmapped or gone."""
    uid_text = status(tid, ("Uid",)).get("Uid", "").split()
    if not uid_text:
        return 65534
    uid = map_id(tid, "uid_map", int(uid_text[0]), inward=True)
    return 65534 if uid is None else uid


def host_root() -> bool:
    """Whether umld runs as root of the host: uid 0 in the initial user
    namespace, whose uid_map is the identity over every id
    (user_namespaces(7)).  Root of a machine umld runs in (nesting) is
    not: its ids are a slot of its host's, which it cannot lease out."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


#: capabilities(7).
CAP_FOWNER = 3
CAP_LINUX_IMMUTABLE = 9
CAP_SYS_ADMIN = 21
CAP_SYS_BOOT = 22
CAP_SYS_RESOURCE = 24
CAP_SYS_TIME = 25
CAP_MKNOD = 27


def status_mask(pid: int | str, field: str) -> int:
    """A hexadecimal mask of /proc/PID/status (SigBlk, CapEff, ...); 0
    when the process is gone."""
    try:
        return int(status(pid, (field,)).get(field, "0"), 16)
    except ValueError:
        return 0


def has_capability(cap: int, pid: int | str = "self") -> bool:
    """Whether a process holds capability ``cap`` (capabilities(7)) in its
    effective set."""
    return bool(status_mask(pid, "CapEff") >> cap & 1)


def tgid(tid: int) -> int | None:
    """The thread group of a thread; None when gone."""
    value = status(tid, ("Tgid",)).get("Tgid")
    return int(value) if value else None


def comm(pid: int) -> str:
    """The process's name (comm, 15 bytes); "?" when gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode(errors="replace")
    except OSError:
        return "?"


def cmdline(pid: int) -> list[str]:
    """argv of a process; [] when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def unescape(field: str) -> str:
    """mountinfo's octal escapes of space, tab, newline and backslash."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class MountEntry(NamedTuple):
    """One line of /proc/PID/mountinfo."""

    mount_id: int
    parent_id: int
    dev: str  # major:minor
    root: str  # the mount's root within its filesystem
    point: str
    options: str
    fstype: str
    source: str
    super_options: str


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The mounts of a mount namespace, in order; [] when unreadable."""
    out: list[MountEntry] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, sup = left.split(), right.split()
        if not sep or len(fields) < 6 or len(sup) < 2:
            continue
        out.append(
            MountEntry(
                int(fields[0]),
                int(fields[1]),
                fields[2],
                unescape(fields[3]),
                unescape(fields[4]),
                fields[5],
                sup[0],
                unescape(sup[1]),
                sup[2] if len(sup) > 2 else "",
            )
        )
    return out


# -- wait statuses ------------------------------------------------------------------


def returncode(status: int) -> int:
    """A raw wait status as subprocess reports it: the exit code, or -N when
    killed by signal N (``RunResult.returncode``, ``CompletedProcess``)."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return 255


def shell_status(status: int) -> int:
    """A raw wait status as a shell's $?: the exit code, or 128+N when
    killed by signal N (the exit status of ``umld run`` and ``umld exec``;
    umld-sandbox computes the same in C)."""
    code = returncode(status)
    return 128 - code if code < 0 else code
