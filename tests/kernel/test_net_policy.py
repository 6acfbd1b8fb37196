"""The network policy holds against every way to name a destination.

tests/guest/netprobe.c, built as a 64-bit and a 32-bit program, connects
and sends with each mechanism: connect, TCP MSG_FASTOPEN, UDP sendto,
sendmsg (with a control message), sendmmsg, the i386 ABI (int 0x80 from a
64-bit program, a -m32 program's own calls, socketcall), io_uring, and a
second thread that rewrites the address while the first one calls.  The
forbidden destination is this host's own non-loopback address, where a
listener of the test sees whatever arrives; the allowed one (under
``loopback``) is 127.0.0.1.  Natively every mechanism reaches the
forbidden listener (so each test can fail); under umld with
``net/connect`` ``deny`` or ``loopback`` nothing does, and what loopback
allows arrives intact.  ``net/accept closed`` holds accept through every
i386 path.  Policies are set from the start with --config-dir; every test
runs with both backends, as root and as an ordinary user.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User, wait_for

pytestmark = pytest.mark.uses_ptrace

ENETUNREACH = -errno.ENETUNREACH
ENOSYS = -errno.ENOSYS
IP_RECVTTL = 12  # linux/in.h (the socket module of Python 3.11 lacks it)
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


def _host_address() -> str | None:
    """A local IPv4 address of this host other than loopback (from the
    kernel's local routing table)."""
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for prev, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line and "|--" in prev:
            addr = prev.split("|--")[1].strip()
            if not addr.startswith("127."):
                return addr
    return None


HOST_IP = _host_address()


@pytest.fixture(scope="module")
def probes() -> Iterator[Path]:
    """netprobe (64-bit) and netprobe32 (-m32) in a directory every user
    can read."""
    out = Path(f"/tmp/umld-netprobe-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(mode=0o755)
    src = str(GUEST_SRC / "netprobe.c")
    base = ["gcc", "-O1", "-Wall", "-Werror", "-pthread"]
    subprocess.run([*base, "-o", str(out / "netprobe"), src], check=True)
    m32 = subprocess.run(
        [*base, "-m32", "-o", str(out / "netprobe32"), src], capture_output=True, text=True
    )
    if m32.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        pytest.skip(f"cannot build 32-bit programs (gcc-multilib): {m32.stderr.strip()}")
    yield out
    shutil.rmtree(out, ignore_errors=True)


@dataclass
class Listeners:
    """UDP and TCP listeners on one port of an address."""

    ip: str
    udp: socket.socket
    tcp: socket.socket

    @property
    def port(self) -> int:
        return int(self.udp.getsockname()[1])

    def arrived(self) -> list[str]:
        """What arrived since the last look: each datagram (with its TTL)
        and "conn" for each connection.  A datagram the test sends itself
        marks the end, so that nothing sent before is still on its way."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"end-mark", (self.ip, self.port))
        got: list[str] = []
        while True:
            ready, _, _ = select.select([self.udp], [], [], 10)
            assert ready, "the end mark did not arrive"
            data, anc, _flags, _addr = self.udp.recvmsg(256, socket.CMSG_SPACE(4))
            if data == b"end-mark":
                break
            ttl = [struct.unpack("=i", d[:4])[0] for lvl, t, d in anc if t == socket.IP_TTL]
            got.append(data.decode() + (f" ttl={ttl[0]}" if ttl and ttl[0] != 64 else ""))
        self.tcp.setblocking(False)
        try:
            while True:
                conn, _ = self.tcp.accept()
                conn.close()
                got.append("conn")
        except BlockingIOError:
            pass
        return got


def _listen(ip: str) -> Listeners:
    """A UDP and a TCP listener on one port the kernel picks; another
    process may hold that TCP port already (the UDP one was free), so the
    pair is tried again on another port."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for every datagram of a run (the guest's 50,000 calls may
        # all be sent before the test reads): root may pass rmem_max.
        try:
            udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 26)
        except PermissionError:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        udp.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        udp.bind((ip, 0))
        tcp = socket.socket()
        try:
            tcp.bind((ip, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        return Listeners(ip, udp, tcp)
    raise AssertionError(f"no port free for both UDP and TCP on {ip}")


@pytest.fixture
def forbidden() -> Iterator[Listeners]:
    if HOST_IP is None:
        pytest.skip("this host has no IPv4 address besides loopback")
    lst = _listen(HOST_IP)
    yield lst
    lst.udp.close()
    lst.tcp.close()


@pytest.fixture
def allowed() -> Iterator[Listeners]:
    lst = _listen("127.0.0.1")
    yield lst
    lst.udp.close()
    lst.tcp.close()


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> User | None:
    return None if request.param == "root" else ordinary_user


class Guest:
    """Runs commands under umld (as root or the user) with a config dir
    whose settings apply from the guest's first instruction."""

    def __init__(
        self, backend: str, who: User | None, base: Path, probes: Path, net: str = "host"
    ) -> None:
        self.backend = backend
        self.who = who
        #: The machine's network (--net): the policy holds in each.
        self.net = net
        self.config = base / "config"
        (self.config / "net").mkdir(parents=True)
        self.probes = probes
        base.chmod(0o755)

    def set(self, key: str, value: str) -> None:
        path = self.config / key
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        tmp.chmod(0o644)
        tmp.rename(path)

    def argv(self, *cmd: str) -> list[str]:
        umld = [
            sys.executable,
            "-m",
            "umld",
            "run",
            f"--tracer={self.backend}",
            f"--config-dir={self.config}",
            f"--bind={self.probes}",
            f"--net={self.net}",
            "--",
            *cmd,
        ]
        return self.who.argv(umld) if self.who else umld

    def run(self, *cmd: str) -> str:
        r = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@pytest.fixture
def net() -> str:
    """The machine's network: the host's (its listeners are the test's),
    unless a test says otherwise."""
    return "host"


@pytest.fixture
def guest(
    backend: str, who: User | None, tmp_path: Path, probes: Path, net: str
) -> Iterator[Guest]:
    if net != "host" and backend != "c":
        pytest.skip("the machine's own network is the same for both backends: run on one")
    base = Path(f"/tmp/umld-net-{os.getpid()}-{tmp_path.name}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    yield Guest(backend, who, base, probes, net)
    shutil.rmtree(base, ignore_errors=True)


#: The machine's networks the bypass tests run in: the host's (where a
#: bypass would reach the test's listener), its own through pasta, and
#: loopback only.  In the last two the refused destination is not the
#: host's listener (pasta gives the guest the host's address), so what
#: they check is the policy's answer to each mechanism.
NETS = ["host", "user", "none"]


#: Each mechanism: (probe, mode, what natively arrives, its output natively).
MECHANISMS = [
    ("netprobe", "connect", ["conn"], "connect=0"),
    ("netprobe", "fastopen", ["conn"], "fastopen=8"),
    ("netprobe", "sendto", ["sendto"], "sendto=6"),
    ("netprobe", "sendmsg", ["sendmsg ttl=7"], "sendmsg=7"),
    ("netprobe", "sendmmsg", ["mmsg-0", "mmsg-1"], "sendmmsg=2 len=6,6"),
    ("netprobe", "int80-connect", ["conn"], "int80-connect=0"),
    ("netprobe", "int80-sc-connect", ["conn"], "int80-sc-connect=0"),
    ("netprobe", "uring-connect", ["conn"], "uring-connect=0"),
    ("netprobe", "uring-sendmsg", ["uring"], "uring-sendmsg=5"),
    ("netprobe32", "connect", ["conn"], "connect=0"),
    ("netprobe32", "fastopen", ["conn"], "fastopen=8"),
    ("netprobe32", "sendto", ["sendto"], "sendto=6"),
    ("netprobe32", "sendmsg", ["sendmsg ttl=7"], "sendmsg=7"),
    ("netprobe32", "sendmmsg", ["mmsg-0", "mmsg-1"], "sendmmsg=2 len=6,6"),
    ("netprobe32", "sc-connect", ["conn"], "sc-connect=0"),
    ("netprobe32", "sc-sendto", ["sendto"], "sc-sendto=6"),
    ("netprobe32", "sc-sendmsg", ["sendmsg ttl=7"], "sc-sendmsg=7"),
    ("netprobe32", "sc-sendmmsg", ["mmsg-0", "mmsg-1"], "sc-sendmmsg=2 len=6,6"),
    ("netprobe32", "uring-connect", ["conn"], "uring-connect=0"),
]


def _refused(mode: str) -> str:
    """A mechanism's output when the policy refuses it."""
    code = ENOSYS if mode.startswith("uring") else ENETUNREACH
    return f"{mode}={code}" + (" len=0,0" if mode.endswith("sendmmsg") else "")


@pytest.fixture(scope="module")
def native_reaches_everything(probes: Path) -> None:
    """Natively, every mechanism reaches the forbidden listener (the
    premise of the tests below)."""
    if HOST_IP is None:
        pytest.skip("this host has no IPv4 address besides loopback")
    lst = _listen(HOST_IP)
    try:
        wrong = {}
        for probe, mode, arrives, out in MECHANISMS:
            r = subprocess.run(
                [str(probes / probe), mode, HOST_IP, str(lst.port)], capture_output=True, text=True
            )
            got = (r.stdout.strip(), sorted(lst.arrived()))
            if got != (out, sorted(arrives)):
                wrong[f"{probe} {mode}"] = got
        assert not wrong, wrong
    finally:
        lst.udp.close()
        lst.tcp.close()


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("policy", ["deny", "loopback"])
def test_no_mechanism_reaches_a_refused_destination(
    native_reaches_everything: None, guest: Guest, forbidden: Listeners, policy: str
) -> None:
    guest.set("net/connect", policy)
    got = {}
    for probe, mode, _arrives, _out in MECHANISMS:
        out = guest.run(str(guest.probes / probe), mode, forbidden.ip, str(forbidden.port))
        got[f"{probe} {mode}"] = (out, forbidden.arrived())
    want = {f"{p} {m}": (_refused(m), []) for p, m, _a, _o in MECHANISMS}
    assert got == want


def test_loopback_lets_loopback_through_intact(guest: Guest, allowed: Listeners) -> None:
    """What ``loopback`` allows is done by umld on a copy: the data, the
    control message (IP_TTL 7, converted from the i386 layout for the
    32-bit program), sendmmsg's msg_len, all as natively.  io_uring stays
    refused whatever the policy."""
    guest.set("net/connect", "loopback")
    got, want = {}, {}
    for probe, mode, arrives, out in MECHANISMS:
        res = guest.run(str(guest.probes / probe), mode, allowed.ip, str(allowed.port))
        got[f"{probe} {mode}"] = (res, sorted(allowed.arrived()))
        uring = mode.startswith("uring")
        want[f"{probe} {mode}"] = (_refused(mode), []) if uring else (out, sorted(arrives))
    assert got == want


RACES = ["race-connect", "race-sendto", "race-sendmsg"]


@pytest.mark.parametrize("probe", ["netprobe", "netprobe32"])
def test_a_second_thread_rewriting_the_address_changes_nothing(
    guest: Guest, probe: str, forbidden: Listeners, allowed: Listeners
) -> None:
    """A thread flips the sockaddr between an allowed and a refused
    destination while the other calls: natively about half the calls
    reach the refused one; under umld (the check and the call on one
    copy) none does, and the allowed ones still go through.  Under deny
    the flip is to an AF_UNSPEC and an AF_UNIX sockaddr, which a check of
    the family field in guest memory would let pass."""
    path = str(guest.probes / probe)
    fip, fport = forbidden.ip, str(forbidden.port)
    native = {}
    for mode in RACES:
        # A run lasts milliseconds natively: on a busy machine the flipper
        # may sit out a whole one.  Runs until one reaches the listener.
        for _run in range(30):
            subprocess.run(
                [path, mode, fip, fport, "127.0.0.1", str(allowed.port), "2000"],
                check=True,
                capture_output=True,
            )
            native[mode] = len(forbidden.arrived())
            allowed.arrived()
            if native[mode]:
                break
    assert all(native.values()), f"the race never reached the forbidden listener: {native}"

    guest.set("net/connect", "loopback")
    got = {}
    for mode in RACES:
        # Runs until both addresses were seen often enough (the flipper may
        # sit out most of a run on a busy machine); every run must hold.
        sent = refused = reached = 0
        counted = True
        for _run in range(10):
            out = guest.run(path, mode, fip, fport, "127.0.0.1", str(allowed.port), "50000")
            one_sent, one_refused = (int(f.split("=")[1]) for f in out.split())
            sent, refused = sent + one_sent, refused + one_refused
            reached += len(forbidden.arrived())
            counted = counted and len(allowed.arrived()) == one_sent
            if sent >= 300 and refused >= 300:
                break
        # Both addresses were seen (the flipper ran), the refused one never
        # reached, every call that went through went to the allowed one.
        got[mode] = (sent >= 300, refused >= 300, reached, counted)
    assert got == {mode: (True, True, 0, True) for mode in RACES}

    guest.set("net/connect", "deny")
    for other in ("unspec", "unix"):
        for mode in RACES:
            guest.run(path, mode, fip, fport, other, str(allowed.port), "1000")
            assert forbidden.arrived() == [], (other, mode)


ACCEPTS = [
    ("netprobe", "accept"),
    ("netprobe", "accept4"),
    ("netprobe32", "accept"),
    ("netprobe32", "accept4"),
    ("netprobe32", "sc-accept"),
    ("netprobe32", "sc-accept4"),
]


#: How long a held accept is watched to stay held.
HELD_FOR = 0.5


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return ""


def _probe_pid(path: str, mode: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [path.encode(), mode.encode()]:
                return int(entry)
    return None


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize(("probe", "mode"), ACCEPTS)
def test_closed_accept_holds_every_path(guest: Guest, probe: str, mode: str) -> None:
    """net/accept closed: a client's connection waits in the backlog and
    the guest's accept stays stopped in the tracer, through accept,
    accept4 and the i386 paths (the direct call and socketcall ACCEPT and
    ACCEPT4); opening releases it."""
    guest.set("net/accept", "closed")
    path = str(guest.probes / probe)
    with subprocess.Popen(
        guest.argv(path, mode, "127.0.0.1", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _held_then_released(guest, proc, path, mode)
        finally:
            if proc.poll() is None:
                proc.kill()


@contextlib.contextmanager
def _client(net: str, pid: int, port: int) -> Iterator[None]:
    """A connection to the guest's 127.0.0.1:PORT, from the host (--net
    host) or from inside the machine's own network namespace (nsenter(1)
    into the probe's: the test is root)."""
    if net == "host":
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            yield
        return
    code = (
        "import socket,sys\n"
        "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=10)\n"
        "print('connected',flush=True); sys.stdin.read()\n"
    )
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code, str(port)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as c:
        assert c.stdout is not None and c.stdin is not None
        assert c.stdout.readline() == "connected\n"
        try:
            yield
        finally:
            c.stdin.close()
            c.wait(10)


def _held_then_released(guest: Guest, proc: subprocess.Popen[str], path: str, mode: str) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line.startswith("listening "), (line, proc.stderr.read())
    port = int(line.split()[1])
    pid = wait_for(lambda: _probe_pid(path, mode), "the probe's pid")
    assert isinstance(pid, int)
    with _client(guest.net, pid, port):
        wait_for(lambda: _state(pid) == "t", "the accept to be held (tracing stop)")
        # That it stays held can only be seen over some time: a call that
        # merely stopped on its way (and ran then) returns within it.
        ready, _, _ = select.select([proc.stdout], [], [], HELD_FOR)
        assert not ready, "accept returned while net/accept is closed"
        assert _state(pid) == "t"
        guest.set("net/accept", "open")
        assert proc.stdout.readline() == "accepted=0\n"
    assert proc.wait(20) == 0


def test_sigpipe_of_a_send_umld_made_is_the_guests_own(guest: Guest, probes: Path) -> None:
    """A send(2) the policy does on a copy fails with EPIPE: the SIGPIPE
    the guest kernel raises carries the siginfo Linux gives (SI_USER, the
    thread's own pid and uid), as the same program natively gets."""
    native = subprocess.run(
        [str(probes / "netprobe"), "epipe", "127.0.0.1", "0"], capture_output=True, text=True
    )
    assert native.stdout.endswith(" code=0 self=1 uid=1\n"), (native.stdout, native.stderr)
    guest.set("net/connect", "loopback")
    assert guest.run(str(probes / "netprobe"), "epipe", "127.0.0.1", "0") == native.stdout.strip()
