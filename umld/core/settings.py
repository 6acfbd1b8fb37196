"""A machine's settings: data, like the syscall table.

One :class:`Setting` row per setting says what it is called, what values
it takes, what it does, whether it is given when the machine starts and
whether it can change while the machine runs (a *live* setting), and how
a change applies.  Everything else is generated from these rows:

* the machine options of ``umld run`` and ``umld start``
  (:func:`add_options`, :func:`options_mapping`);
* the keys of TOML settings files (``--config``, the daemon's machine
  definitions) and of the daemon's start request (:func:`from_mapping`);
  a key ``a/b`` is ``b`` in the table ``[a]``;
* the fields of :class:`umld.core.machine.Config` (a test checks its
  annotations against the rows);
* ``MachineControl.get``/``set``, the export's ``config/`` files, the
  ``--config-dir`` import and the daemon's SIGHUP reload (the live rows);
* the README's settings table (:func:`markdown`; a test checks the README).

A value a setting refuses raises :class:`SettingError`, one type
everywhere: the command line turns it into a usage error (one line, exit
2), the export into EINVAL with the reason in the event stream.

Adding a setting is one row here and, for a live one, its apply function
in the module that owns the behaviour (see :mod:`umld.core.live`).
"""

from __future__ import annotations

import itertools
import os
import re
import resource
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from umld.core import live, net
from umld.core.ids import SLOT
from umld.core.sandbox import (
    IdExtents,
    Mount,
    format_extents,
    parse_bind,
    parse_disk,
    parse_size,
    parse_tmpfs,
)
from umld.core.syscalls.sys_utsname import UTS_LEN
from umld.errors import UsageError

if TYPE_CHECKING:
    import argparse

    from umld.core.control import MachineControl

T = TypeVar("T")


class SettingError(ValueError):
    """A value a setting refuses; the message says why."""


# -- value types ---------------------------------------------------------------


class ValueType(Generic[T]):
    """What values a setting takes.  ``parse`` accepts the text of an
    option, an export file or a --config-dir file, and the native value of
    a TOML file or of Python (``umld.Config(vcpus=2)``)."""

    #: The TOML type, for the docs.
    toml = "string"
    #: A list, one option each (--bind A --bind B).
    repeatable = False

    def parse(self, value: object) -> T:
        raise NotImplementedError

    def text(self, value: T) -> str:
        """The value as the export shows it."""
        return str(value)

    def describe(self) -> str:
        """What it takes, for the docs and the help."""
        return ""


def _one_line(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SettingError(f"{what}, not {value!r}")
    text = value.strip()
    if "\n" in text or "\0" in text:
        raise SettingError("one line expected")
    return text


class Text(ValueType[str]):
    """A short string, 1 to ``max_bytes`` bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def parse(self, value: object) -> str:
        text = _one_line(value, "a string")
        if not text or len(os.fsencode(text)) > self.max_bytes:
            raise SettingError(f"1 to {self.max_bytes} bytes")
        return text

    def describe(self) -> str:
        return f"text, 1 to {self.max_bytes} bytes"


class MachineName(ValueType[str]):
    _RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

    def parse(self, value: object) -> str:
        text = _one_line(value, "a name")
        if not self._RE.match(text):
            raise SettingError(f"bad machine name {text!r} (letters, digits, . _ -)")
        return text

    def describe(self) -> str:
        return "letters, digits, `.` `_` `-`; up to 64"


class Number(ValueType[int]):
    toml = "integer"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, value: object) -> int:
        if isinstance(value, bool):
            raise SettingError(f"a number, not {value!r}")
        if isinstance(value, str):
            text = _one_line(value, "a number")
            digits = text[1:] if text.startswith("-") and self.lo < 0 else text
            # The length first: int() of thousands of digits is slow.
            if not digits.isdigit() or len(digits) > 20:
                raise SettingError(f"a number from {self.lo} to {self.hi}, not {text[:40]!r}")
            value = int(text)
        if not isinstance(value, int):
            raise SettingError(f"a number, not {value!r}")
        if not self.lo <= value <= self.hi:
            raise SettingError(f"a number from {self.lo} to {self.hi}, not {value}")
        return value

    def describe(self) -> str:
        return f"{self.lo} to {self.hi}"


class Size(ValueType[int]):
    """Bytes: a number, or text such as 512M or 4G (binary units)."""

    toml = "string or integer"

    def __init__(self, lo: int, hi: int, lo_text: str, hi_text: str) -> None:
        self.lo, self.hi, self.lo_text, self.hi_text = lo, hi, lo_text, hi_text

    def parse(self, value: object) -> int:
        if isinstance(value, bool):
            raise SettingError(f"a size such as 512M or 4G, not {value!r}")
        if isinstance(value, str):
            text = _one_line(value, "a size")
            if len(text) > 24:
                raise SettingError("a size such as 512M or 4G")
            try:
                value = parse_size(text)
            except UsageError:
                raise SettingError(f"a size such as 512M or 4G, not {text!r}") from None
        if not isinstance(value, int):
            raise SettingError(f"a size such as 512M or 4G, not {value!r}")
        if not self.lo <= value <= self.hi:
            raise SettingError(f"from {self.lo_text} to {self.hi_text}")
        return value

    def describe(self) -> str:
        return f"a size, {self.lo_text} to {self.hi_text} (`512M`, `4G`)"


class Choice(ValueType[str]):
    def __init__(self, *values: str) -> None:
        self.values = values

    def parse(self, value: object) -> str:
        text = _one_line(value, "one of " + ", ".join(self.values))
        if text not in self.values:
            raise SettingError(" or ".join(repr(v) for v in self.values))
        return text

    def describe(self) -> str:
        return " \\| ".join(f"`{v}`" for v in self.values)


class Flag(ValueType[bool]):
    toml = "boolean"

    def parse(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise SettingError(f"true or false, not {value!r}")
        return value

    def text(self, value: bool) -> str:
        return "true" if value else "false"

    def describe(self) -> str:
        return "true or false (an option without a value)"


#: RLIMIT_INFINITY, shown as "unlimited".
UNLIMITED = resource.RLIM_INFINITY


class Limit(ValueType[int]):
    """A resource limit: a positive number or ``unlimited``."""

    toml = "integer or string"

    def parse(self, value: object) -> int:
        if value == UNLIMITED or (isinstance(value, str) and value.strip() == "unlimited"):
            return UNLIMITED
        if isinstance(value, str):
            text = _one_line(value, "a number")
            if not text.isdigit() or len(text) > 10:
                raise SettingError(f"{text[:40]!r} is not a positive number or 'unlimited'")
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 31:
            raise SettingError(f"{value!r} is not a positive number or 'unlimited'")
        return value

    def text(self, value: int) -> str:
        return "unlimited" if value == UNLIMITED else str(value)

    def describe(self) -> str:
        return "a positive number or `unlimited`"


class HostDir(ValueType[str]):
    """A host directory (absolute after ~ and symlinks)."""

    def parse(self, value: object) -> str:
        text = _one_line(value, "a directory")
        path = os.path.realpath(os.path.expanduser(text))
        if not os.path.isdir(path):
            raise SettingError(f"{text}: not a directory")
        return path

    def describe(self) -> str:
        return "a host directory"


class Mounts(ValueType[list[Mount]]):
    """A list of mount specifications (one option each)."""

    toml = "list of strings"
    repeatable = True

    def __init__(self, parse_one: Callable[[str], Mount], form: str) -> None:
        self.parse_one = parse_one
        self.form = form

    def parse(self, value: object) -> list[Mount]:
        items = [value] if isinstance(value, str | Mount) else value
        if not isinstance(items, list | tuple):
            raise SettingError("a list of strings")
        out = []
        for item in items:
            if isinstance(item, Mount):
                out.append(item)
                continue
            if not isinstance(item, str):
                raise SettingError("a list of strings")
            try:
                out.append(self.parse_one(item))
            except UsageError as exc:
                raise SettingError(str(exc).removeprefix("umld: ")) from None
        return out

    def text(self, value: list[Mount]) -> str:
        return " ".join(m.target for m in value)

    def describe(self) -> str:
        return f"`{self.form}`, repeatable"


class NetMode(ValueType[str]):
    """The machine's network: ``user``, ``none``, ``host``, ``vde:NAME``,
    ``vde:PATH`` or ``ns:PATH``."""

    def parse(self, value: object) -> str:
        text = _one_line(value, "user, none, host, vde:NAME, vde:PATH or ns:PATH")
        try:
            return net.parse_mode(text)
        except net.NetError as exc:
            raise SettingError(str(exc)) from None

    def describe(self) -> str:
        return "`user` \\| `none` \\| `host` \\| `vde:NAME` \\| `vde:PATH` \\| `ns:PATH`"


class Publishes(ValueType[list[net.Publish]]):
    """Forwarded ports, one option each."""

    toml = "list of strings"
    repeatable = True

    def parse(self, value: object) -> list[net.Publish]:
        items = [value] if isinstance(value, str | net.Publish) else value
        if not isinstance(items, list | tuple):
            raise SettingError("a list of strings")
        out = []
        for item in items:
            if isinstance(item, net.Publish):
                out.append(item)
                continue
            if not isinstance(item, str):
                raise SettingError("a list of strings")
            try:
                out.append(net.parse_publish(_one_line(item, "a port")))
            except net.NetError as exc:
                raise SettingError(str(exc)) from None
        return out

    def text(self, value: list[net.Publish]) -> str:
        return " ".join(p.text() for p in value)

    def describe(self) -> str:
        return "`[HOSTADDR:]HOSTPORT:GUESTPORT[/udp]`, repeatable"


class Cidr(ValueType[str]):
    def parse(self, value: object) -> str:
        text = _one_line(value, "an address")
        try:
            return net.parse_address(text)
        except net.NetError as exc:
            raise SettingError(str(exc)) from None

    def describe(self) -> str:
        return "an address/prefix (`10.0.2.15/24`)"


class IdMap(ValueType[IdExtents]):
    """Extents ``GUEST:HOST:COUNT`` (comma-separated, as an OCI engine's
    uidMappings): guest ids GUEST.. are host ids HOST.. on disk.  Guest ids
    lie in the machine's range (ids.SLOT); neither side may overlap."""

    #: What a user namespace's map may hold (user_namespaces(7)).
    MAX_EXTENTS = 340

    def parse(self, value: object) -> IdExtents:
        if isinstance(value, list | tuple) and all(isinstance(v, list | tuple) for v in value):
            extents = [tuple(v) for v in value]
        else:
            text = _one_line(value, "GUEST:HOST:COUNT extents")
            extents = [tuple(part.split(":")) for part in text.split(",") if part]
        out: list[tuple[int, int, int]] = []
        for extent in extents:
            try:
                guest, host, count = (int(v) for v in extent)
            except (TypeError, ValueError):
                shown = ":".join(map(str, extent))
                raise SettingError(f"{shown!r}: an extent is GUEST:HOST:COUNT") from None
            if count < 1 or guest < 0 or host < 0 or guest + count > SLOT:
                raise SettingError(
                    f"{guest}:{host}:{count}: guest ids 0 to {SLOT - 1}, a count of 1 or more"
                )
            if host + count > 1 << 32:
                raise SettingError(f"{guest}:{host}:{count}: host ids end at 4294967295")
            out.append((guest, host, count))
        if len(out) > self.MAX_EXTENTS:
            raise SettingError(f"at most {self.MAX_EXTENTS} extents")
        for side in (0, 1):
            spans = sorted((e[side], e[side] + e[2]) for e in out)
            for (_, end), (start, _) in itertools.pairwise(spans):
                if start < end:
                    raise SettingError("the extents overlap")
        return tuple(out)

    def text(self, value: IdExtents) -> str:
        return format_extents(value)

    def describe(self) -> str:
        return "`GUEST:HOST:COUNT[,...]`"


class Sysctls(ValueType[list[tuple[str, str]]]):
    """``KEY=VALUE`` of sysctls the machine's own namespaces hold (as runc
    allows them: IPC's and POSIX message queues', and the network's when
    the machine has one; machine.prepare checks that)."""

    toml = "list of strings"
    repeatable = True
    IPC = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
           "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")  # fmt: skip
    _KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")

    def parse(self, value: object) -> list[tuple[str, str]]:
        items = [value] if isinstance(value, str | tuple) else value
        if not isinstance(items, list | tuple):
            raise SettingError("a list of KEY=VALUE strings")
        out = []
        for item in items:
            if isinstance(item, tuple) and len(item) == 2:
                key, text = str(item[0]), str(item[1])
            elif isinstance(item, str) and "=" in item:
                key, _, text = item.partition("=")
            else:
                raise SettingError(f"{item!r}: KEY=VALUE")
            key, text = key.strip().replace("/", "."), text.strip()
            if not self._KEY.match(key) or "\n" in text or "\0" in text:
                raise SettingError(f"{key}: not a sysctl name and a one-line value")
            if key in ("kernel.hostname", "kernel.domainname"):
                raise SettingError(f"{key}: the hostname and domainname settings set it")
            if key not in self.IPC and not key.startswith(("fs.mqueue.", "net.")):
                raise SettingError(f"{key}: not in a namespace of the machine's own "
                                   "(IPC, POSIX message queues, network)")  # fmt: skip
            out.append((key, text))
        return out

    def text(self, value: list[tuple[str, str]]) -> str:
        return " ".join(f"{k}={v}" for k, v in value)

    def describe(self) -> str:
        return "`KEY=VALUE`, repeatable"


def _disk(text: str) -> Mount:
    m = parse_disk(text)
    # mkfs.ext4 refuses less than ~128k; 1M leaves it room for a journal.
    if m.size < 1 << 20:
        raise UsageError(f"--disk {m.source}: a disk image is at least 1M")
    return m


# -- the rows ----------------------------------------------------------------------


class Setting(NamedTuple):
    """One setting of a machine.  (A NamedTuple, as the syscall table's
    rows: importing dataclasses costs milliseconds of every start.)"""

    #: The name: the export's file below config/ and, with "/" as a TOML
    #: table, the settings file's key; the option is --KEY with - for / and _.
    key: str
    type: ValueType[Any]
    help: str
    #: The value when none is given; None means "the host's" (or nothing).
    default: Any = None
    #: Given when the machine starts (an option, a settings file, Config).
    start: bool = True
    #: A file in the export's config/: changes while the machine runs.
    live: bool = False
    #: Applies a live change (validated value) to a running machine;
    #: raises SettingError to refuse it.  Called with the control.
    apply: Callable[[MachineControl, Any], None] | None = None
    #: Reads the current value of a live setting the guest itself can
    #: change (its host name); None: the last value set.
    current: Callable[[MachineControl], Any] | None = None
    metavar: str = "VALUE"
    #: The Config attribute, when it is not the key's (read_only_root).
    field: str = ""
    #: The default as the docs say it, when it is not a value.
    shown_default: str = ""

    @property
    def attr(self) -> str:
        """The Config attribute (and Config keyword argument)."""
        return self.field or self.key.replace("/", "_")

    @property
    def option(self) -> str:
        return "--" + self.key.replace("/", "-").replace("_", "-")

    @property
    def toml_key(self) -> str:
        group, _, leaf = self.key.rpartition("/")
        return f"[{group}] {leaf}" if group else self.key

    @property
    def repeat(self) -> bool:
        return self.type.repeatable

    def text(self, value: Any) -> str:
        return "" if value is None else self.type.text(value)


_UTS = Text(UTS_LEN)

SETTINGS: tuple[Setting, ...] = (
    Setting("name", MachineName(),
            "the machine's name: its export's place; a named machine keeps its changes",
            metavar="NAME", shown_default="umld-PID, changes kept in RAM"),
    Setting("hostname", _UTS, "the guest's host name (uname -n)", live=True,
            apply=live.set_hostname, current=live.hostname, metavar="NAME",
            shown_default="the host's"),
    Setting("domainname", _UTS, "the guest's NIS domain name", live=True,
            apply=live.set_domainname, current=live.domainname, metavar="NAME",
            shown_default="the host's"),
    Setting("kernel_release", _UTS, "uname -r in the guest", metavar="REL",
            shown_default="the host's"),
    Setting("uname_machine", _UTS, "uname -m in the guest", metavar="ARCH",
            shown_default="the host's"),
    Setting("root", HostDir(), "a host directory as the guest's /", metavar="DIR",
            shown_default="the host's /, copy-on-write"),
    Setting("read_only_root", Flag(),
            "the host's / read-only, with private /tmp and $HOME (with --root: DIR read-only)",
            default=False, field="root_readonly"),
    Setting("root_uids", IdMap(),
            "with --root, run by root: the tree's owners on disk are host uids HOST.. for "
            "guest uids GUEST.. (a tree made for a user namespace, an OCI engine's uidMappings)",
            metavar="GUEST:HOST:COUNT", shown_default="host uid k is guest uid k"),
    Setting("root_gids", IdMap(), "as --root-uids, for group ids",
            metavar="GUEST:HOST:COUNT", shown_default="host gid k is guest gid k"),
    Setting("upper_size", Size(1 << 20, 1 << 50, "1M", "1P"),
            "bound of what the guest writes over the host's / (RAM; with --name, a disk image)",
            metavar="SIZE",
            shown_default="25% of the machine's memory; 4G with --name"),
    Setting("bind", Mounts(parse_bind, "HOST[:GUEST][:ro]"), "bind a host path", default=(),
            metavar="HOST[:GUEST][:ro]"),
    Setting("tmpfs", Mounts(parse_tmpfs, "GUEST[:size=64M]"), "a ramdisk", default=(),
            metavar="GUEST[:size=64M]"),
    Setting("disk", Mounts(_disk, "IMAGE:GUEST[:size=1G]"),
            "a persistent ext4 file system in one image file (created on first use; "
            "an ordinary user's is served by fuse2fs)",
            default=(), metavar="IMAGE:GUEST[:size=1G]"),
    Setting("sysctl", Sysctls(),
            "a sysctl of the machine's own namespaces (kernel.shm*, kernel.msg*, kernel.sem, "
            "fs.mqueue.*; net.* of a network not the host's), set before the first process",
            default=(), metavar="KEY=VALUE"),
    Setting("uid", Number(0, (1 << 32) - 2), "the guest's user id (0: fake root)", live=True,
            apply=live.fixed_id, metavar="UID", shown_default="the caller's"),
    Setting("gid", Number(0, (1 << 32) - 2), "the guest's group id", live=True,
            apply=live.fixed_id, metavar="GID", shown_default="the caller's"),
    Setting("vcpus", Number(1, 1024),
            "the machine's CPUs: at most N CPUs' worth of time, a share of a busy host by N, "
            "and what the guest sees (more than the host has is fine)",
            live=True, apply=live.set_vcpus,
            metavar="N", shown_default="the host's"),
    Setting("cpu_weight", Number(1, 10_000),
            "the machine's weight against the others when the host's CPUs are all busy "
            "(cgroup v2 cpu.weight: a host process weighs 100; an OCI cpu.shares S is S/10.24)",
            live=True, apply=live.set_cpu_weight, metavar="W", shown_default="100 per vCPU"),
    Setting("cpuid", Choice("host", "own"),
            "`own`: CPUID shows the machine's vCPUs and names umld as the hypervisor (needs "
            "CPUID faulting, `cpuid_fault` in /proc/cpuinfo); each CPUID then costs a stop",
            default="host"),
    Setting("memory", Size(1 << 20, 1 << 50, "1M", "1P"),
            "the machine's memory: its limit (swap included; the OOM killer acts inside), "
            "what /proc/meminfo shows, and the size of its ramdisks", live=True,
            apply=live.set_memory, metavar="SIZE", shown_default="the host's"),
    Setting("trace", Choice("off", "syscalls"),
            "each trapped syscall as an event (every syscall with --trace)", default="off",
            start=False, live=True, apply=live.set_trace),
    Setting("net/accept", Choice("open", "closed"),
            "closed: accept(2) waits, connections queue in the backlog", default="open",
            live=True, apply=live.set_net_accept),
    Setting("net/connect", Choice("allow", "loopback", "deny"),
            "where guest sockets may connect and send (IPv4/IPv6)", default="allow", live=True,
            apply=live.set_net_connect),
    Setting("net", NetMode(),
            "the machine's network: `user` (its own, user-mode networking by pasta; "
            "`--publish` forwards the host's ports to it), `none` (loopback only), `host` "
            "(the host's own, not isolated), `vde:NAME` or `vde:PATH` (an Ethernet on a "
            "daemon's VDE switch, or the switch at PATH), `ns:PATH` (the network namespace "
            "at PATH, made by whoever runs the machine, as root: an OCI engine's)",
            default="user", metavar="MODE"),
    Setting("publish", Publishes(),
            "forward the host's port (on 127.0.0.1 unless HOSTADDR) to the guest's (--net user)",
            default=(), metavar="[HOSTADDR:]HOSTPORT:GUESTPORT[/udp]"),
    Setting("net/address", Cidr(),
            "the address of the guest's interface (the default route stays pasta's gateway)",
            live=True, apply=net.set_address, current=net.address, metavar="CIDR",
            shown_default="the host's (pasta), none (vde)"),
    Setting("net/forward", Choice("auto", "none"),
            "`auto`: each port a server of the guest listens on is reached from the host's "
            "loopback at the same port while it listens (--net user; `net/ports` lists them)",
            default="auto", live=True, apply=net.set_forward),
    Setting("net/link", Choice("up", "down"),
            "the guest's interface's carrier: `down` pulls the cable (its traffic stalls)",
            default="up", live=True, apply=net.set_link),
    Setting("limits/nproc", Limit(), "processes and threads of the machine", default=4096,
            live=True, apply=live.set_nproc, metavar="N"),
    Setting("limits/nofile", Limit(), "open files per process", live=True,
            apply=live.set_nofile, metavar="N", shown_default="umld's own"),
    Setting("limits/oom_floor", Number(-1000, 1000),
            "the lowest oom_score_adj the guest's processes may set (they start at umld's); "
            "below 0 only with an enforced --memory, in a machine run by root",
            default=0, metavar="N"),
    Setting("devices/loop", Number(0, 64),
            "loop devices the guest's root may hold at once (/dev/loop-control, losetup, "
            "mount -o loop, mkfs): each a host loop device leased to the machine, whose file "
            "systems umld mounts for the guest (nodev, idmapped); the host's kernel then reads "
            "file systems the guest wrote, so give it only to guests trusted that far; in a "
            "machine run by root",
            default=0, metavar="N"),
    Setting("tty", Flag(),
            "the first process runs on a terminal of the machine's own (/dev/pts/0), exported "
            "live in ui/; `umld attach` connects to it",
            default=False),
    Setting("nest", Flag(),
            "the guest can run umld inside (nesting): it gets /dev/fuse and /dev/net/tun, "
            "and a /proc of its own processes with nothing bound over it at /dev/.umld/proc "
            "(there the host's own cpuinfo, meminfo, stat and the files umld masks); "
            "not with --unsafe-host-ids",
            default=False),
    Setting("unsafe_host_ids", Flag(),
            "DANGEROUS, root only: the guest's ids are the host's, so its root is the host's "
            "root on every host file it can reach (default: a range of host ids of its own)",
            default=False),
)  # fmt: skip

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
#: The settings given at start, and those that change live, in table order.
START: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.start)
LIVE: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.live)
#: What else a settings file may say (not machine settings).
FILE_KEYS = ("command", "restart")


def live_keys() -> tuple[str, ...]:
    return tuple(s.key for s in LIVE)


# -- generated: mappings (settings files, daemon requests) --------------------------


def _flatten(data: Mapping[str, object], where: str) -> dict[str, object]:
    """``{"net": {"accept": "x"}}`` (a TOML table) -> ``{"net/accept": "x"}``."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                name = f"{key}/{sub}"
                # TOML cannot have both net = "user" and a table [net]:
                # there the setting net itself is [net] mode.
                if sub == "mode" and name not in BY_KEY and key in BY_KEY:
                    name = key
                out[name] = inner
        else:
            out[key] = value
    return out


def from_mapping(data: Mapping[str, object], *, where: str) -> dict[str, Any]:
    """Config keyword arguments from a mapping of settings (a TOML file, the
    options, a daemon request), each parsed by its row: UsageError names the
    setting, where, and why."""
    flat = _flatten(data, where)
    unknown = sorted(k for k in flat if k not in BY_KEY or not BY_KEY[k].start)
    if unknown:
        raise UsageError(f"{where}: unknown settings: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for key, value in flat.items():
        row = BY_KEY[key]
        if value is None:
            continue
        try:
            out[row.attr] = row.type.parse(value)
        except SettingError as exc:
            raise UsageError(f"{where}: {key}: {exc}") from None
    return out


def read_toml(path: str, what: str) -> dict[str, Any]:
    """The table of a TOML settings file; UsageError "WHAT PATH: why"."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"{what}{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        # tomllib decodes the whole file first (TOML is UTF-8, toml.io).
        raise UsageError(f"{what}{path}: not a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what}{path}: {exc}") from None


def command_from(value: object, where: str) -> list[str]:
    """A settings file's ``command``: a list of strings, or one string
    split as a shell would (shlex), checked."""
    if isinstance(value, str):
        import shlex

        try:
            return shlex.split(value)
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            raise UsageError(f"{where}: command: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise UsageError(f"{where}: command must be a string or a list of strings")
    return list(value)


# -- generated: the command line -----------------------------------------------------


def add_options(group: argparse._ArgumentGroup, *, named: bool = True) -> None:
    """The machine options, one per start setting (``named``: with --name;
    ``umld start`` names its machine as an argument)."""
    for row in START:
        if row.key == "name" and not named:
            continue
        kw: dict[str, Any] = {"dest": row.attr, "help": row.help}
        if isinstance(row.type, Flag):
            kw.update(action="store_true", default=None)
        elif row.repeat:
            kw.update(action="append", default=[], metavar=row.metavar)
        elif isinstance(row.type, Choice):
            kw.update(metavar="|".join(row.type.values))
        else:
            kw.update(metavar=row.metavar)
        group.add_argument(row.option, **kw)


def options_mapping(args: argparse.Namespace) -> dict[str, object]:
    """The machine options given on a command line, by key."""
    out: dict[str, object] = {}
    for row in START:
        value = getattr(args, row.attr, None)
        if value is not None and value != []:
            out[row.key] = value
    return out


def merge(file: Mapping[str, object], options: Mapping[str, object]) -> dict[str, object]:
    """A settings file's mapping with options over it; a repeatable option
    adds to the file's list."""
    out = _flatten(file, "")
    for key, value in options.items():
        old = out.get(key)
        if isinstance(value, list) and old is not None:
            out[key] = [*([old] if isinstance(old, str) else old), *value]  # type: ignore[misc]
        else:
            out[key] = value
    return out


# -- generated: documentation --------------------------------------------------------


def markdown(rows: Iterable[Setting] = SETTINGS) -> str:
    """The README's settings table."""
    lines = [
        "| setting | option | settings file | takes | live | default |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        option = f"`{row.option}`" if row.start else "(live only)"
        toml = f"`{row.toml_key}`" if row.start else ""
        if row.start and any(k.startswith(row.key + "/") for k in BY_KEY):
            toml += f" or `[{row.key}] mode`"  # TOML has no key that is also a table
        default = row.shown_default or (
            "none" if row.default in (None, ()) else row.text(row.default)
        )
        live_mark = "yes" if row.live else ""
        if row.apply is live.fixed_id:
            live_mark = "shown"
        lines.append(
            f"| `{row.key}`: {row.help} | {option} | {toml} | {row.type.describe()} "
            f"| {live_mark} | {default} |"
        )
    return "\n".join(lines) + "\n"


def check_names(rows: Sequence[Setting] = SETTINGS) -> None:
    """Keys are unique and their options and attributes do not collide."""
    for what in ("key", "attr", "option"):
        names = [getattr(r, what) for r in rows]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate setting {what}: {sorted(dup)}")
