"""The machine's own network: its network namespace and what connects it.

Modes (the ``net`` setting):

``user`` (the default)
    The guest's user namespace owns a network namespace of its own
    (umld-sandbox's ``netns``: clone(2) with CLONE_NEWUSER|CLONE_NEWNET,
    so the guest's root may configure its interfaces and never the
    host's, network_namespaces(7)), with its loopback up and one
    interface that pasta(1) (Debian package passt) connects to the host's
    network in user mode: pasta's tap device in the namespace, ordinary
    sockets on the host, no privilege and no network stack of ours.
    pasta configures it as the host's (address, route, DNS:
    ``--config-net``); it forwards no port and maps nothing of the host's
    loopback into the guest (``-t none -u none``, ``--no-map-gw`` and
    ``-T none -U none``, pasta(1) "Handling of local traffic").  Without
    pasta, slirp4netns(1) (``--configure --disable-host-loopback``), with
    one notice.  Either way, the ``publish`` setting's ports and those the
    guest's servers listen on are umld's own forwarder's
    (:mod:`umld.core.ports` says why).
``none``
    The namespace with its loopback alone.
``host``
    The host's network namespace, shared: the unisolated choice.
``vde:PATH``
    An Ethernet interface on the VDE switch at PATH (:mod:`umld.core.vde`,
    when it is built).

How the namespace and its helper meet.  The guest's first process (G in
sandbox.c) creates the namespace; before its first instruction it asks
umld on a socket pair ("netsync FD") and waits for the answer.  umld reads
G's pid from the request's credentials (SO_PASSCRED, unix(7): the kernel
translates it to umld's pid namespace), opens its ``ns/net`` and
``ns/user`` (kept for the machine's life: the live settings and the views
use these, not whatever namespace the guest's first process is in later),
starts pasta on them and answers "ok" once pasta has configured the
interface (pasta writes its pid file then, ``-P``), or the one line of why
not, which the sandbox prints as its error.

pasta's life is the machine's.  It runs in the foreground as a child of
``umld-sandbox tied``, whose parent-death signal (prctl(2)) ends it when
the thread of umld that started it ends (even when umld is killed); that
thread waits for the machine's end and then sends pasta SIGTERM.  pasta
dying under a running machine is logged and shown as an event.

Live control (``net/link``, ``net/address``) and the views (``net/interfaces``,
the counters of ``status`` and ``metrics.prom``) run ``ip(8)`` inside the
namespace through ``nsenter(1)`` on the kept descriptors, or read
``/proc/PID/net/dev`` of the guest's first process (which shows the
namespace's interfaces) while it is still in the machine's namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, final

from umld.core import vde
from umld.core.ports import Forward, PortForwards, Published
from umld.errors import UmldError, get_logger

if TYPE_CHECKING:
    from umld.core.control import MachineControl

log = get_logger("umld.net")

#: ioctl_ns(2): the parent of a user namespace (_IO(0xb7, 0x2)).
NS_GET_PARENT = 0xB702

#: Seconds pasta (or slirp4netns) has to configure the namespace.
START_TIMEOUT = 20.0


class NetError(ValueError):
    """A value the network settings refuse (settings.py makes it a
    SettingError); the message says why."""


# -- values ----------------------------------------------------------------------


def parse_mode(text: str) -> str:
    """``user``, ``none``, ``host``, ``vde:PATH`` (PATH absolute after ~) or
    ``ns:PATH`` (a network namespace to join, an absolute path)."""
    if text in ("user", "none", "host"):
        return text
    if text.startswith("ns:"):
        if not text[3:].startswith("/"):
            raise NetError(f"ns: needs the absolute path of a network namespace, not {text[3:]!r}")
        return text
    if text.startswith("vde:"):
        path = text[4:]
        if not path:
            raise NetError("vde: needs a switch: vde:NAME (a daemon's switch) or vde:/PATH")
        if "/" not in path and not path.startswith("~"):
            return text  # a daemon's switch, by name (resolved at start)
        return "vde:" + os.path.abspath(os.path.expanduser(path))
    raise NetError(f"'user', 'none', 'host', 'vde:NAME', 'vde:PATH' or 'ns:PATH', not {text!r}")


class Publish(NamedTuple):
    """One forwarded port: the host's HOSTADDR:HOSTPORT to the guest's
    GUESTPORT."""

    host_addr: str
    host_port: int
    guest_port: int
    proto: str  # tcp | udp

    def text(self) -> str:
        tail = "/udp" if self.proto == "udp" else ""
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host_port}:{self.guest_port}{tail}"


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise NetError(f"{whole!r}: a port is 1 to 65535, not {text!r}")
    return int(text)


def parse_publish(text: str) -> Publish:
    """``[HOSTADDR:]HOSTPORT:GUESTPORT[/udp|/tcp]``; HOSTADDR is the host's
    loopback (127.0.0.1) unless given (``0.0.0.0``: every address)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise NetError(f"{text!r}: /tcp or /udp, not /{proto}")
    addr = "127.0.0.1"
    if spec.startswith("["):  # [::1]:8080:80
        addr, sep, spec = spec[1:].partition("]:")
        if not sep:
            raise NetError(f"{text!r}: [IPV6]:HOSTPORT:GUESTPORT")
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            addr, spec = parts[0], ":".join(parts[1:])
        elif len(parts) != 2:
            raise NetError(f"{text!r}: HOSTPORT:GUESTPORT or HOSTADDR:HOSTPORT:GUESTPORT")
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        raise NetError(f"{text!r}: {addr!r} is not an IP address") from None
    host, _, guest = spec.partition(":")
    return Publish(addr, _port(host, text), _port(guest, text), proto)


def parse_address(text: str) -> str:
    """An interface address in CIDR form (``10.0.2.15/24``, ``fd00::5/64``)."""
    if "/" not in text:
        raise NetError(f"an address with its prefix length (10.0.2.15/24), not {text!r}")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise NetError(f"not an address in CIDR form (10.0.2.15/24): {text!r}") from None
    if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
        raise NetError(f"{text}: not an address for an interface")
    return str(iface)


# -- programs ---------------------------------------------------------------------


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def engine() -> tuple[str, str]:
    """(pasta|slirp4netns, its path) for user mode; UmldError, one line,
    when neither is installed."""
    path = shutil.which("pasta")
    if path is not None:
        return "pasta", path
    path = shutil.which("slirp4netns")
    if path is not None:
        return "slirp4netns", path
    raise UmldError(
        "umld: --net user needs pasta (Debian package passt) or slirp4netns, and neither is "
        "installed (or give --net none or --net host)"
    )


def lazy_network(mode: str, publish: Sequence[Publish] = ()) -> bool:
    """Whether a machine's network starts at its first use: user mode
    without published ports.  pasta takes ~30 ms to start, six times what
    a whole machine's start may cost, and most programs never open a
    socket; the guest's first socket(2) of a family other than AF_UNIX
    (the seccomp filter stops it, feature "lazynet") waits until pasta has
    configured the interface, so no program sees it unconfigured.  Before
    then only /proc/net and /sys/class/net, read without a socket, show
    the loopback alone.  Published ports are listened on from the start,
    so their machines start their network with them."""
    return mode == "user" and not publish


def check(mode: str, publish: Sequence[Publish] = ()) -> None:
    """What a machine's start needs for ``mode``, checked before it starts:
    UmldError, one line, otherwise."""
    if publish and mode != "user":
        raise UmldError(
            f"umld: --publish {publish[0].text()} needs --net user (this machine's is {mode})"
        )
    if mode == "user":
        kind, _ = engine()
        if kind == "slirp4netns":
            log.warning("pasta (Debian package passt) is not installed: using slirp4netns")
    elif mode.startswith("vde:"):
        vde.resolve(mode)  # the switch is there (one line if not)
    elif mode.startswith("ns:"):
        try:
            with open(mode[3:], "rb"):
                pass
        except OSError as exc:
            raise UmldError(f"umld: --net {mode}: {exc.strerror}") from None


# -- one machine's network -----------------------------------------------------------


class Interface(NamedTuple):
    name: str
    mac: str
    state: str  # UP | DOWN | UNKNOWN ...
    addresses: tuple[str, ...]


class Counters(NamedTuple):
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


@final
class MachineNet:
    """The network of one machine (every mode but ``host``): the socket its
    first process asks on, the helper that connects it, the namespace's
    descriptors.  Any thread."""

    def __init__(
        self,
        mode: str,
        *,
        rundir: str,
        publish: Sequence[Publish] = (),
        address: str | None = None,
        link: str = "up",
        forward: str = "auto",
        on_event: Callable[[str], None] | None = None,
        mac: str | None = None,
        lazy: bool = False,
    ) -> None:
        self.mode = mode
        #: Whether the helper starts at the network's first use (the
        #: guest's first socket(2) that needs it, or a view of it) rather
        #: than before the guest's first instruction (``lazy_network``).
        self.lazy = lazy
        #: The MAC of a vde interface (stable per machine name).
        self._mac = mac
        self._rundir = rundir
        self._address = address
        self._link = link
        self.on_event = on_event
        #: The automatic forwards and the published ports (net/ports).
        self.ports = PortForwards(
            enabled=forward == "auto",
            published=[Published(p.proto, p.host_addr, p.host_port, p.guest_port) for p in publish],
            on_event=self._report,
        )
        self._ours, self._stage_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        #: The host pid of the guest's first process, once it asked.
        self.pid: int | None = None
        self._netns: int | None = None
        self._userns: int | None = None
        self._admin: int | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._vde_link: vde.VdeLink | None = None
        self._ended = threading.Event()
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # The last interfaces() (monotonic time, view), for reads that
        # may take one a little old; None after a change of ours.
        self._seen: tuple[float, list[Interface]] | None = None
        #: A lazy network: asked for (or the machine ended), and what to
        #: call once it is up (or failed: it will be no more).
        self._wanted = threading.Event()
        self._waiters: list[Callable[[], None]] = []
        self._settled = False
        self._up_lock = threading.Lock()
        #: The guest process that asked for a lazy network (bring_up).
        self._probe: int | None = None
        #: What asked first (bring_up's ``why``).
        self._first_use: str | None = None

    # -- start ---------------------------------------------------------------------

    def _report(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    def stage_fd(self) -> int:
        """The guest's end of the socket, inheritable until start."""
        fd = self._stage_end.fileno()
        os.set_inheritable(fd, True)
        return fd

    def start(self) -> None:
        """The sandbox runs: answer its request from a thread that lives as
        long as the helper does (the parent-death signal's thread)."""
        self._stage_end.close()
        self._thread = threading.Thread(target=self._run, name="umld-net", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """The machine has ended: its helper goes, and the descriptors."""
        self._ended.set()
        self._wanted.set()
        if self._thread is None:
            self._stage_end.close()
            self._ours.close()

    def _run(self) -> None:
        try:
            pid = self._request()
            if pid is None:
                return
            try:
                self._open(pid)
                if not self.lazy:
                    self._attach()
                answer = "ok"
            except UmldError as exc:
                answer = str(exc).removeprefix("umld: ")
            except Exception as exc:
                log.exception("the machine's network failed")
                answer = f"the machine's network could not start: {exc}"
            with contextlib.suppress(OSError):
                self._ours.sendall((" ".join(answer.split()) + "\n").encode())
            if answer == "ok" and not self.lazy:
                self.ready.set()
            elif answer == "ok":
                self._wanted.wait()
                if not self._ended.is_set():
                    self._come_up()
            self._ended.wait()
        finally:
            self._end()

    # -- a network that comes up at its first use -----------------------------------

    @property
    def is_up(self) -> bool:
        """Whether a socket(2) need not wait: the network is up, or failed
        to come up (the guest's sockets then go on without it), or the
        sandbox is still making the namespace (its own sockets bring the
        loopback up before it asks for the network, "netsync")."""
        return self._settled or self.pid is None

    def bring_up(self, then: Callable[[], None], pid: int | None = None, *, why: str) -> bool:
        """True when the network is up already; otherwise have it brought
        up (on this machine's network thread) and call ``then`` from that
        thread once it is.  ``pid``: a process of the guest's in the
        namespace that stays while it comes up (the first may be gone).
        ``why``: the first use, named in the event that it came up."""
        with self._up_lock:
            if self._settled:
                return True
            if pid is not None and self._probe is None:
                self._probe = pid
            if self._first_use is None:
                self._first_use = why
            self._waiters.append(then)
        self._wanted.set()
        return False

    def _come_up(self) -> None:
        """Start the helper now (a lazy network's first use)."""
        used = (self._link, self._address)
        try:
            self._attach()
            self.ready.set()
            self._report(f"net: up at its first use ({self._first_use})")
        except Exception as exc:
            why = str(exc).removeprefix("umld: ")
            if not isinstance(exc, UmldError):
                log.exception("the machine's network failed")
            else:
                log.warning("the machine's network did not come up: %s", why)
            self._report(f"net: the network did not come up: {why}")
        with self._up_lock:
            self._settled = True
            waiters, self._waiters = self._waiters, []
        if self.ready.is_set() and (self._link, self._address) != used:
            # A live setting written while it came up.
            with contextlib.suppress(NetError, OSError, subprocess.SubprocessError):
                if self._address != used[1] and self._address is not None:
                    self.set_address(self._address)
                if self._link != used[0]:
                    self.set_link(self._link)
        for then in waiters:
            then()

    def ensure_up(self, why: str = "a view of it read") -> None:
        """A view of the network (any thread but the tracer's): a lazy one
        comes up first, once the guest's first process has its namespace."""
        if not self.lazy or self._settled or self.pid is None:
            return
        done = threading.Event()
        if not self.bring_up(done.set, why=why):
            done.wait(START_TIMEOUT + 5)

    def defers(self) -> bool:
        """Whether a live setting waits for the network's first use (kept,
        applied when it comes up)."""
        with self._up_lock:
            return self.lazy and not self._settled

    def _request(self) -> int | None:
        """Waits for the first process's one line; its pid (None: the
        machine ended before it asked)."""
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        data = b""
        pid = None
        while not data.endswith(b"\n"):
            try:
                chunk, anc, _, _ = self._ours.recvmsg(64, size)
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", raw[: struct.calcsize("3i")])[0]
        if data != b"net\n" or not pid:
            log.warning("network helper: unknown request %r", data[:100])
            return None
        return int(pid)

    def _open(self, pid: int) -> None:
        """The namespaces of the guest's first process, kept."""
        self.pid = pid
        try:
            self._netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            if not vde.initial_root():
                # The stage's user namespace, the parent of the guest's: our
                # uid 0 there keeps its capabilities across execve(2) (the
                # guest's maps only the guest's uid), and as that namespace's
                # owner's process in its parent, it has them all in the
                # guest's, which owns the network namespace
                # (user_namespaces(7), ioctl_ns(2) NS_GET_PARENT).
                self._admin = fcntl.ioctl(self._userns, NS_GET_PARENT)
        except OSError as exc:
            raise UmldError(f"umld: the machine's network namespace: {exc.strerror}") from None

    def _attach(self) -> None:
        """Connect the namespace: the helper of the mode, the settings."""
        pid = self._in_namespace()
        if self.mode == "user":
            kind, path = engine()
            if kind == "pasta":
                self._start_pasta(path, pid)
            else:
                self._start_slirp(path, pid)
            self.ports.start(self._spawn_inside)
        elif self.mode.startswith("vde:"):
            self._vde_link = vde.attach(
                pid, vde.resolve(self.mode), address=self._address, mac=self._mac
            )
        if self._address is not None and not self.mode.startswith("vde:"):
            self.set_address(self._address)
        if self._link == "down":
            self.set_link("down")

    def _in_namespace(self) -> int:
        """A process in the machine's network namespace, to watch it
        through (/proc/PID/net): the guest's first process, which lives as
        long as the machine, unless it moved to a namespace of its own
        (``unshare -n``); then the one that asked for the network.  When
        neither is there, the first process all the same (the wait for the
        route then times out with one line)."""
        assert self.pid is not None and self._netns is not None
        ino = os.fstat(self._netns).st_ino
        for pid in (self.pid, self._probe):
            if pid is None:
                continue
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                    return pid
            except OSError:
                continue
        return self.pid

    def _tied(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        from umld.core.sandbox import tied_argv

        return subprocess.Popen(
            tied_argv(argv),
            stdin=subprocess.DEVNULL,
            # A group of its own: no Ctrl-C of umld's terminal reaches it.
            start_new_session=True,
            **kw,
        )

    def _start_pasta(self, path: str, pid: int) -> None:
        """pasta on the machine's namespace, in the foreground (-f) so that
        it is ours to end.  In the foreground this pasta says nothing when
        it has configured the namespace (no pid file, no output), so the
        namespace is watched for its default route (``--config-net`` adds
        it last, after the address)."""
        log_path = os.path.join(self._rundir, "pasta.log")
        assert self._netns is not None and self._userns is not None
        argv = [
            path,
            "-f",
            "-q",
            "-l",
            log_path,
            "--config-net",
            "--no-map-gw",
            # No port: they are umld's to forward (ports.py says why); and
            # nothing of the host's loopback into the guest (pasta(1): all
            # four default to auto).
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
        ]
        if os.geteuid() == 0:
            # pasta would drop to "nobody", which may not join a namespace
            # that root's machine owns (user_namespaces(7)).
            argv += ["--runas", "0"]
        argv += ["--netns", f"/proc/self/fd/{self._netns}"]
        argv += ["--userns", f"/proc/self/fd/{self._userns}"]
        try:
            self._helper = self._tied(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(self._netns, self._userns),
            )
        except OSError as exc:
            raise UmldError(f"umld: cannot start pasta: {exc.strerror}") from None
        if not self._wait_route(pid, self._helper):
            if self._helper.poll() is None:
                self._helper.kill()
                self._helper.wait()
                raise UmldError(
                    f"umld: pasta did not configure the machine's network in {START_TIMEOUT:.0f} s"
                )
            raise UmldError(f"umld: pasta could not connect the machine: {self._why(log_path)}")
        self._watch(self._helper, "pasta", log_path)

    @staticmethod
    def _wait_route(pid: int, helper: subprocess.Popen[bytes]) -> bool:
        """Whether the namespace of ``pid`` got a default route (IPv4 or
        IPv6, proc(5) /proc/net/route and ipv6_route) while ``helper``
        lives."""
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.001
        while helper.poll() is None and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/net/route", "rb") as f:
                    if any(ln.split()[1:2] == [b"00000000"] for ln in f.read().splitlines()[1:]):
                        return True
                with open(f"/proc/{pid}/net/ipv6_route", "rb") as f:
                    if any(ln.startswith(b"0" * 32 + b" 00 ") and not ln.endswith(b" lo")
                           for ln in f.read().splitlines()):  # fmt: skip
                        return True
            except OSError:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return False

    def _start_slirp(self, path: str, pid: int) -> None:
        """slirp4netns where pasta is missing: ``--ready-fd`` says when the
        tap is configured."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        argv = [
            path,
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            f"--ready-fd={write_end}",
            f"--userns-path=/proc/self/fd/{self._userns}",
            "--netns-type=path",
            f"/proc/self/fd/{self._netns}",
            "tap0",
        ]
        log_path = os.path.join(self._rundir, "slirp4netns.log")
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            assert self._netns is not None and self._userns is not None
            self._helper = self._tied(
                argv, stdout=out, stderr=out, pass_fds=(write_end, self._netns, self._userns)
            )
        finally:
            os.close(write_end)
            os.close(out)
        with os.fdopen(read_end, "rb") as r:
            ready = r.read(1)
        if ready != b"1":
            self._helper.wait(START_TIMEOUT)
            raise UmldError(
                f"umld: slirp4netns could not connect the machine: {self._why(log_path)}"
            )
        self._watch(self._helper, "slirp4netns", log_path)

    def _why(self, log_path: str) -> str:
        lines: list[str] = []
        helper = self._helper
        if helper is not None and helper.stderr is not None:
            lines += helper.stderr.read().decode(errors="replace").splitlines()
        with contextlib.suppress(OSError), open(log_path, "rb") as f:
            lines += f.read().decode(errors="replace").splitlines()
        # pasta also tries the system log first: not the reason.
        lines = [ln.strip() for ln in lines if ln.strip() and "syslog" not in ln]
        status = helper.poll() if helper is not None else None
        return lines[-1] if lines else f"it ended with status {status}"

    def _watch(self, proc: subprocess.Popen[bytes], what: str, log_path: str) -> None:
        def watch() -> None:
            proc.wait()
            if not self._ended.is_set():
                why = self._why(log_path)
                log.warning("%s ended under its machine: %s", what, why)
                self._report(f"net: {what} ended: {why}")

        threading.Thread(target=watch, name=f"umld-{what}", daemon=True).start()

    def _end(self) -> None:
        self.ports.close()
        helper = self._helper
        if helper is not None and helper.poll() is None:
            helper.terminate()
            try:
                helper.wait(5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if helper is not None and helper.stderr is not None:
            helper.stderr.close()
        if self._vde_link is not None:
            with contextlib.suppress(Exception):
                self._vde_link.close()
        for fd in (self._netns, self._userns, self._admin):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._netns = self._userns = self._admin = None
        self._ours.close()

    def initial(
        self, *, link: str | None = None, address: str | None = None, forward: str | None = None
    ) -> None:
        """What a live setting says before the network is connected."""
        if link is not None:
            self._link = link
        if address is not None:
            self._address = address
        if forward is not None:
            self.ports.set_enabled(forward == "auto")

    def apply(self, what: str, value: str) -> None:
        """A live change: ``link``, ``address`` or ``forward``."""
        if what == "forward":
            self.ports.set_enabled(value == "auto")
        elif what == "link":
            self.set_link(value)
        else:
            self.set_address(value)

    # -- inside the namespace -------------------------------------------------------

    def _nsenter(self, argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        """``argv`` to run in the machine's network namespace: nsenter(1)
        on the kept descriptors (which the caller passes, with the lock
        held); an ordinary user's as uid 0 of the stage's user namespace
        (see _connect), root's as itself."""
        net = self._netns
        if net is None:
            raise NetError("the machine's network is not up")
        words = [_which("nsenter") or "nsenter"]
        fds: tuple[int, ...] = (net,)
        if self._admin is not None:
            # Our uid is that namespace's 0 already (its map), and it
            # denies setgroups(2), which nsenter would call otherwise.
            words += [f"--user=/proc/self/fd/{self._admin}", "--preserve-credentials"]
            fds = (net, self._admin)
        return [*words, f"--net=/proc/self/fd/{net}", "--", *argv], fds

    def _spawn_inside(self, argv: list[str], keep: tuple[int, ...]) -> subprocess.Popen[bytes]:
        """A helper of the machine's life in its namespace (the forwarder),
        tied to this thread as pasta is."""
        words, fds = self._nsenter(argv)
        with open(os.path.join(self._rundir, "forwarder.log"), "ab") as log_file:
            return self._tied(words, stdout=log_file, stderr=log_file, pass_fds=(*fds, *keep))

    def _inside(self, argv: list[str], *, check: bool = True) -> str:
        """``argv`` run in the machine's network namespace, its output."""
        with self._lock:
            words, fds = self._nsenter(argv)
            proc = subprocess.run(
                words, pass_fds=fds, capture_output=True, stdin=subprocess.DEVNULL, timeout=30
            )
        if check and proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise NetError(why[-1] if why else f"{argv[0]} failed")
        return proc.stdout.decode(errors="replace")

    def _ip(self, *args: str, check: bool = True) -> str:
        return self._inside([_which("ip") or "ip", *args], check=check)

    def interface(self) -> str:
        """The machine's interface (the first that is not the loopback)."""
        for iface in self.interfaces():
            if iface.name != "lo":
                return iface.name
        raise NetError("the machine has no network interface (--net none)")

    def interfaces(self, max_age: float = 0.0) -> list[Interface]:
        """The namespace's interfaces (``ip -j addr show``, 1-3 ms: a
        process in the namespace), brought up first; ``max_age``: a view
        that old may do (a monitor's reads, at most one process a
        second).  A change made through umld is seen at once."""
        self.ensure_up()
        kept = self._seen
        if kept is not None and time.monotonic() - kept[0] <= max_age:
            return kept[1]
        taken = time.monotonic()
        out = []
        for link in json.loads(self._ip("-j", "addr", "show") or "[]"):
            addrs = tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", ()))
            out.append(
                Interface(
                    str(link.get("ifname", "?")),
                    str(link.get("address", "")),
                    _state(link),
                    addrs,
                )
            )
        self._seen = (taken, out)
        return out

    def set_link(self, state: str) -> None:
        """The interface's carrier off or on (``ip link set carrier``,
        the cable pulled): the guest sees NO-CARRIER and its frames go
        nowhere, its routes and addresses stay.  Not the administrative
        state: pasta writes to its tap all the time, a write to a tap that
        is down fails (EIO) and this pasta then tries to reopen its tap
        and exits."""
        name = self.interface()
        self._seen = None
        self._ip("link", "set", "dev", name, "carrier", "off" if state == "down" else "on")

    def set_address(self, cidr: str) -> None:
        """The interface's address of that family replaced by ``cidr``; the
        default route (pasta's gateway) kept, on-link."""
        name = self.interface()
        family = "-6" if ":" in cidr else "-4"
        routes = json.loads(self._ip(family, "-j", "route", "show", "default") or "[]")
        self._seen = None
        self._ip(family, "addr", "flush", "dev", name, "scope", "global")
        self._ip("addr", "add", cidr, "dev", name)
        for r in routes:
            if r.get("gateway") and r.get("dev") == name:
                self._ip(family, "route", "replace", "default", "via", r["gateway"], "dev",
                         name, "onlink", check=False)  # fmt: skip
        self._address = cidr

    def counters(self) -> dict[str, Counters]:
        """rx/tx bytes and packets per interface (/proc/PID/net/dev of the
        guest's first process, while it is in the machine's namespace)."""
        pid, net = self.pid, self._netns
        if pid is None or net is None:
            return {}
        try:
            mine = os.fstat(net)
            theirs = os.stat(f"/proc/{pid}/ns/net")
            if (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev):
                with open(f"/proc/{pid}/net/dev", "rb") as f:
                    text = f.read().decode()
            else:
                text = self._inside(["cat", "/proc/net/dev"])
        except (OSError, NetError, subprocess.SubprocessError):
            return {}
        return parse_net_dev(text)


def _state(link: dict[str, Any]) -> str:
    """UP, or DOWN when the interface is down or has no carrier (its flags:
    the operstate follows a carrier change only later, linkwatch)."""
    flags = link.get("flags", ())
    if link.get("ifname") == "lo":
        return "UP" if "UP" in flags else "DOWN"
    return "UP" if "UP" in flags and "LOWER_UP" in flags else "DOWN"


def parse_net_dev(text: str) -> dict[str, Counters]:
    """/proc/net/dev (proc(5)): per interface, receive bytes and packets,
    then (9th field on) transmit bytes and packets."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 10:
            continue
        out[name.strip()] = Counters(int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9]))
    return out


# -- live settings (umld.core.settings rows) --------------------------------------


def _machine_net(control: MachineControl) -> MachineNet:
    net = control.files.net
    if net is None:
        raise NetError(f"--net {control.net_mode}: the machine has no interface of its own")
    if not net.ready.is_set():
        raise NetError("the machine's network is not up yet")
    return net


def _apply(control: MachineControl, what: str, value: str) -> None:
    from umld.core.settings import SettingError

    net = control.files.net
    if net is not None and ((net.pid is None and control.guest_process() is None) or net.defers()):
        # Before the guest asked for its network, or before its first use
        # (lazy): applied when it comes up.
        net.initial(**{what: value})
        return
    try:
        _machine_net(control).apply(what, value)
    except NetError as exc:
        raise SettingError(str(exc)) from None


def set_link(control: MachineControl, value: str) -> None:
    """``config/net/link``: the guest's interface up or down."""
    _apply(control, "link", value)


def set_forward(control: MachineControl, value: str) -> None:
    """``config/net/forward``: the guest's listening ports forwarded from
    the host's loopback (``auto``) or not (``none``)."""
    _apply(control, "forward", value)


def ports(control: MachineControl) -> list[Forward]:
    """``net/ports``: the host's ports that reach the guest's."""
    net = control.files.net
    return [] if net is None else net.ports.rows()


def set_address(control: MachineControl, value: str) -> None:
    """``config/net/address``: the guest's interface address."""
    _apply(control, "address", value)


#: Set on a thread while it reads every setting for a monitor
#: (:func:`quiet_reads`).
_quiet = threading.local()


@contextlib.contextmanager
def quiet_reads() -> Iterator[None]:
    """Reads of the network's settings on this thread, meanwhile, are a
    monitor's (the machine's ``status``): they never bring the network up
    (before its first use it shows the address set, if any) and may use
    a view of the interfaces up to a second old.  A read of
    config/net/address on its own is a question about the network, and
    brings it up."""
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = False


def address(control: MachineControl) -> str | None:
    """``config/net/address`` as it is: the interface's first address
    (pasta's, the guest's own change, or the last one set)."""
    net = control.files.net
    quiet = getattr(_quiet, "on", False)
    if net is not None and not quiet:
        net.ensure_up("config/net/address read")
    if net is None or not net.ready.is_set():
        return None if net is None else net._address
    try:
        for iface in net.interfaces(max_age=1.0 if quiet else 0.0):
            if iface.name != "lo":
                glob = [a for a in iface.addresses if not a.startswith("fe80:")]
                return glob[0] if glob else None
    except (NetError, OSError, subprocess.SubprocessError):
        pass
    return net._address
