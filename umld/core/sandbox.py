"""The guest's mount table and identity, realized with namespaces.

The guest kernel keeps the mount table as data (:class:`Mount` rows);
``umld-sandbox`` (c_tracer/sandbox.c) builds it as the guest's first
traced process: a mount namespace whose mounts are locked to the guest, a
PID namespace with a fresh /proc, a time namespace for the machine's
uptime and a user namespace for its identity.  Path resolution is then
the kernel's own, for every syscall that takes a path, including every
race a tracer that rewrites path strings would have to win (a symlink
swapped between check and use, dirfds opened before a rename): nothing
outside the given paths is reachable at all.  Guest file data, and path
lookups, never stop in the tracer.

This module turns options into that table, prepares what the machine
needs on the host (disk images, its generated /proc files), and writes
the sandbox's argument list.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple, final

from umld.core import procfs
from umld.core.cgroups import MachineCgroup
from umld.core.ids import IdLease, IdRange
from umld.errors import UmldError, UsageError

if TYPE_CHECKING:
    from umld.core.fusedisk import FuseDisks
    from umld.core.loopdev import MachineLoops
    from umld.core.net import MachineNet

SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "umld-sandbox")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``512k`` or bytes; binary units as tmpfs(5) reads
    them."""
    m = _SIZE.match(text.strip())
    # The length first: float() of hundreds of digits is infinity.
    if not m or len(text) > 32:
        raise UsageError(f"bad size {text[:40]!r} (use e.g. 64M or 1G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise UsageError(f"bad size {text!r}: must be more than 0")
    return value


class Mount(NamedTuple):
    """One row of the guest's mount table.

    kind is ``bind``, ``tmpfs``, ``disk``, ``dev`` (the machine's own
    /dev) or ``cow`` (the host's tree, copy-on-write: the default root);
    source is the host path (bind, disk image, cow) or empty; target the
    guest path; size in bytes (tmpfs, disk) or 0 for the default.
    """

    kind: str
    source: str
    target: str
    readonly: bool = False
    size: int = 0

    def describe(self) -> str:
        ro = " (read-only)" if self.readonly else ""
        if self.kind == "bind":
            return f"{self.target}: bind of host {self.source}{ro}"
        if self.kind == "tmpfs":
            size = f", {self.size >> 20} MiB" if self.size else ""
            return f"{self.target}: ramdisk{size}"
        if self.kind == "dev":
            return f"{self.target}: the machine's devices (null, zero, random, tty, ptys)"
        if self.kind == "cow":
            return f"{self.target}: the host's {self.source}, copy-on-write"
        return f"{self.target}: ext4 disk image {self.source}"


def _guest_path(text: str, option: str) -> str:
    if not text.startswith("/"):
        raise UsageError(f"{option}: the guest path {text!r} must be absolute")
    norm = os.path.normpath(text)
    if norm.startswith("//"):
        norm = norm[1:]
    return norm


def _host_path(text: str, option: str, *, must_exist: bool = True) -> str:
    if not text:
        raise UsageError(f"{option}: empty host path")
    # The sandbox names host paths below its view of the host tree, where
    # an absolute symlink would resolve against the wrong root: resolve
    # them here, on the host.
    path = os.path.realpath(os.path.expanduser(text))
    if must_exist and not os.path.exists(path):
        raise UsageError(f"{option}: {text}: no such file or directory on the host")
    return path


def parse_bind(text: str) -> Mount:
    """``HOST[:GUEST][:ro|:rw]``."""
    parts = text.split(":")
    readonly = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        readonly = parts.pop() == "ro"
    if len(parts) > 2:
        raise UsageError(f"--bind {text}: use HOST:GUEST[:ro]")
    host = _host_path(parts[0], "--bind")
    guest = _guest_path(parts[1] if len(parts) == 2 else host, "--bind")
    return Mount("bind", host, guest, readonly)


def _options(text: str, option: str, allowed: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if key not in allowed or not eq:
            raise UsageError(f"{option}: unknown option {item!r} (allowed: {', '.join(allowed)})")
        out[key] = value
    return out


def parse_tmpfs(text: str) -> Mount:
    """``GUEST[:size=64M]``."""
    target, _, opts = text.partition(":")
    options = _options(opts, "--tmpfs", ("size",))
    size = parse_size(options["size"]) if "size" in options else 0
    return Mount("tmpfs", "", _guest_path(target, "--tmpfs"), size=size)


def parse_disk(text: str) -> Mount:
    """``IMAGE:GUEST[:size=1G]``."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise UsageError(f"--disk {text}: use IMAGE:GUEST[:size=1G]")
    options = _options(parts[2] if len(parts) == 3 else "", "--disk", ("size",))
    size = parse_size(options.get("size", "1G"))
    image = _host_path(parts[0], "--disk", must_exist=False)
    return Mount("disk", image, _guest_path(parts[1], "--disk"), size=size)


@final
class Layout:
    """Everything the sandbox builds for one machine.

    Three roots: the host's tree copy-on-write (``root`` None, not
    ``root_readonly``: the default), the host's tree read-only
    (``root_readonly``), or a host directory (``root``)."""

    def __init__(
        self,
        *,
        root: str | None,
        root_readonly: bool,
        mounts: Sequence[Mount],
        home: str | None,
        home_disk: str | None,
    ) -> None:
        self.root = root
        self.root_readonly = root_readonly
        self.mounts = list(mounts)
        self.home = home
        self.home_disk = home_disk

    @property
    def copy_on_write(self) -> bool:
        return self.root is None and not self.root_readonly

    def table(self) -> list[Mount]:
        """The mount table, parents before children: the defaults, then
        what was asked, a later row over an earlier one at the same path."""
        rows: list[Mount] = []
        if self.copy_on_write:
            # The host's tree as the user sees it, /tmp and $HOME included;
            # /run and /dev/shm hold the host's running services' sockets
            # and shared memory: the machine has its own.
            rows.append(Mount("cow", "/", "/"))
            defaults = [Mount("dev", "", "/dev"), Mount("tmpfs", "", "/run")]
            defaults.append(Mount("tmpfs", "", "/dev/shm"))
            asked = {m.target for m in self.mounts}
            rows += [m for m in defaults if m.target not in asked]
            rows += self.mounts
            first, rest = rows[0], rows[1:]
            rest.sort(key=lambda m: m.target.rstrip("/").count("/"))
            return [first, *rest]
        if self.root is None:
            rows.append(Mount("bind", "/", "/", True))
            defaults = [Mount("dev", "", "/dev"), Mount("tmpfs", "", "/tmp")]
            defaults.append(Mount("tmpfs", "", "/run"))
        else:
            rows.append(Mount("bind", self.root, "/", self.root_readonly))
            defaults = [Mount("dev", "", "/dev"), Mount("bind", "/sys", "/sys", True)]
        defaults.append(Mount("tmpfs", "", "/dev/shm"))
        if self.home is not None and self.root is None:
            if self.home_disk is not None:
                defaults.append(Mount("disk", self.home_disk, self.home, size=1 << 30))
            else:
                defaults.append(Mount("tmpfs", "", self.home))
        asked = {m.target for m in self.mounts}
        rows += [m for m in defaults if m.target not in asked]
        rows += self.mounts
        # A stable sort by depth keeps the order given at one depth.
        first, rest = rows[0], rows[1:]
        rest.sort(key=lambda m: m.target.rstrip("/").count("/"))
        return [first, *rest]


def _mode_for(target: str) -> str:
    return "1777" if target in ("/tmp", "/dev/shm", "/var/tmp") else "755"


#: Default ramdisk sizes, as shares of the machine's memory (``memory``,
#: the host's by default): /tmp 20%, the home directory 20%, /dev/shm
#: 10%, /run 5% but at most 32 MiB; together at most 55% of it.  A
#: ``--tmpfs`` without ``size=`` gets the /tmp share.  The pages are
#: charged to the machine's memory cgroup, as the guest writes them.
RAMDISK_SHARE = {"/tmp": 0.20, "/dev/shm": 0.10, "/run": 0.05}
HOME_SHARE = 0.20
RUN_MAX = 32 << 20


def ramdisk_size(target: str, memory: int, home: str | None) -> int:
    """The default size of a ramdisk at ``target`` in a machine of
    ``memory`` bytes (at least 1 MiB, whole pages)."""
    share = HOME_SHARE if target == home else RAMDISK_SHARE.get(target, RAMDISK_SHARE["/tmp"])
    size = int(memory * share)
    if target == "/run":
        size = min(size, RUN_MAX)
    return max(1 << 20, size - size % 4096)


#: The default bound of a copy-on-write root's upper layer: a share of
#: the machine's memory when it is RAM (an unnamed machine), a sparse disk
#: image of UPPER_IMAGE_SIZE for a named machine run by root.
UPPER_SHARE = 0.25
UPPER_IMAGE_SIZE = 4 << 30


def upper_layer(
    files: MachineFiles,
    *,
    memory: int,
    size: int | None,
    keep: str | None,
    ids: IdRange | None,
) -> tuple[str, str]:
    """The ``upper`` operation of a copy-on-write root: where the guest's
    writes over the host's tree go.  ``keep``: a named machine's own
    directory, where its upper layer persists: a disk image (root: the
    loop device) or, run by another user, a directory (bounded by the
    user's own quota, not ``size``).  Otherwise RAM, charged to the
    machine's memory cgroup."""
    if keep is None:
        bound = size or max(1 << 20, int(memory * UPPER_SHARE))
        opts = f"mode=0755,size={bound - bound % 4096}"
        if ids is not None:
            opts += f",uid={ids.uid},gid={ids.gid}"
        return ("tmpfs", opts)
    if os.geteuid() == 0:
        image = os.path.join(keep, "upper.img")
        files.prepare_disk(Mount("disk", image, "", size=size or UPPER_IMAGE_SIZE), 0, 0)
        return ("disk", image)
    upper = os.path.join(keep, "upper")
    try:
        os.makedirs(upper, 0o700, exist_ok=True)
    except OSError as exc:
        raise UmldError(f"umld: cannot create {upper}: {exc.strerror}") from None
    return ("dir", upper)


@final
class MachineFiles:
    """The host side of one machine: a private runtime directory with the
    generated /proc and /sys files the guest sees, and the locks of its
    disk images.  Removed by :meth:`close`."""

    def __init__(self) -> None:
        base = (os.environ.get("XDG_RUNTIME_DIR") if os.geteuid() else None) or "/tmp"
        _remove_stale(base)
        # tempfile.mkdtemp, without importing tempfile (~3 ms of a start).
        while True:
            path = os.path.join(base, f"umld-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.mkdir(path, 0o700)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise UmldError(
                    f"umld: cannot create the machine's runtime directory in {base}: "
                    f"{exc.strerror} (set XDG_RUNTIME_DIR to a directory of yours)"
                ) from None
        if os.geteuid() == 0 and not procfs.host_root():
            # Root of a machine umld runs in (nesting): the stage's root
            # becomes its host's uid 1 (sandbox.c, become_own_userns),
            # which must reach the files it binds.  It may read them, as
            # anyone there may; their names are not listed, and only we
            # write them.
            os.chmod(path, 0o711)
        self.dir = path
        self._locks: list[int] = []
        #: Disk images this machine created (prepare_disk).
        self._created: list[str] = []
        #: guest path -> host file, bound over the guest's /proc and /sys.
        self.files: dict[str, str] = {}
        # What write_if_changed last wrote.
        self._last: dict[str, bytes] = {}
        #: The machine's host ids (root-run machines), leased for its life.
        self.ids: IdLease | None = None
        #: The machine's cgroups, when it could have some.
        self.cgroup: MachineCgroup | None = None
        #: Its disk images served by fuse2fs (an ordinary user's machine).
        self.disks: FuseDisks | None = None
        #: Its own network (every --net but host).
        self.net: MachineNet | None = None
        #: The loop devices leased to the machine (devices/loop).
        self.loops: MachineLoops | None = None

    def close(self) -> None:
        # An image made for this machine that was never mounted (the
        # machine failed before its mounts were made) goes with it: the
        # next start makes it again, and a typo leaves no stray gigabyte.
        for image in list(self._created):
            if not _ever_mounted(image):
                self._forget_new(image)
        self._created.clear()
        if self.net is not None:
            self.net.close()
        if self.loops is not None:
            self.loops.close()
            self.loops = None
        if self.disks is not None:
            # fuse2fs finishes in the background, holding the images'
            # locks, and removes its mount points and then this directory.
            self.disks.close()
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None
        if self.ids is not None:
            self.ids.close()
            self.ids = None
        # fuse2fs's mount points stay until it has finished; then it
        # removes them, and this directory when it is empty.
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            # A mount point fuse2fs removes meanwhile is no longer there
            # (isdir is then False): gone is what we want.
            path = os.path.join(self.dir, name)
            if not os.path.isdir(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

    def write(self, guest: str, content: bytes) -> None:
        """(Re)write a generated file in place: a bind mount follows the
        inode, so the running guest sees new content at its next read."""
        host = self.files.get(guest)
        if host is None:
            host = os.path.join(self.dir, guest.strip("/").replace("/", "_"))
            self.files[guest] = host
        # 0644 whatever the umask: the directory keeps them private, and a
        # nested stage reads them as others (above).
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.fchmod(fd, 0o644)
        with open(fd, "wb") as f:
            f.write(content)
            f.truncate()

    def write_if_changed(self, guest: str, content: bytes) -> None:
        """write(), unless the file has that content already: files kept
        fresh every pass (cpushare) are rewritten only when they change."""
        if self._last.get(guest) != content:
            self.write(guest, content)
            self._last[guest] = content

    def prepare_disk(self, mount: Mount, uid: int, gid: int) -> int:
        """Create the image on first use (sparse, ext4, root directory
        owned by the guest's user) and lock it: two machines mounting one
        ext4 image would corrupt it.  Returns the descriptor that holds
        the lock.  An ordinary user's image is served by fuse2fs in the
        stage's user namespace, where the user's one id is 0: its root
        directory is 0's there, which the guest sees as its own uid."""
        import shutil
        import subprocess

        from umld.core import fusedisk

        image = mount.source
        if fusedisk.needed():
            fusedisk.check_usable(image)
            uid = gid = 0
        if not os.path.exists(image):
            mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
            why = ""
            try:
                os.makedirs(os.path.dirname(image) or ".", exist_ok=True)
                with open(image, "xb") as f:
                    self._created.append(image)
                    f.truncate(mount.size)
                proc = subprocess.run(
                    [mkfs, "-q", "-F", "-E", f"root_owner={uid}:{gid}", "-L", "umld", image],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    # mkfs explains itself over several indented lines: one.
                    why = " ".join(proc.stderr.split()) or f"{mkfs} failed ({proc.returncode})"
            except OSError as exc:
                why = f"{exc.filename or image}: {exc.strerror}"
            if why:
                self._forget_new(image)
                raise UmldError(f"umld: cannot create the disk image {image}: {why}")
        try:
            fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UmldError(f"umld: disk image {image}: {exc.strerror}") from None
        if not _lock(fd):
            # A machine of this process that has just ended (a restart)
            # may still be flushing it.
            finishing = fusedisk.releasing(image)
            if finishing is None or not finishing.wait(fusedisk.FINISH_TIMEOUT) or not _lock(fd):
                os.close(fd)
                raise UmldError(f"umld: disk image {image} is in use by another machine")
        self._locks.append(fd)
        return fd

    def fuse_disks(self) -> FuseDisks:
        """The machine's images served by fuse2fs (made at the first)."""
        if self.disks is None:
            from umld.core.fusedisk import FuseDisks, fuse2fs_path

            self.disks = FuseDisks(self.dir, fuse2fs_path() or "fuse2fs")
        return self.disks

    def _forget_new(self, image: str) -> None:
        """Remove ``image`` if this machine created it."""
        if image not in self._created:
            return
        self._created.remove(image)
        try:
            os.unlink(image)
        except OSError:
            pass


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _ever_mounted(image: str) -> bool:
    """Whether an ext4 image was ever mounted: the superblock (at 1024)
    counts mounts in s_mnt_count (le16 at offset 0x34), which mkfs leaves
    at 0 and every read-write mount increments (ext4_setup_super)."""
    try:
        with open(image, "rb") as f:
            f.seek(1024 + 0x34)
            raw = f.read(2)
    except OSError:
        return True  # unknown: keep it
    return len(raw) != 2 or int.from_bytes(raw, "little") != 0


def _remove_stale(base: str) -> None:
    """Runtime directories of umld processes that were killed (SIGKILL
    leaves no chance to clean up): umld-PID-XXXX whose PID is gone."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        parts = entry.split("-")
        if len(parts) != 3 or parts[0] != "umld" or not parts[1].isdigit():
            continue
        path = os.path.join(base, entry)
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            if os.stat(path).st_uid == os.geteuid():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OSError):
            continue


def cpuinfo_for(vcpus: int) -> bytes:
    """/proc/cpuinfo with ``vcpus`` processors: the host's entries,
    repeated and renumbered when the machine has more than the host."""
    with open("/proc/cpuinfo", "rb") as f:
        blocks = [b for b in f.read().split(b"\n\n") if b.strip()]
    out = []
    for i in range(vcpus):
        block = blocks[i % len(blocks)]
        lines = [
            b"processor\t: %d" % i if line.startswith(b"processor") else line
            for line in block.split(b"\n")
        ]
        out.append(b"\n".join(lines))
    return b"\n\n".join(out) + b"\n\n"


def stat_for(vcpus: int, host_cpus: Sequence[int]) -> bytes:
    """/proc/stat of a machine with ``vcpus`` CPUs (proc(5)): the host's
    lines, with one ``cpuK`` line per guest CPU and the ``cpu`` line their
    sum.  Guest CPU k runs on host
    CPU ``host_cpus[k mod len]`` (MachinePolicy.host_cpus), so its line is
    that host CPU's times divided among the guest CPUs it stands for: the
    guest CPUs' lines add up to the host CPUs' the machine uses, and a
    ``top`` in the guest sees N CPUs whose busy share is the host's."""
    with open("/proc/stat", "rb") as f:
        lines = f.read().split(b"\n")
    per_cpu: dict[int, list[int]] = {}
    rest: list[bytes] = []
    for line in lines:
        key, _, values = line.partition(b" ")
        if key == b"cpu":
            continue
        if key.startswith(b"cpu") and key[3:].isdigit():
            per_cpu[int(key[3:])] = [int(v) for v in values.split()]
        elif line:
            rest.append(line)
    hosts = [c for c in host_cpus if c in per_cpu] or sorted(per_cpu)
    rows = []
    for k in range(vcpus):
        share = len(range(k % len(hosts), vcpus, len(hosts)))
        rows.append([v // share for v in per_cpu[hosts[k % len(hosts)]]])
    total = [sum(col) for col in zip(*rows, strict=True)]
    out = [b"cpu  " + b" ".join(b"%d" % v for v in total)]
    out += [b"cpu%d %s" % (k, b" ".join(b"%d" % v for v in row)) for k, row in enumerate(rows)]
    return b"\n".join(out + rest) + b"\n"


def cpu_list(vcpus: int) -> bytes:
    """The kernel's cpulist format (/sys/devices/system/cpu/online)."""
    return b"0\n" if vcpus == 1 else b"0-%d\n" % (vcpus - 1)


def meminfo_for(memory: int, used: int | None = None) -> bytes:
    """/proc/meminfo of a machine with ``memory`` bytes: the host's lines,
    with the totals and free figures capped at the machine's size, and,
    given what its memory cgroup has charged (``used``), at what is left
    of it: MemFree and MemAvailable follow the guest's own use."""
    kib = memory >> 10
    left = kib if used is None else max(0, kib - (used >> 10))
    out = []
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            if key in (b"MemTotal", b"MemFree", b"MemAvailable", b"CommitLimit"):
                value = int(rest.split()[0])
                cap = kib if key == b"CommitLimit" else left
                value = kib if key == b"MemTotal" else min(value, cap)
                line = b"%s:%s%d kB\n" % (key, b" " * max(1, 15 - len(key)), value)
            out.append(line)
    return b"".join(out)


def host_memory() -> int:
    """The host's MemTotal in bytes."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemTotal:"):
                return int(line.split()[1]) << 10
    return 1 << 30


#: Id extents (guest, host, count), as the root_uids setting's.
IdExtents = tuple[tuple[int, int, int], ...]


def format_extents(extents: IdExtents) -> str:
    """GUEST:HOST:COUNT,... (the root_uids setting's text, and the
    sandbox's rootids operation's)."""
    return ",".join(f"{g}:{h}:{n}" for g, h, n in extents)


class Caps(NamedTuple):
    """A process's capability sets (capabilities(7)), as masks: bit k is
    capability k.  Given, the guest's process starts with these, less
    what the machine's root never holds (sandbox.c, caps_after_ids)."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    def masks(self) -> tuple[str, ...]:
        return tuple(f"{m:x}" for m in self)


class Filter(NamedTuple):
    """A seccomp-bpf program (``struct sock_filter`` array) the guest's
    process installs just before it runs its command, over umld's own
    (an OCI bundle's linux.seccomp: umld/oci/_seccomp.py), with the
    seccomp(2) ``flags``."""

    flags: int
    program: bytes


class Privileges(NamedTuple):
    """What a guest process may do beyond its uid and gid, where its
    starter says (an OCI bundle's process): its supplementary groups
    (None: its primary group alone, as login(1) gives a user with no
    others), its capability sets (None: all the machine's root has; a uid
    other than 0 keeps none across its exec) and a seccomp filter over
    umld's (None: umld's alone)."""

    groups: tuple[int, ...] | None = None
    caps: Caps | None = None
    seccomp: Filter | None = None

    def add_to(self, ops: SandboxOps) -> None:
        """Their sandbox operations, the same for a new machine's first
        process and for an entering one."""
        if self.groups is not None:
            ops.op("groups", ",".join(map(str, self.groups)) or "-")
        if self.caps is not None:
            ops.op("caps", *self.caps.masks())
        if self.seccomp is not None:
            ops.op("seccomp", self.seccomp.flags, self.seccomp.program.hex())


#: A process's privileges where nobody says otherwise.
DEFAULT_PRIVILEGES = Privileges()


class SandboxOps:
    """The argument list of ``umld-sandbox``, built one operation at a time.

    The protocol between the guest kernel and the sandbox is declared
    here once: :data:`NEW_MACHINE` and :data:`ENTER` name every operation
    sandbox.c parses in each mode and how many arguments it takes (a test
    reads sandbox.c's parser and checks it against these tables), and
    every list the sandbox gets is built through :meth:`op`, which checks
    each operation against its mode's table.
    """

    #: umld-sandbox [OPS] -- CMD: a new machine.
    NEW_MACHINE: ClassVar[dict[str, int]] = {
        "cgroup": 1,  # DIR: join this cgroup first
        "rlimit": 2,  # nproc|nofile VALUE
        "oomfloor": 1,  # SCORE: the lowest oom_score_adj the guest may set (root, below 0)
        "subids": 3,  # BASEUID BASEGID COUNT: the guest's host ids (root)
        "rootids": 2,  # UIDS GIDS: the root tree's owners on disk, GUEST:HOST:COUNT,...
        "upper": 2,  # tmpfs OPTIONS | disk IMAGE | dir HOSTDIR: the writes of a cow root
        "writable": 1,  # GUEST: where a cow root's guest writes (an ordinary user's)
        "ids": 2,  # UID GID: the guest's identity
        "root": 2,  # HOSTDIR ro|rw|cow: the guest's / (cow: the host's /, copy-on-write)
        "bind": 3,  # HOST GUEST FLAGS (ro, rw, optional)
        "tmpfs": 2,  # GUEST OPTIONS
        "disk": 3,  # IMAGE GUEST FSTYPE
        "helper": 1,  # FD: the socket of umld's disk helper (fusedisk)
        "fusedisk": 3,  # IMAGE GUEST HOSTDIR: served by fuse2fs (ordinary users)
        "dev": 0,  # the machine's own /dev
        "loopctl": 0,  # /dev/loop-control in it, for the guest's root (devices/loop)
        "tty": 3,  # SOCKET COLS ROWS: a pty of the guest's devpts; its master to umld
        "mkdir": 1,  # GUEST: a world-writable directory
        "proc": 0,  # a fresh /proc
        "file": 2,  # HOST GUEST: a generated file over /proc or /sys
        "hide": 1,  # GUEST: covered (a socket, an export)
        "mask": 1,  # GUEST: covered as hide does, once /proc is mounted (maskedPaths)
        "readonly": 1,  # GUEST: read-only with all below, by the first process (readonlyPaths)
        "sysctl": 2,  # KEY VALUE: written by the first process (a joined net's: by the stage)
        "boottime": 0,  # uptime from 0 (a time namespace)
        "subreaper": 0,
        "uts": 2,  # HOSTNAME DOMAINNAME
        "cwd": 2,  # DIR strict|fallback
        "netns": 0,  # a network namespace of the guest's own, its loopback up
        "netsync": 1,  # FD: the first process asks umld (core/net.py) for its network
        "netjoin": 1,  # PATH: the guest joins this network namespace (--net ns:PATH)
        "hold": 1,  # FD: says "held" and waits for "g" before the command (OCI create/start)
        "groups": 1,  # G1,G2,... or -: the first process's supplementary groups
        "caps": 5,  # BND EFF PRM INH AMB: the first process's capability sets (hex)
        "seccomp": 2,  # FLAGS HEX: a seccomp-bpf program installed just before the command
        "nest": 0,  # /dev/fuse, /dev/net/tun and an uncovered /proc: umld can run inside
    }
    #: umld-sandbox enter PID [OPS] -- CMD: a process in a running machine.
    ENTER: ClassVar[dict[str, int]] = {
        "stdio": 3,  # IN OUT ERR: descriptors that become 0, 1, 2
        "ids": 2,
        "cwd": 1,
        "cgroup": 1,
        "groups": 1,  # as NEW_MACHINE's
        "caps": 5,  # as NEW_MACHINE's
        "seccomp": 2,  # as NEW_MACHINE's
        "tty": 3,  # SOCKET COLS ROWS: a new terminal of the machine's; its master to SOCKET
    }

    #: umld-sandbox names PID [OPS]: a running machine's names, set live.
    NAMES: ClassVar[dict[str, int]] = {
        "hostname": 1,  # NAME
        "domainname": 1,  # NAME
    }

    def __init__(self, enter: int | None = None, *, names: int | None = None) -> None:
        self.args: list[str] = [SANDBOX]
        self.table = self.NEW_MACHINE
        if enter is not None:
            self.args += ["enter", str(enter)]
            self.table = self.ENTER
        elif names is not None:
            self.args += ["names", str(names)]
            self.table = self.NAMES

    def op(self, name: str, *args: object) -> SandboxOps:
        if self.table.get(name) != len(args):
            raise ValueError(f"umld-sandbox has no operation {name} with {len(args)} arguments")
        self.args += [name, *map(str, args)]
        return self

    def command(self, argv: Sequence[str]) -> list[bytes]:
        """The whole list, ending with the command (none: an idle machine)."""
        return [os.fsencode(a) for a in (*self.args, "--", *argv)]


def sandbox_argv(
    layout: Layout,
    files: MachineFiles,
    *,
    uid: int,
    gid: int,
    cwd: str | None,
    cwd_strict: bool,
    argv: Sequence[str],
    memory: int,
    export_dir: bool = False,
    uts: tuple[str, str] | None = None,
    ids: IdRange | None = None,
    cgroups: Sequence[str] = (),
    hidden: Sequence[str] = (),
    rlimits: Sequence[tuple[str, str]] = (),
    upper: tuple[str, str] | None = None,
    tty: tuple[int, int, int] | None = None,
    net: tuple[int] | tuple[()] | None = None,
    nest: bool = False,
    oom_floor: int = 0,
    loop: bool = False,
    hold: int | None = None,
    privileges: Privileges = DEFAULT_PRIVILEGES,
    netjoin: str | None = None,
    root_ids: tuple[IdExtents, IdExtents] | None = None,
    masked: Sequence[str] = (),
    readonly: Sequence[str] = (),
    sysctls: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    """The argument list of ``umld-sandbox`` for a new machine.

    ``ids``: the machine's host id range (root-run machines); None keeps
    the guest's ids those of umld's user (or, as root, the host's own:
    the unsafe mode).  ``cgroups``: directories the sandbox joins first.
    ``hidden``: host paths the guest must not reach although a tree it is
    given holds them (the daemon's socket).  ``rlimits``: (nproc|nofile,
    value) set before the guest's first instruction.  ``upper``: where a
    copy-on-write root's writes go (the sandbox's ``upper`` operation).
    ``tty``: (socket, columns, rows): the guest's first process runs on a
    terminal of the machine's own devpts, whose master the sandbox sends
    on the socket (:mod:`umld.core.tty`).  ``net``: None shares the host's
    network namespace; otherwise the guest gets its own, and with (socket,)
    its first process asks umld on the socket before it runs
    (:mod:`umld.core.net`).  ``nest``: what a machine built inside this
    one needs (the nest setting).  ``oom_floor``: below 0, the lowest
    oom_score_adj the guest may set (the limits/oom_floor setting).
    ``loop``: the guest's /dev gets loop-control (the devices/loop
    setting; a root-run machine, ``ids`` given).  ``hold``: a socket on
    which the first process says ``held`` and waits for ``g`` before the
    command (Launch.hold).  ``privileges``: the first process's groups,
    capabilities and seccomp filter.  ``netjoin``: a network namespace it
    joins (--net ns:PATH).  ``root_ids``: the root tree's owners on disk
    (root_uids, root_gids).  ``masked``, ``readonly``: guest paths covered
    or made read-only (Config.masked/readonly).  ``sysctls``: (key, value)
    written before the command (the sysctl setting)."""
    if loop and ids is None:
        raise ValueError("loop devices need the machine's own ids")
    ops = SandboxOps()
    for path in cgroups:
        ops.op("cgroup", path)
    for name, value in rlimits:
        ops.op("rlimit", name, value)
    if oom_floor < 0:
        ops.op("oomfloor", oom_floor)
    if ids is not None:
        ops.op("subids", ids.uid, ids.gid, ids.size)
    # Before any mount: the idmap of the host trees includes the guest's
    # own uid and gid when they lie above the range.
    ops.op("ids", uid, gid)
    if root_ids is not None:
        if ids is None:
            raise ValueError("the root's own ids need the machine's own ids")
        # Where an extent list is empty, host id k is guest id k there.
        uids, gids = (extents or ((0, 0, ids.size),) for extents in root_ids)
        ops.op("rootids", format_extents(uids), format_extents(gids))
    table = layout.table()
    root = table[0]
    if root.kind == "cow":
        if upper is None:
            raise ValueError("a copy-on-write root needs an upper layer")
        ops.op("upper", *upper)
        # Run by an ordinary user, the overlays are cut so that these
        # copy up (sandbox.c, split_for_writes).
        home = os.path.realpath(layout.home) if layout.home else None
        for path in dict.fromkeys(p for p in (home, cwd, "/tmp", "/var/tmp") if p):
            ops.op("writable", path)
        ops.op("root", "/", "cow")
    else:
        ops.op("root", root.source, "ro" if root.readonly else "rw")
    for m in table[1:]:
        if m.kind == "dev":
            ops.op("dev")
            if loop:
                ops.op("loopctl")
        elif m.kind == "bind":
            flags = "ro" if m.readonly else "rw"
            if m.source == "/sys" and m.target == m.source:
                flags += ",optional"
            ops.op("bind", m.source, m.target, flags)
        elif m.kind == "tmpfs":
            opts = f"mode={_mode_for(m.target)}"
            opts += f",size={m.size or ramdisk_size(m.target, memory, layout.home)}"
            if ids is not None:
                # Owned by the guest's root (its home: by its user), who
                # is host id ids.uid here.
                owner = (uid, gid) if m.target == layout.home else (0, 0)
                opts += f",uid={_host_id(ids.uid, ids.size, owner[0])}"
                opts += f",gid={_host_id(ids.gid, ids.size, owner[1])}"
            ops.op("tmpfs", m.target, opts)
        else:
            lock = files.prepare_disk(m, uid, gid)
            if files.disks is None and fusedisk_needed():
                ops.op("helper", files.fuse_disks().stage_fd())
            if files.disks is not None:
                ops.op("fusedisk", m.source, m.target, files.disks.add(m.source, lock))
            else:
                ops.op("disk", m.source, m.target, "ext4")
    if tty is not None:
        # After every mount: the guest's /dev (and its devpts) is in place.
        ops.op("tty", *tty)
    if nest:
        # After every mount: /dev is the machine's.
        ops.op("nest")
    # What guest programs export to the host (the export's export/); a
    # read-only tree given as the root (--root DIR --read-only-root, an
    # OCI bundle's readonly root) has it only if it brings it along.
    fixed = root.kind != "cow" and root.readonly
    if export_dir and not fixed:
        ops.op("mkdir", "/run/umld/export")
    ops.op("proc")
    for guest, host in files.files.items():
        ops.op("file", host, guest)
    for path in hidden:
        for guest in guest_paths(table, path):
            ops.op("hide", guest)
    # Guest paths an OCI bundle masks (maskedPaths) or makes read-only
    # (readonlyPaths), over what every machine masks itself (sandbox.c).
    for guest in masked:
        ops.op("mask", guest)
    for guest in readonly:
        ops.op("readonly", guest)
    for key, value in sysctls:
        ops.op("sysctl", key, value)
    ops.op("boottime").op("subreaper")
    if uts is not None:
        ops.op("uts", *uts)
    if net is not None:
        ops.op("netns")
        for fd in net:
            ops.op("netsync", fd)
    elif netjoin is not None:
        ops.op("netjoin", netjoin)
    if cwd is not None:
        ops.op("cwd", cwd, "strict" if cwd_strict else "fallback")
    privileges.add_to(ops)
    if hold is not None:
        ops.op("hold", hold)
    return ops.command(argv)


def enter_argv(
    pid: int,
    argv: Sequence[str],
    *,
    uid: int,
    gid: int,
    cwd: str,
    stdio: Sequence[int] = (),
    cgroups: Sequence[str] = (),
    privileges: Privileges = DEFAULT_PRIVILEGES,
    tty: tuple[int, int, int] | None = None,
) -> list[bytes]:
    """The argument list of ``umld-sandbox enter``: ``argv`` as a new
    process of the machine whose process ``pid`` is (its namespaces, its
    cgroups, the machine's uid and gid; ``privileges``: its groups,
    capabilities and seccomp filter; ``tty``: (socket, columns, rows):
    it runs on a new terminal of the machine's devpts, whose master goes
    to the socket, an OCI engine's console socket)."""
    ops = SandboxOps(enter=pid)
    if stdio:
        ops.op("stdio", *stdio)
    for path in cgroups:
        ops.op("cgroup", path)
    ops.op("ids", uid, gid).op("cwd", cwd)
    privileges.add_to(ops)
    if tty is not None:
        ops.op("tty", *tty)
    return ops.command(argv)


def names_argv(
    pid: int, *, hostname: str | None = None, domainname: str | None = None
) -> list[str]:
    """The argument list of ``umld-sandbox names``: the guest's host and
    domain names, set in the UTS namespace of its process ``pid``."""
    ops = SandboxOps(names=pid)
    if hostname is not None:
        ops.op("hostname", hostname)
    if domainname is not None:
        ops.op("domainname", domainname)
    return ops.args


def serve_argv(stage: int, argv: Sequence[str]) -> list[str]:
    """The argument list of ``umld-sandbox serve``: ``argv`` (fuse2fs) in
    the user and mount namespaces of the machine's stage ``stage``, until
    this process (its parent) ends."""
    return [SANDBOX, "serve", str(stage), str(os.getpid()), "--", *argv]


def tied_argv(argv: Sequence[str]) -> list[str]:
    """The argument list of ``umld-sandbox tied``: ``argv`` (a machine's
    host-side helper, pasta) ended by SIGTERM when the calling thread of
    this process ends."""
    return [SANDBOX, "tied", str(os.getpid()), "--", *argv]


def fusedisk_needed() -> bool:
    from umld.core import fusedisk

    return fusedisk.needed()


def _host_id(base: int, count: int, guest: int) -> int:
    """The host id of guest id ``guest`` in a range (see sandbox.c's
    format_map: ids above the range take its last id)."""
    return base + guest if guest < count else base + count - 1


def guest_paths(table: Sequence[Mount], host: str) -> list[str]:
    """Where the host path ``host`` shows in a guest with this mount
    table, through the binds (and the copy-on-write root) that hold it
    (the last row at a guest path wins, as it is mounted last)."""
    host = os.path.realpath(host)
    out: list[str] = []
    for m in table:
        if m.kind not in ("bind", "cow"):
            continue
        src = m.source.rstrip("/") or "/"
        if host == src or host.startswith(src.rstrip("/") + "/"):
            rel = host[len(src) :].lstrip("/")
            guest = os.path.join(m.target, rel) if rel else m.target
            # Hidden by a later mount at or above it: nothing to hide.
            later = table[table.index(m) + 1 :]
            if any(
                guest == x.target or guest.startswith(x.target.rstrip("/") + "/") for x in later
            ):
                continue
            out.append(guest)
    return out
