"""A container's ``config.json`` (OCI runtime-spec 1.x) read as a machine.

What the spec asks is mapped onto umld's settings; what umld gives every
machine anyway is accepted as given (its own /proc, /dev, devpts, mqueue,
/sys and cgroup view; its pid, mount, UTS, IPC, user and cgroup
namespaces); what cannot be honoured fails ``create`` with one line naming
the field, before anything is made.  The mapping:

==============================  ==============================================
``root.path``, ``readonly``     ``--root`` (the bundle's tree, written in
                                place as runc does), ``--read-only-root``
``process.args/env/cwd``        the first process, its environment exactly
``process.user``                ``--uid``/``--gid``; additionalGids are the
                                first process's supplementary groups (a
                                machine of an ordinary user has one group)
``process.rlimits``             set on the machine's first process;
                                RLIMIT_NOFILE and RLIMIT_NPROC are the
                                ``limits/*`` settings (soft = hard)
``process.terminal``            a terminal of the guest's own devpts; its
                                master to ``--console-socket`` (SCM_RIGHTS)
``hostname``                    ``--hostname``
``mounts`` bind, tmpfs          ``--bind SRC:DST[:ro]``, ``--tmpfs DST``
``linux.namespaces`` network    with a path: ``--net ns:PATH`` (joined);
                                without: ``--net none`` (its own, loopback
                                only); absent: ``--net host``; a path for
                                another namespace type: refused
``linux.resources``             memory.limit ``--memory``; cpu quota/period
                                ``--vcpus`` (rounded up); cpu.shares
                                ``--cpu-weight`` (S/10.24); pids.limit
                                ``limits/nproc``
``linux.uid/gidMappings``       ``--root-uids``/``--root-gids``: the root's
                                owners on disk (root-run machines; the
                                guest's processes keep their own host ids)
``process.capabilities``        the process's five sets (what the machine's
                                root never holds, CAP_SETFCAP, is left out)
``process.noNewPrivileges``     always on: umld's seccomp filter sets it
``linux.seccomp``               compiled to BPF, installed over umld's own
                                filter just before the program (TRACE and
                                NOTIFY actions refused)
``linux.sysctl``                ``--sysctl`` (namespaced keys only, as runc;
                                kernel.hostname/domainname: the settings)
``process.oomScoreAdj``         the container's processes start at it; below
                                0 also ``limits/oom_floor`` (which needs a
                                memory limit)
``linux.maskedPaths``           covered once every mount is made (a
                                directory empty, a file empty and read-only)
``linux.readonlyPaths``         read-only, with all below them
``annotations`` ``umld.KEY``    the setting KEY (``umld.vcpus=2``,
                                ``umld.net/connect=deny``); ``umld.mount``:
                                where the export goes (``none``: no export)
``hooks``                       createRuntime, prestart, poststart,
                                poststop in the runtime's namespaces;
                                createContainer and startContainer refused
==============================  ==============================================
"""

from __future__ import annotations

import json
import math
import os
import resource
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umld.core.sandbox import DEFAULT_PRIVILEGES, Caps, Filter, Privileges
from umld.errors import UmldError, UsageError

#: The runtime-spec versions understood: 1.x.
SPEC_MAJOR = "1."

#: Mount destinations and types the machine has of its own: accepted and
#: not made again.
OWN_MOUNTS = {
    ("/proc", "proc"),
    ("/dev", "tmpfs"),
    ("/dev", "devtmpfs"),
    ("/dev/pts", "devpts"),
    ("/dev/shm", "tmpfs"),
    ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"),
    ("/sys/fs/cgroup", "cgroup"),
    ("/sys/fs/cgroup", "cgroup2"),
}

#: Namespaces every machine has of its own (network is decided apart).
OWN_NAMESPACES = {"pid", "mount", "uts", "ipc", "user", "cgroup", "time"}

#: capabilities(7) by number (linux/capability.h; a test checks them
#: against the headers).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBER = {name: k for k, name in enumerate(CAPABILITIES)}
CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

RLIMITS = {
    name: getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_") and isinstance(getattr(resource, name), int)
}

HOOK_STAGES = ("prestart", "createRuntime", "poststart", "poststop")


class SpecError(UmldError):
    """A config.json umld cannot honour: one line, nothing made."""

    def __init__(self, message: str) -> None:
        super().__init__(f"config.json: {message}", 1)


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    timeout: float | None


@dataclass
class Plan:
    """What umld does for one container."""

    settings: dict[str, Any]
    args: list[str]
    env: dict[str, str]
    cwd: str
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: Where the container's export is mounted; None: not exported.
    mount: str | None = None
    #: (destination, a directory) of every bind and tmpfs: made in a
    #: read-only root before the machine (make_mount_points), as runc does.
    mount_points: list[tuple[str, bool]] = field(default_factory=list)
    #: process.terminal: the first process on a terminal whose master
    #: goes to the engine's console socket; its first (columns, rows).
    terminal: bool = False
    console_size: tuple[int, int] | None = None
    #: linux.maskedPaths and readonlyPaths (guest paths).
    masked: list[str] = field(default_factory=list)
    readonly: list[str] = field(default_factory=list)
    #: The first process's additionalGids (exactly: none when empty),
    #: process.capabilities and linux.seccomp, compiled.
    privileges: Privileges = DEFAULT_PRIVILEGES
    #: process.oomScoreAdj; None: the runtime's own.
    oom_score_adj: int | None = None


def _obj(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be an object")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where} must be an array")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a string")
    return value


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{where} must be an integer")
    return value


def read(bundle: Path) -> dict[str, Any]:
    """The bundle's config.json, parsed; SpecError says what is wrong."""
    path = bundle / "config.json"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not JSON: {exc}") from None
    return _obj(data, "the document")


def plan(bundle: Path, data: dict[str, Any], *, default_mount: str | None) -> Plan:
    """The machine for ``data`` (the config.json of ``bundle``)."""
    version = _str(data.get("ociVersion"), "ociVersion")
    if not version.startswith(SPEC_MAJOR):
        raise SpecError(f"ociVersion {version!r}: umld implements runtime-spec 1.x")
    mapping: dict[str, Any] = {}
    _root(bundle, _obj(data.get("root"), "root"), mapping)
    process = _obj(data.get("process"), "process")
    if not process:
        raise SpecError("process is missing (umld has no use for a container without one)")
    args = [_str(a, "process.args[]") for a in _list(process.get("args"), "process.args")]
    if not args:
        raise SpecError("process.args is empty")
    cwd = _str(process.get("cwd", "/"), "process.cwd")
    if not cwd.startswith("/"):
        raise SpecError(f"process.cwd {cwd!r} is not absolute")
    env: dict[str, str] = {}
    for item in _list(process.get("env"), "process.env"):
        key, sep, value = _str(item, "process.env[]").partition("=")
        if not sep or not key:
            raise SpecError(f"process.env entry {item!r} is not KEY=VALUE")
        env[key] = value
    terminal = bool(process.get("terminal"))
    size = _obj(process.get("consoleSize"), "process.consoleSize")
    console_size = None
    if size:
        console_size = (
            _int(size.get("width"), "process.consoleSize.width"),
            _int(size.get("height"), "process.consoleSize.height"),
        )
    groups = _user(_obj(process.get("user"), "process.user"), mapping)
    rlimits = _rlimits(_list(process.get("rlimits"), "process.rlimits"), mapping)
    if "hostname" in data:
        mapping["hostname"] = _str(data["hostname"], "hostname")
    if "domainname" in data:
        mapping["domainname"] = _str(data["domainname"], "domainname")
    points = _mounts(bundle, _list(data.get("mounts"), "mounts"), mapping)
    linux = _obj(data.get("linux"), "linux")
    _namespaces(_list(linux.get("namespaces"), "linux.namespaces"), mapping)
    _resources(_obj(linux.get("resources"), "linux.resources"), mapping)
    _id_mappings(linux, mapping)
    caps = capabilities(process.get("capabilities"), "process.capabilities")
    masked, readonly = (_guest_paths(linux, key) for key in ("maskedPaths", "readonlyPaths"))
    seccomp = seccomp_filter(linux)
    sysctls = []
    for key, value in _obj(linux.get("sysctl"), "linux.sysctl").items():
        text = _str(value, f"linux.sysctl.{key}")
        if key in ("kernel.hostname", "kernel.domainname"):
            field_name = key.removeprefix("kernel.")
            if field_name in data:
                raise SpecError(f"linux.sysctl {key} conflicts with the {field_name} field")
            mapping[field_name] = text
        else:
            sysctls.append(f"{key}={text}")
    if sysctls:
        mapping["sysctl"] = sysctls
    oom = None
    if process.get("oomScoreAdj") is not None:
        oom = _int(process["oomScoreAdj"], "process.oomScoreAdj")
        if not -1000 <= oom <= 1000:
            raise SpecError(f"process.oomScoreAdj {oom}: -1000 to 1000")
        if oom < 0:
            # Below 0 the machine's processes may hide from the OOM killer:
            # umld's rule for that is the limits/oom_floor setting's (a
            # memory limit of the machine's own, root with CAP_SYS_RESOURCE).
            mapping.setdefault("limits/oom_floor", oom)
    annotations = {
        _str(k, "annotations"): _str(v, f"annotations.{k}")
        for k, v in _obj(data.get("annotations"), "annotations").items()
    }
    mount = default_mount
    for key, value in annotations.items():
        if not key.startswith("umld."):
            continue
        name = key.removeprefix("umld.").replace(".", "/")
        if name == "mount":
            mount = None if value == "none" else value
        else:
            mapping[name] = value
    hooks = _hooks(_obj(data.get("hooks"), "hooks"))
    from umld.core import settings

    try:
        parsed = settings.from_mapping(mapping, where="config.json")
    except UsageError as exc:
        raise SpecError(str(exc).removeprefix("umld: ").removeprefix("config.json: ")) from None
    return Plan(
        parsed, args, env, cwd, rlimits=rlimits, hooks=hooks, annotations=annotations,
        mount=mount, mount_points=points, terminal=terminal, console_size=console_size,
        masked=masked, readonly=readonly, oom_score_adj=oom,
        privileges=Privileges(tuple(groups), caps, seccomp),
    )  # fmt: skip


def capabilities(value: object, where: str) -> Caps | None:
    """A process's ``capabilities`` object as masks (None when absent).  A
    name this kernel does not know is left out, as runc leaves it out
    (an engine's default list may be newer than the host)."""
    if value is None:
        return None
    sets = _obj(value, where)
    masks = []
    for name in CAP_SETS:
        mask = 0
        for cap in _list(sets.get(name), f"{where}.{name}"):
            number = CAP_NUMBER.get(_str(cap, f"{where}.{name}[]"))
            if number is not None:
                mask |= 1 << number
        masks.append(mask)
    return Caps(*masks)


def seccomp_filter(linux: dict[str, Any]) -> Filter | None:
    """linux.seccomp compiled (umld/oci/_seccomp.py); None when absent."""
    from umld.oci import _seccomp

    data = _obj(linux.get("seccomp"), "linux.seccomp")
    if not data:
        return None
    try:
        profile = _seccomp.parse(data)
        return Filter(profile.flags, _seccomp.compile_profile(profile))
    except _seccomp.ProfileError as exc:
        raise SpecError(str(exc)) from None


def _guest_paths(linux: dict[str, Any], key: str) -> list[str]:
    out = []
    for item in _list(linux.get(key), f"linux.{key}"):
        path = _str(item, f"linux.{key}[]")
        if not path.startswith("/") or "\0" in path:
            raise SpecError(f"linux.{key}: {path!r} is not an absolute path")
        out.append(os.path.normpath(path))
    return out


def _id_mappings(linux: dict[str, Any], mapping: dict[str, Any]) -> None:
    """linux.uidMappings/gidMappings: the host ids the engine gave the
    container's files (its root chowned for a user namespace), which the
    root is shown through (the root_uids/root_gids settings).  The
    guest's processes keep their own range either way."""
    for key, setting in (("uidMappings", "root_uids"), ("gidMappings", "root_gids")):
        items = _list(linux.get(key), f"linux.{key}")
        if not items:
            continue
        if os.geteuid() != 0:
            raise SpecError(
                f"linux.{key}: a machine of an ordinary user has that user's ids alone, "
                "so it cannot show a tree through other ids (rootless engines: not supported)"
            )
        extents = []
        for item in items:
            entry = _obj(item, f"linux.{key}[]")
            extents.append((
                _int(entry.get("containerID"), f"linux.{key}[].containerID"),
                _int(entry.get("hostID"), f"linux.{key}[].hostID"),
                _int(entry.get("size"), f"linux.{key}[].size"),
            ))  # fmt: skip
        mapping[setting] = extents


def _root(bundle: Path, root: dict[str, Any], mapping: dict[str, Any]) -> None:
    path = _str(root.get("path"), "root.path")
    full = Path(path) if path.startswith("/") else bundle / path
    if not full.is_dir():
        raise SpecError(f"root.path {str(full)!r} is not a directory")
    resolved = str(full.resolve())
    if os.geteuid() == 0 and _fstype(resolved) == "overlay":
        # A root-run machine shows the host's trees to its guest through
        # idmapped mounts (the guest's root is not the host's), and an
        # overlayfs mount cannot be idmapped: its files would all be
        # nobody's, the image unwritable.  Its layers could be; the engine
        # holds them.
        raise SpecError(
            f"root.path {resolved} is an overlayfs mount, which umld cannot present to a "
            "root-run machine: use the engine's plain-directory storage (podman "
            "--storage-driver vfs, containerd's native snapshotter)"
        )
    mapping["root"] = resolved
    if root.get("readonly"):
        mapping["read_only_root"] = True


def _fstype(path: str) -> str | None:
    """The type of the file system mounted at ``path`` (the last mount
    there is the one seen), None if none is mounted there."""
    from umld.core import procfs

    found = [m.fstype for m in procfs.mountinfo() if m.point == path]
    return found[-1] if found else None


def _user(user: dict[str, Any], mapping: dict[str, Any]) -> list[int]:
    """uid and gid into ``mapping``; the supplementary groups returned
    (exactly additionalGids: none when it is empty, as under runc)."""
    uid = _int(user.get("uid", 0), "process.user.uid")
    gid = _int(user.get("gid", 0), "process.user.gid")
    extra = [_int(g, "process.user.additionalGids[]") for g in _list(
        user.get("additionalGids"), "process.user.additionalGids")]  # fmt: skip
    if user.get("username"):
        raise SpecError("process.user.username is for Windows containers")
    mapping["uid"], mapping["gid"] = uid, gid
    return list(dict.fromkeys(extra))


def _rlimits(items: list[Any], mapping: dict[str, Any]) -> list[tuple[int, int, int]]:
    out = []
    for item in items:
        limit = _obj(item, "process.rlimits[]")
        kind = _str(limit.get("type"), "process.rlimits[].type")
        if kind not in RLIMITS:
            raise SpecError(f"process.rlimits: unknown type {kind!r}")
        soft = _int(limit.get("soft"), f"process.rlimits {kind} soft")
        hard = _int(limit.get("hard"), f"process.rlimits {kind} hard")
        if soft > hard:
            raise SpecError(f"process.rlimits {kind}: soft {soft} above hard {hard}")
        # The two a machine sets itself are its settings (both limits
        # then the one value); the others its first process inherits.
        if kind == "RLIMIT_NOFILE":
            mapping["limits/nofile"] = soft
        elif kind == "RLIMIT_NPROC":
            mapping.setdefault("limits/nproc", soft)
        else:
            out.append((RLIMITS[kind], soft, hard))
    return out


def _mounts(bundle: Path, items: list[Any], mapping: dict[str, Any]) -> list[tuple[str, bool]]:
    binds: list[str] = []
    ramdisks: list[str] = []
    points: list[tuple[str, bool]] = []
    for item in items:
        m = _obj(item, "mounts[]")
        dest = _str(m.get("destination"), "mounts[].destination")
        if not dest.startswith("/"):
            raise SpecError(f"mounts: destination {dest!r} is not absolute")
        dest = os.path.normpath(dest)
        kind = m.get("type") or "none"
        options = [_str(o, f"mounts {dest} options") for o in _list(m.get("options"), dest)]
        if (dest, kind) in OWN_MOUNTS:
            continue
        if kind == "bind" or "bind" in options or "rbind" in options:
            source = _str(m.get("source"), f"mounts {dest} source")
            src = Path(source) if source.startswith("/") else bundle / source
            if not src.exists():
                raise SpecError(f"mounts {dest}: source {str(src)!r} does not exist")
            binds.append(f"{src}:{dest}" + (":ro" if "ro" in options else ""))
            points.append((dest, src.is_dir()))
        elif kind == "tmpfs":
            sizes = [o.removeprefix("size=") for o in options if o.startswith("size=")]
            ramdisks.append(dest + (f":size={sizes[-1]}" if sizes else ""))
            points.append((dest, True))
        else:
            raise SpecError(f"mounts {dest}: type {kind!r} is not supported (bind, tmpfs)")
    if binds:
        mapping["bind"] = binds
    if ramdisks:
        mapping["tmpfs"] = ramdisks
    return points


def make_mount_points(root: str, points: list[tuple[str, bool]]) -> None:
    """The mount points a read-only root lacks, made in it by the runtime
    (runc makes them before it remounts the root read-only; umld's
    sandbox makes them as the guest's root, which a read-only tree
    refuses).  No symlink of the tree is followed (O_NOFOLLOW at every
    step): a destination through one is refused, never made outside."""
    for dest, is_dir in points:
        parts = [p for p in dest.split("/") if p]
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for k, name in enumerate(parts):
                last = k == len(parts) - 1
                try:
                    nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if last and not is_dir:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                        os.close(os.open(name, flags, 0o644, dir_fd=fd))
                        break
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                st = os.fstat(nxt)
                if not last and not stat.S_ISDIR(st.st_mode):
                    os.close(nxt)
                    raise SpecError(f"mounts {dest}: {'/'.join(parts[:k + 1])} in the root is not "
                                    "a directory (a symlink is not followed)")  # fmt: skip
                os.close(fd)
                fd = nxt
        except OSError as exc:
            raise SpecError(f"mounts {dest}: cannot make its mount point: {exc.strerror}") from None
        finally:
            os.close(fd)


def _namespaces(items: list[Any], mapping: dict[str, Any]) -> None:
    kinds = set()
    for item in items:
        ns = _obj(item, "linux.namespaces[]")
        kind = _str(ns.get("type"), "linux.namespaces[].type")
        if kind != "network" and kind not in OWN_NAMESPACES:
            raise SpecError(f"linux.namespaces: unknown type {kind!r}")
        path = ns.get("path")
        if path and kind == "network":
            # The engine's (its bridge, its CNI or netavark set-up): joined.
            mapping.setdefault("net", "ns:" + _str(path, "linux.namespaces[].path"))
        elif path:
            raise SpecError(
                f"linux.namespaces: joining the {kind} namespace at {path} is not supported "
                "(the machine has its own)"
            )
        kinds.add(kind)
    # Without a network namespace the container shares the runtime's
    # network (the spec); with one of its own it has a loopback alone.
    mapping.setdefault("net", "none" if "network" in kinds else "host")


def _resources(res: dict[str, Any], mapping: dict[str, Any]) -> None:
    memory = _obj(res.get("memory"), "linux.resources.memory")
    if memory.get("limit") not in (None, -1):
        mapping["memory"] = _int(memory["limit"], "linux.resources.memory.limit")
    cpu = _obj(res.get("cpu"), "linux.resources.cpu")
    quota, period = cpu.get("quota"), cpu.get("period") or 100_000
    if quota not in (None, -1, 0):
        q = _int(quota, "linux.resources.cpu.quota")
        p = _int(period, "linux.resources.cpu.period")
        mapping["vcpus"] = max(1, math.ceil(q / p))
    if cpu.get("shares") not in (None, 0):
        # cgroup v1's scale (1024: one process's part) onto cpu.weight's (100).
        shares = _int(cpu["shares"], "linux.resources.cpu.shares")
        mapping["cpu_weight"] = max(1, min(10_000, round(shares * 100 / 1024)))
    pids = _obj(res.get("pids"), "linux.resources.pids")
    if pids.get("limit") not in (None, -1, 0):
        mapping["limits/nproc"] = _int(pids["limit"], "linux.resources.pids.limit")


def _hooks(hooks: dict[str, Any]) -> dict[str, list[Hook]]:
    out: dict[str, list[Hook]] = {}
    for stage, items in hooks.items():
        if stage not in HOOK_STAGES:
            if stage in ("createContainer", "startContainer"):
                raise SpecError(
                    f"hooks.{stage}: hooks in the container's namespaces are not supported"
                )
            raise SpecError(f"hooks: unknown stage {stage!r}")
        for item in _list(items, f"hooks.{stage}"):
            h = _obj(item, f"hooks.{stage}[]")
            path = _str(h.get("path"), f"hooks.{stage}[].path")
            if not path.startswith("/"):
                raise SpecError(f"hooks.{stage}: path {path!r} is not absolute")
            timeout = h.get("timeout")
            if timeout is not None and _int(timeout, f"hooks.{stage} timeout") <= 0:
                raise SpecError(f"hooks.{stage}: timeout must be positive")
            out.setdefault(stage, []).append(
                Hook(
                    path,
                    tuple(_str(a, "hook args") for a in _list(h.get("args"), "hook args")),
                    tuple(_str(e, "hook env") for e in _list(h.get("env"), "hook env")),
                    float(timeout) if timeout is not None else None,
                )
            )
    return out
