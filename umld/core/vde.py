"""VDE virtual Ethernet: a machine's interface on a VDE switch, and the
switches a daemon owns.

Everything here drives Debian's vde2 programs (vde_switch(1),
vde_plug(1) of vdeplug4, which has the ``tap://`` and ``vde://``
plugins, and dpipe(1)); umld writes no switch and no frame pump.

A machine's interface (:func:`attach`)
    ``ip tuntap add dev NAME mode tap`` inside the machine's network
    namespace (a persistent tap, so that its MAC, address and state are
    set before anything is plugged into it), then ``vde_plug
    vde://SWITCH tap://NAME`` run in that namespace: vde_plug(1) copies
    frames between the switch and the tap.  The plug is entered into the
    namespace with nsenter(1): its network namespace only when we are
    root of the initial user namespace (CAP_NET_ADMIN over every
    namespace); otherwise also the user namespace that owns the network
    namespace (ioctl_ns(2) NS_GET_USERNS), with our own credentials kept
    (``--preserve-credentials``), so that the plug opens the switch as
    us (an ordinary user reaches only switches it may write to) and has
    CAP_NET_ADMIN in the machine's network namespace only.

    The plug lives inside the namespace, so it would keep it alive: a
    keeper process (``python -m umld.core.vde keep``) in the host's
    namespace starts it and ends it when the machine's process ends
    (pidfd_open(2)) or when the keeper is told to (VdeLink.close), and
    ends itself when the plug ends (the switch went away).  Each side
    outlives umld only as long as the machine does: a machine's
    processes die with their tracer.

    Name: ``vde0`` unless given.  MAC: the kernel's random one unless
    given; :func:`mac_for` makes a stable one from a machine's name.
    Address: ``address`` (CIDR) when given; otherwise the interface is
    up and unconfigured: a DHCP server on the switch (``slirpvde -s
    SWITCH --dhcp``, vde2) and a client in the guest (udhcpc, dhclient)
    configure it, as on a real Ethernet.

A daemon's switches (:class:`Switches`)
    ``vde_switch -s MOUNT.switch/NAME``, its standard input a pipe that
    the daemon holds: vde_switch(1) ends at end of file on its console,
    so a switch never outlives its daemon, even a killed one.  ``connect``
    runs ``vde_plug vde://DIR = CMD...``: vde_plug's stream form, whose
    CMD carries the switch's frames on its standard input and output
    (``ssh HOST vde_plug vde:///run/umld/daemon.switch/NAME`` joins a
    switch on another host: one Ethernet over one encrypted TCP stream;
    the frames never touch either host's Ethernet).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from umld.errors import UmldError, UsageError, get_logger

log = get_logger("umld.vde")

#: ioctl_ns(2): the user namespace that owns a namespace (_IO(0xb7, 0x1)).
NS_GET_USERNS = 0xB701
#: Seconds attach waits for its plug to be connected at both ends.
ATTACH_TIMEOUT = 10.0
#: Interface names the kernel takes (IFNAMSIZ 16 with its NUL, netdevice(7)).
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
#: Switch names of a daemon: one path component, nothing hidden.
_SWITCH_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_PACKAGE = "vde2 (Debian: apt-get install vde2)"


class VdeError(UmldError):
    """A VDE failure: one line for the user."""


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise VdeError(f"umld: {name} is not installed: it comes with {_PACKAGE}")
    return path


def mac_for(name: str) -> str:
    """A stable MAC for machine ``name``: locally administered, unicast
    (the two low bits of the first octet, IEEE 802)."""
    octets = bytearray(hashlib.sha256(b"umld-vde:" + name.encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


# -- switches by name or path -------------------------------------------------


def check_name(name: str) -> str:
    """``name`` if it may name a daemon's switch (one path component)."""
    if not _SWITCH_NAME.match(name):
        raise UsageError(f"bad switch name {name!r} (letters, digits, _ . -)")
    return name


def switches_dir(mount: str) -> str:
    """Where a daemon exported at ``mount`` keeps its switches: beside its
    export and control socket (MOUNT.switch/NAME)."""
    return os.path.abspath(mount).rstrip("/") + ".switch"


def default_daemon_mount() -> str:
    from umld.core.paths import default_mountpoint

    return default_mountpoint("daemon")


def check_switch(path: str) -> str:
    """``path`` as an absolute switch directory, if a switch answers there."""
    path = os.path.abspath(path)
    ctl = os.path.join(path, "ctl")
    try:
        mode = os.stat(ctl).st_mode
    except PermissionError:
        raise VdeError(f"umld: VDE switch {path}: permission denied") from None
    except OSError:
        mode = 0
    if not stat.S_ISSOCK(mode):
        raise VdeError(
            f"umld: no VDE switch at {path} (no control socket {ctl}; start one with "
            f"`vde_switch -s {path}` or `umld switch create NAME`)"
        )
    return path


def resolve(text: str, *, mount: str | None = None) -> str:
    """The switch directory that ``--net vde:TEXT`` names: a path (it has
    a slash: ``vde:/path/to/switch``, ``vde:./sw``) or the name of a
    switch of the daemon exported at ``mount`` (default: the default
    daemon's), as ``umld switch create NAME`` made it.  The ``vde:``
    prefix is optional.  A switch that is not there is one line."""
    text = text.removeprefix("vde:")
    if not text:
        raise UsageError("vde: needs a switch: vde:NAME (a daemon's switch) or vde:/PATH")
    if "/" in text:
        return check_switch(text)
    check_name(text)
    where = switches_dir(mount or default_daemon_mount())
    path = os.path.join(where, text)
    if not os.path.exists(os.path.join(path, "ctl")):
        raise VdeError(
            f"umld: no switch named {text!r} in the daemon at {mount or default_daemon_mount()}"
            f" (`umld switch ls`; `umld switch create {text}` makes one)"
        )
    return check_switch(path)


# -- a machine's interface ----------------------------------------------------


def initial_root() -> bool:
    """Root of the initial user namespace: capable over every namespace
    (CAP_NET_ADMIN over every network namespace, none to join)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


@contextlib.contextmanager
def _entry(pid: int) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """nsenter(1)'s words that enter the network namespace of host
    process ``pid`` (and its owning user namespace when we need its
    capabilities), and the descriptors they name (open while in use)."""
    nsenter = _program("nsenter")
    try:
        netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise VdeError(f"umld: no process {pid}") from None
    except PermissionError:
        raise VdeError(f"umld: process {pid}'s network namespace: permission denied") from None
    fds = [netfd]
    try:
        words = [nsenter, f"--net=/proc/self/fd/{netfd}"]
        if not initial_root():
            try:
                owner = fcntl.ioctl(netfd, NS_GET_USERNS)
            except OSError as exc:
                # EPERM: its owner is not in our user namespace's subtree.
                raise VdeError(f"umld: process {pid}'s network namespace: {exc.strerror}") from None
            fds.append(owner)
            if os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino:
                words[1:1] = [f"--user=/proc/self/fd/{owner}", "--preserve-credentials"]
        yield [*words, "--"], tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _ip(pid: int, commands: list[str], options: tuple[str, ...] = ()) -> str:
    """Run ``ip -batch`` commands in ``pid``'s network namespace; ip's
    output, or a VdeError with its complaint."""
    with _entry(pid) as (words, fds):
        done = subprocess.run(
            [*words, _program("ip"), *options, "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            pass_fds=fds,
            check=False,
        )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "open: Permission denied" in done.stderr:
            # ip tuntap's open(2) of the tun device: Debian makes it 0666
            # (udev); some containers give 0600.
            why = "cannot open /dev/net/tun: permission denied (Debian's mode is 0666)"
        raise VdeError(f"umld: process {pid}'s network: {why}")
    return done.stdout


@dataclass
class VdeLink:
    """One machine's interface on a switch (what :func:`attach` made)."""

    pid: int
    switch: str
    name: str
    mac: str
    address: str | None
    keeper: subprocess.Popen[bytes] = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _removed: bool = field(default=False, repr=False)

    @property
    def alive(self) -> bool:
        return self.keeper.poll() is None

    def close(self) -> None:
        """Unplug: end the plug and remove the interface (so that the same
        name can be plugged again).  Idempotent."""
        with self._lock:
            if self.keeper.poll() is None:
                self.keeper.terminate()
                try:
                    self.keeper.wait(5)
                except subprocess.TimeoutExpired:
                    self.keeper.kill()
                    self.keeper.wait()
            if not self._removed:
                self._removed = True
                # Best effort: the machine may have ended, and its
                # namespace with the interface.
                with contextlib.suppress(VdeError):
                    _ip(self.pid, [f"link del dev {self.name}"])


def attach(
    pid: int,
    switch: str,
    *,
    address: str | None,
    mac: str | None,
    name: str = "vde0",
) -> VdeLink:
    """Give the network namespace of host process ``pid`` an Ethernet
    interface ``name`` plugged into the VDE switch whose directory is
    ``switch`` (``vde_switch -s DIR``); up, with ``mac`` and ``address``
    (CIDR) when given.  Returns once the plug is connected at both ends."""
    if not _IFNAME.match(name):
        raise UsageError(f"bad interface name {name!r}")
    if mac is not None and not _MAC.match(mac):
        raise UsageError(f"bad MAC address {mac!r} (six hex octets: 02:00:00:00:00:01)")
    if mac is not None and int(mac[:2], 16) & 1:
        raise UsageError(f"bad MAC address {mac!r}: a multicast address")
    if address is not None:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise UsageError(f"bad address {address!r} (CIDR: 10.0.0.2/24)") from None
    plug = _program("vde_plug")
    switch = check_switch(switch)
    commands = [f"tuntap add dev {name} mode tap"]
    if mac is not None:
        commands.append(f"link set dev {name} address {mac}")
    if address is not None:
        commands.append(f"addr add {address} dev {name}")
    commands += [f"link set dev {name} up", "link set dev lo up"]
    _ip(pid, commands)
    try:
        # The plug's complaints go to a file: a pipe nobody reads once it
        # runs could fill and stop it.
        with _entry(pid) as (words, fds), tempfile.TemporaryFile() as errors:
            keeper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "umld.core.vde",
                    "keep",
                    str(pid),
                    "--",
                    *words,
                    plug,
                    "--descr",
                    f"umld pid {pid}",
                    f"vde://{switch}",
                    f"tap://{name}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                pass_fds=fds,
                start_new_session=True,
            )
            link = VdeLink(pid, switch, name, mac or "", address, keeper)
            _wait_connected(link, errors)
    except BaseException:
        with contextlib.suppress(VdeError):
            _ip(pid, [f"link del dev {name}"])
        raise
    if not link.mac:
        link.mac = _mac_of(pid, name)
    return link


def _mac_of(pid: int, name: str) -> str:
    out = _ip(pid, [f"link show dev {name}"], ("-o",))
    found = re.search(r"link/ether ([0-9a-f:]{17})", out)
    return found.group(1) if found else ""


def _wait_connected(link: VdeLink, errors: IO[bytes]) -> None:
    """Until the tap has a carrier (tuntap sets it when a descriptor is
    attached; vde_plug opens its first VNL, the switch, before the tap)
    or the plug has failed (its one-line complaint)."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    delay = 0.002
    while True:
        if link.keeper.poll() is not None:
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            why = (err.strip().splitlines() or [f"exit status {link.keeper.returncode}"])[-1]
            raise VdeError(f"umld: cannot plug into VDE switch {link.switch}: {why}")
        try:
            out = _ip(link.pid, [f"link show dev {link.name}"], ("-o",))
        except VdeError:
            link.close()
            raise
        if "LOWER_UP" in out:
            return
        if time.monotonic() > deadline:
            link.close()
            raise VdeError(f"umld: the plug into VDE switch {link.switch} did not connect")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# -- the keeper ---------------------------------------------------------------


def _keep(pid: int, argv: list[str]) -> int:
    """``python -m umld.core.vde keep PID -- CMD...``: run CMD until host
    process PID ends, SIGTERM comes, or CMD ends (its status).  CMD gets
    our inherited descriptors; we close them once it has them, so that
    only CMD holds the namespaces they name."""
    try:
        machine = os.pidfd_open(pid)
    except ProcessLookupError:
        sys.stderr.write(f"no process {pid}\n")
        return 1
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    # (listdir's own descriptor is in its list, closed when it returns.)
    ours = {machine, stop_r, stop_w}
    inherited = [
        fd
        for fd in map(int, os.listdir("/proc/self/fd"))
        if fd > 2 and fd not in ours and _is_open(fd)
    ]
    child = subprocess.Popen(argv, pass_fds=inherited)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    childfd = os.pidfd_open(child.pid)
    poller = select.poll()
    for fd in (machine, childfd, stop_r):
        poller.register(fd, select.POLLIN)
    while True:
        try:
            ready = {fd for fd, _ in poller.poll()}
        except InterruptedError:
            continue
        if childfd in ready:
            return child.wait()
        if ready:
            child.terminate()
            try:
                child.wait(3)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# -- a daemon's switches ------------------------------------------------------


@dataclass
class _Connection:
    argv: list[str]
    proc: subprocess.Popen[bytes]


@dataclass
class _Switch:
    name: str
    path: str
    proc: subprocess.Popen[bytes]
    console: int
    connections: list[_Connection] = field(default_factory=list)


class Switches:
    """The switches of one daemon (exported at ``mount``): made, listed,
    joined to others and removed on request; all ended by :meth:`close`
    (and by the daemon's end whatever it is: see the module's note)."""

    def __init__(self, mount: str) -> None:
        self.dir = switches_dir(mount)
        self._switches: dict[str, _Switch] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def create(self, name: str) -> str:
        check_name(name)
        program = _program("vde_switch")
        with self._lock:
            if name in self._switches and self._switches[name].proc.poll() is None:
                raise VdeError(f"umld: a switch named {name!r} exists")
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            path = self.path(name)
            shutil.rmtree(path, ignore_errors=True)  # a dead daemon's
            console_r, console_w = os.pipe2(os.O_CLOEXEC)
            # Its complaints go to a file: a pipe nobody reads could fill.
            with tempfile.TemporaryFile() as errors:
                try:
                    proc = subprocess.Popen(
                        [program, "--sock", path],
                        stdin=console_r,
                        stdout=subprocess.DEVNULL,
                        stderr=errors,
                        start_new_session=True,
                    )
                finally:
                    os.close(console_r)
                sw = _Switch(name, path, proc, console_w)
                deadline = time.monotonic() + ATTACH_TIMEOUT
                while not os.path.exists(os.path.join(path, "ctl")):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        self._end(sw)
                        errors.seek(0)
                        err = errors.read().decode(errors="replace")
                        why = (err.strip().splitlines() or ["it did not start"])[-1]
                        raise VdeError(f"umld: cannot start switch {name!r}: {why}")
                    time.sleep(0.005)
            self._switches[name] = sw
        log.info("switch %s created at %s", name, path)
        return path

    def connect(self, name: str, argv: list[str]) -> None:
        """Join switch ``name`` to what ``argv`` reaches: ``vde_plug
        vde://DIR = ARGV`` (ARGV's standard input and output carry the
        frames, as ``ssh HOST vde_plug SWITCH`` does)."""
        if not argv:
            raise UsageError("connect needs a command (umld switch connect NAME -- CMD...)")
        plug = _program("vde_plug")
        with self._lock:
            sw = self._get(name)
            proc = subprocess.Popen(
                [plug, "--descr", f"umld switch connect {name}", f"vde://{sw.path}", "=", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            sw.connections.append(_Connection(list(argv), proc))
        log.info("switch %s: connected through %s", name, " ".join(argv))

    def remove(self, name: str) -> None:
        with self._lock:
            sw = self._get(name)
            del self._switches[name]
            self._end(sw)
        log.info("switch %s removed", name)

    def table(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        with self._lock:
            for name, sw in sorted(self._switches.items()):
                rows.append(
                    {
                        "name": name,
                        "path": sw.path,
                        "state": "running" if sw.proc.poll() is None else "ended",
                        "connections": [
                            {
                                "command": " ".join(c.argv),
                                "state": "up" if c.proc.poll() is None else "ended",
                            }
                            for c in sw.connections
                        ],
                    }
                )
        return rows

    def close(self) -> None:
        with self._lock:
            for sw in self._switches.values():
                self._end(sw)
            self._switches.clear()
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)  # when empty: nothing of ours is left

    def _get(self, name: str) -> _Switch:
        sw = self._switches.get(name)
        if sw is None:
            raise VdeError(f"umld: no switch named {name!r}")
        return sw

    @staticmethod
    def _end(sw: _Switch) -> None:
        procs = [c.proc for c in sw.connections] + [sw.proc]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        with contextlib.suppress(OSError):
            os.close(sw.console)
        for proc in procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(sw.path, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "keep" and argv[2] == "--":
        return _keep(int(argv[1]), argv[3:])
    sys.stderr.write("usage: python -m umld.core.vde keep PID -- CMD...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
