"""The machine's own network (--net): user-mode networking through pasta,
port forwarding both ways, loopback only, the host's, live link control
and counters.  Real namespaces: "the internet" is a namespace of the
test's (conftest.py); the host's services are on its loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_BINDS, User, read_available, wait_for
from tests.net.conftest import Internet, free_port, server_port

pytestmark = pytest.mark.uses_ptrace

UMLD = [sys.executable, "-m", "umld", "run"]


def umld(*options: str, who: User | None = None) -> list[str]:
    argv = [*UMLD, *options, "--"]
    return who.argv(argv) if who else argv


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> User | None:
    return None if request.param == "root" else ordinary_user


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


def test_user_mode_reaches_the_internet(internet: Internet, who: User | None) -> None:
    """The default mode: the guest has its own interface (not the host's
    veth) and its HTTP request leaves through pasta."""
    r = run([*umld(who=who), "sh", "-c",
             f"ip -o link | grep -c {internet.netns[:4]} ; curl -sS --max-time 20 "
             f"{internet.url('hello.txt')}"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0", "hello from the internet"]


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on the host's loopback that answers "host"."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"host\n")

    threading.Thread(target=serve, daemon=True).start()
    yield port
    srv.close()


PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
    "    print(s.recv(10).decode().strip() or 'empty')\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


def test_the_hosts_loopback_is_not_reachable(host_service: int, who: User | None) -> None:
    """A service on the host's 127.0.0.1 is the host's: the guest's
    127.0.0.1 is its own, pasta maps nothing of the host's loopback (-T
    none, --no-map-gw); with --net host it is reached, as before."""
    for mode, want in (("user", "ConnectionRefusedError"), ("none", "ConnectionRefusedError"),
                       ("host", "host")):  # fmt: skip
        r = run([*umld(f"--net={mode}", who=who), sys.executable, "-c", PROBE, "127.0.0.1",
                 str(host_service)])  # fmt: skip
        assert (mode, r.returncode, r.stdout.strip()) == (mode, 0, want), r.stderr


def test_none_is_loopback_only(internet: Internet, who: User | None) -> None:
    script = (
        "import socket\n"
        "srv=socket.create_server(('127.0.0.1',0))\n"
        "c=socket.create_connection(srv.getsockname())\n"
        "a,_=srv.accept(); a.sendall(b'lo'); print(c.recv(2).decode())\n"
    )
    r = run([*umld("--net=none", who=who), "sh", "-c",
             f"ip -o link | cut -d: -f2; {sys.executable} -c \"{script}\"; "
             f"curl -sS --max-time 5 {internet.url('hello.txt')} || echo unreachable"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lo", "lo", "unreachable"]


def _get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5) as f:
            return str(f.read().decode())
    except OSError:
        return None


@pytest.fixture
def served(tmp_path: Path) -> Path:
    d = Path(f"/tmp/umld-served-{os.getpid()}-{tmp_path.name}")
    d.mkdir(mode=0o755)
    (d / "hello.txt").write_text("hello from the guest\n")
    (d / "hello.txt").chmod(0o644)
    yield d
    (d / "hello.txt").unlink()
    d.rmdir()


@pytest.mark.parametrize("how", ["publish", "auto"])
def test_a_guest_server_is_reached_from_the_hosts_loopback(
    served: Path, who: User | None, how: str
) -> None:
    """--publish 127.0.0.1:HOSTPORT:GUESTPORT (pasta), and the automatic
    forwarding of what the guest listens on (umld's, test_ports.py)."""
    guest_port = server_port()
    host_port = free_port() if how == "publish" else guest_port
    options = [f"--publish=127.0.0.1:{host_port}:{guest_port}"] if how == "publish" else []
    argv = [*umld(*options, who=who), sys.executable, "-m", "http.server", "-d", str(served),
            "-b", "0.0.0.0", str(guest_port)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/") as proc:
        try:
            got = wait_for(
                lambda: proc.poll() is not None or _get(host_port),
                "the server",
                timeout=20 if how == "publish" else 5,
            )
            assert got == "hello from the guest\n", proc.stderr.read() if proc.stderr else ""
        finally:
            proc.terminate()
            proc.wait(20)


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    for options, why in (
        (
            ["--net=bogus"],
            "'user', 'none', 'host', 'vde:NAME', 'vde:PATH' or 'ns:PATH', not 'bogus'",
        ),
        (["--publish=99999:1"], "a port is 1 to 65535"),
        (["--net=vde:/nonexistent/switch"], "vde"),
        (["--net=ns:relative"], "ns: needs the absolute path of a network namespace"),
        (["--net=ns:/nonexistent/netns"], "--net ns:/nonexistent/netns: No such file"),
        (["--net=none", "--publish=8080:80"], "--publish 127.0.0.1:8080:80 needs --net user"),
    ):
        r = run([*umld(*options), "/bin/true"])
        assert r.returncode != 0
        lines = r.stderr.splitlines()
        assert why in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_without_pasta_slirp4netns_or_one_line(internet: Internet, tmp_path: Path) -> None:
    """pasta missing (PATH): slirp4netns with one notice; neither: one line."""
    only = tmp_path / "bin"
    only.mkdir()
    env = {**os.environ, "PATH": str(only)}
    r = subprocess.run([*umld(), "/bin/true"], capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.splitlines() == [
        "umld: --net user needs pasta (Debian package passt) or slirp4netns, and neither is "
        "installed (or give --net none or --net host)"
    ]
    os.symlink("/usr/bin/slirp4netns", only / "slirp4netns")
    curl = ["/usr/bin/curl", "-sS", "--max-time", "20", internet.url("hello.txt")]
    r = subprocess.run([*umld(), *curl], capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (0, "hello from the internet\n"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "slirp4netns" in r.stderr


def test_the_guests_root_configures_its_own_interfaces_only(who: User | None) -> None:
    """The namespace is the guest's user namespace's: its root changes its
    own interfaces (an address on its lo), which the host never shows;
    with --net host the same is refused (EPERM: the host's namespace)."""
    addr = "10.233.44.55"
    script = f"ip addr add {addr}/32 dev lo && ip -o addr show dev lo | grep -c {addr}"
    r = run([*umld("--uid=0", who=who), "sh", "-c", script])
    assert (r.returncode, r.stdout.strip()) == (0, "1"), r.stderr
    host = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    assert addr not in host.stdout
    r = run([*umld("--uid=0", "--net=host", who=who), "ip", "addr", "add", f"{addr}/32",
             "dev", "lo"])  # fmt: skip
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    host = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    assert addr not in host.stdout


def test_a_process_started_in_the_machine_joins_its_network() -> None:
    """umld exec / the API's run (umld-sandbox enter) joins the machine's
    network namespace, not umld's."""
    import umld

    with umld.machine(umld.Config(net="none")) as m:
        r = m.run(["readlink", "/proc/self/ns/net"], capture_output=True)
        assert r.returncode == 0 and r.stdout is not None
        assert r.stdout.decode().strip() != os.readlink("/proc/self/ns/net")
        r = m.run(["ip", "-o", "link"], capture_output=True)
        assert r.stdout is not None and [
            ln.split()[1] for ln in r.stdout.decode().splitlines()
        ] == ["lo:"]


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (pasta's parent is the
    thread of umld that started it)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_pasta_ends_with_umld_even_when_umld_is_killed() -> None:
    """pasta holds the machine's namespace and the host's ports: SIGKILL
    of umld ends it too (its parent-death signal, umld-sandbox tied)."""
    # The network comes up at its first use: ip(8)'s netlink socket.
    guest = ["sh", "-c", "ip -o link >/dev/null; exec sleep 60"]
    with subprocess.Popen([*umld(), *guest], stdout=subprocess.DEVNULL) as proc:
        try:
            found = wait_for(lambda: _pasta_under(proc.pid), "umld's pasta")
        finally:
            proc.kill()
        assert isinstance(found, int)
        proc.wait()
        wait_for(lambda: _gone(found), "pasta to end with umld", timeout=10)


def _pasta_under(pid: int) -> int | None:
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip().startswith(("pasta", "passt")):
                    return child
        except OSError:
            pass
    return None


def test_a_monitor_reading_status_leaves_the_network_down(tmp_path: Path) -> None:
    """status shows every setting for a monitor: reading it starts no
    pasta; once the guest uses the network, status shows its address."""
    mnt, go, done = tmp_path / "mnt", tmp_path / "go", tmp_path / "done"
    started = tmp_path / "started"
    script = (
        f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done\n"
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)'\n"
        f"touch {done}; exec sleep 3600\n"
    )
    argv = [*UMLD, *TEST_BINDS, f"--mount={mnt}", "--", "sh", "-c", script]
    status = mnt / "status"

    def address() -> str:
        for line in status.read_text().splitlines():
            if line.startswith("config.net/address: "):
                return line.split(": ", 1)[1]
        raise AssertionError("status has no config.net/address")

    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            # The guest runs: its namespace is made, a view could bring it up.
            wait_for(lambda: started.exists() or proc.poll() is not None, "the guest")
            wait_for(lambda: status.exists() or proc.poll() is not None, "the export")
            assert proc.poll() is None, proc.communicate()[1]
            assert [address() for _ in range(3)] == [""] * 3  # none set, none up
            assert (mnt / "metrics.prom").read_text()
            assert _pasta_under(proc.pid) is None, "a status read started the network"
            go.touch()
            wait_for(done.exists, "the guest's first socket")
            assert _pasta_under(proc.pid) is not None
            # What brought it up, named once: the guest's socket, not a read.
            ups = [
                line
                for line in read_available(mnt / "events").splitlines()
                if "net: up at its first use" in line
            ]
            assert len(ups) == 1 and "(socket(2) by pid " in ups[0], ups
            assert address()
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def test_the_network_comes_up_at_its_first_use(tmp_path: Path) -> None:
    """A guest that opens no socket costs no pasta; its first socket(2)
    that reaches a network waits until pasta has configured the
    interface: the default route is there when the call returns."""
    started, go = tmp_path / "started", tmp_path / "go"
    script = (
        "route() { awk '$2 == \"00000000\"' /proc/net/route | wc -l; }\n"
        f"route; touch {started}\n"
        f"while [ ! -e {go} ]; do sleep 0.05; done\n"
        # AF_UNIX sockets never wait, nor bring the network up.
        "python3 -c 'import socket; socket.socketpair(); socket.socket(socket.AF_UNIX)'\n"
        "route\n"
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)'\n"
        "route\n"
    )
    argv = [*UMLD, *TEST_BINDS, "--", "sh", "-c", script]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(lambda: started.exists() or proc.poll() is not None, "the guest's start")
            assert proc.poll() is None
            assert _pasta_under(proc.pid) is None
            go.touch()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert out.split() == ["0", "0", "1"]
