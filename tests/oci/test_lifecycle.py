"""umld as an OCI runtime, against the runtime specification and runc.

Real bundles: a root file system made of Debian's busybox and its
libraries, a config.json per test.  `umld oci` runs as a separate process
with a --root of the test's own, exactly as an engine calls it; where
runc can run the same bundle (as root), its outputs and exit statuses
are the reference.  After every test no container of it is left: no
state directory, no export mount, no supervisor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, User, wait_for
from tests.oci.conftest import Bundle, Runtime, _ids

pytestmark = [pytest.mark.uses_ptrace, pytest.mark.uses_fuse]

RUNC = shutil.which("runc")


def test_lifecycle_create_start_kill_delete(umld_oci: Runtime, bundle: Bundle) -> None:
    """The spec's lifecycle, with the state checked at each step: create
    leaves the process waiting before the user program; start runs it;
    kill reaches it; delete leaves nothing."""
    ran = bundle.shared / "ran"
    path = bundle.command("echo $$ > /shared/ran.tmp; mv /shared/ran.tmp /shared/ran; "
                          "exec sleep 100").write()  # fmt: skip
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    st = umld_oci.state_of("c1")
    assert st["status"] == "created" and st["id"] == "c1" and st["bundle"] == str(path)
    assert st["ociVersion"].startswith("1.") and os.path.exists(f"/proc/{st['pid']}")
    # Held before exec: no process of the container runs busybox yet.
    exes = [os.path.realpath(f"/proc/{p}/exe") for p in _descendants(st["pid"])]
    assert exes and not any(e.endswith("busybox") for e in exes), exes
    assert not ran.exists(), "the user program ran before start"
    umld_oci("start", "c1", check=True)
    wait_for(ran.exists, "the user program to run after start")
    assert ran.read_text().strip().isdigit()  # its pid in the container's namespace
    assert umld_oci.state_of("c1")["status"] == "running"
    again = umld_oci("start", "c1")
    assert again.returncode != 0 and "running" in again.stderr
    refused = umld_oci("delete", "c1")
    assert refused.returncode != 0 and "running" in refused.stderr
    umld_oci("kill", "c1", "TERM", check=True)
    wait_for(lambda: umld_oci.state_of("c1")["status"] == "stopped", "the container to stop")
    assert "pid" not in umld_oci.state_of("c1")
    dead = umld_oci("kill", "c1", "KILL")
    assert dead.returncode != 0 and "not running" in dead.stderr
    umld_oci("delete", "c1", check=True)
    gone = umld_oci("state", "c1")
    assert gone.returncode != 0 and "does not exist" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", ["TERM", "INT", "HUP", "USR1", "KILL"])
def test_kill_delivers_each_signal(umld_oci: Runtime, bundle: Bundle, sig: str) -> None:
    """`kill ID SIG` reaches the container's process, which dies of it
    (busybox sleep keeps every default action): `run` exits 128+N."""
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    umld_oci("start", "c1", check=True)
    wait_for(lambda: umld_oci.state_of("c1")["status"] == "running", "running")
    umld_oci("kill", "c1", sig, check=True)
    wait_for(lambda: umld_oci.state_of("c1")["status"] == "stopped", f"stopped by SIG{sig}")
    status = int((umld_oci.state / "c1" / "exit").read_text())
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.Signals[f"SIG{sig}"]


def test_a_created_container_is_deleted_without_running(umld_oci: Runtime, bundle: Bundle) -> None:
    ran = bundle.shared / "ran"
    path = bundle.command("touch /shared/ran").write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    pid = umld_oci.state_of("c1")["pid"]
    umld_oci("delete", "c1", check=True)
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    assert not ran.exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_delete_force_ends_a_running_container(umld_oci: Runtime, bundle: Bundle) -> None:
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    umld_oci("start", "c1", check=True)
    pid = umld_oci.state_of("c1")["pid"]
    umld_oci("delete", "--force", "c1", check=True)
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    assert umld_oci("state", "c1").returncode != 0


def test_hooks_run_in_order_and_see_the_state(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """createRuntime and prestart at create, poststart after start,
    poststop at delete; each reads the state on its stdin."""
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f"status=$(python3 -c \"import json,sys; print(json.load(sys.stdin)['status'])\")\n"
        f'echo "$1 $status $WHO" >> {log}\n'
    )
    hook.chmod(0o755)
    stages = ("createRuntime", "prestart", "poststart", "poststop")
    bundle.config["hooks"] = {
        s: [{"path": str(hook), "args": ["hook.sh", s], "env": ["WHO=umld", "PATH=/usr/bin"]}]
        for s in stages
    }
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    assert log.read_text().split("\n")[:2] == [
        "createRuntime created umld",
        "prestart created umld",
    ]
    umld_oci("start", "c1", check=True)
    umld_oci("kill", "c1", "KILL", check=True)
    wait_for(lambda: umld_oci.state_of("c1")["status"] == "stopped", "stopped")
    umld_oci("delete", "c1", check=True)
    assert log.read_text().splitlines() == [
        "createRuntime created umld",
        "prestart created umld",
        "poststart running umld",
        "poststop stopped umld",
    ]


BAD_CONFIGS = {
    "a missing root": lambda c: c["root"].update(path="/nonexistent/rootfs"),
    "an unknown mount type": lambda c: c["mounts"].append(
        {"destination": "/mnt", "type": "nfs", "source": "server:/x"}
    ),
    "overlapping uid maps": lambda c: c["linux"].update(
        uidMappings=[
            {"containerID": 0, "hostID": 300000, "size": 100},
            {"containerID": 50, "hostID": 400000, "size": 100},
        ]
    ),
    "a uid map past the machine's ids": lambda c: c["linux"].update(
        uidMappings=[{"containerID": 0, "hostID": 300000, "size": 70000}]
    ),
    "a gid map without a host id": lambda c: c["linux"].update(
        gidMappings=[{"containerID": 0, "size": 1}]
    ),
    "capabilities not a list": lambda c: c["process"].update(capabilities={"bounding": "CAP_KILL"}),
    "a relative cwd": lambda c: c["process"].update(cwd="tmp"),
    "an unknown umld setting": lambda c: c.update(annotations={"umld.warp": "9"}),
    "a bad umld setting": lambda c: c.update(annotations={"umld.vcpus": "many"}),
}


@pytest.mark.parametrize("what", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_line_and_leaves_nothing(
    umld_oci: Runtime, bundle: Bundle, what: str
) -> None:
    BAD_CONFIGS[what](bundle.config)
    path = bundle.command("touch /shared/ran").write()
    p = umld_oci("create", "--bundle", str(path), "bad")
    assert p.returncode == 1, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("umld oci: config.json: "), p.stderr
    assert "Traceback" not in p.stderr
    assert not (umld_oci.state / "bad").exists()
    assert not (bundle.shared / "ran").exists()


def _machine_cgroups() -> set[str]:
    return {d for d in os.listdir("/sys/fs/cgroup/pids") if d.startswith("umld-")}


def test_a_failing_create_hook_leaves_nothing(umld_oci: Runtime, bundle: Bundle) -> None:
    before = _machine_cgroups()
    bundle.config["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    path = bundle.command("touch /shared/ran").write()
    p = umld_oci("create", "--bundle", str(path), "bad")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "umld oci: createRuntime hook /bin/false failed (status 1)"
    ]
    assert not (umld_oci.state / "bad").exists()
    assert not (bundle.shared / "ran").exists()
    wait_for(lambda: _machine_cgroups() <= before, "the machine's cgroups to go")


# -- the same bundle under runc ------------------------------------------------------

SCRIPT = 'echo "hi $FOO"; hostname; pwd; id -u; id -g; cat /shared/in; ls /; echo err >&2; exit 3'


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
def test_run_matches_runc(tmp_path: Path, rootfs: Path) -> None:
    """`run` of the same bundle: the same stdout, stderr and exit status
    under runc and umld."""
    results = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        # A root of each one's own: runc makes its mount points in it.
        mine = tmp_path / f"rootfs-{name}"
        shutil.copytree(rootfs, mine, symlinks=True)
        b = Bundle(tmp_path / f"bundle-{name}", mine)
        (b.shared / "in").write_text("from the host\n")
        b.config["process"]["env"].append("FOO=bar")
        b.config["process"]["cwd"] = "/tmp"
        b.config["hostname"] = "same-box"
        rt = Runtime(argv, tmp_path / f"state-{name}")
        path = b.command(SCRIPT).write()
        p = rt("run", "--bundle", str(path), f"x-{name}", timeout=120)
        results.append((p.returncode, p.stdout, p.stderr))
        assert not _ids(rt.state), f"{name} left its container"
    assert results[0] == results[1]
    assert results[0][0] == 3 and "hi bar\nsame-box\n/tmp\n0\n0\nfrom the host\n" in results[0][1]


def test_the_container_is_exported_live(umld_oci: Runtime, bundle: Bundle, tmp_path: Path) -> None:
    """Its machine's export, at the place umld.mount gives: the host name
    written there is the guest's; proc/ lists its process."""
    mnt = tmp_path / "export"
    bundle.config["annotations"] = {"umld.mount": str(mnt)}
    path = bundle.command(
        "while [ ! -e /shared/go ]; do sleep 0.05; done; "
        "hostname > /shared/name.tmp; mv /shared/name.tmp /shared/name"
    ).write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    umld_oci("start", "c1", check=True)
    wait_for(lambda: (mnt / "config" / "hostname").exists(), "the export")
    assert (mnt / "config" / "hostname").read_text() == "box\n"
    assert len(os.listdir(mnt / "proc")) >= 1
    (mnt / "config" / "hostname").write_text("renamed\n")
    (bundle.shared / "go").touch()
    wait_for((bundle.shared / "name").exists, "the guest's answer")
    assert (bundle.shared / "name").read_text() == "renamed\n"
    wait_for(lambda: umld_oci.state_of("c1")["status"] == "stopped", "stopped")
    umld_oci("delete", "c1", check=True)
    wait_for(lambda: not os.path.ismount(mnt), "the export's unmount")


def test_resources_are_the_machines_settings(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """linux.resources as the export shows the machine's settings: cpu
    quota/period as vCPUs (rounded up), cpu.shares as its weight
    (shares/10.24), the memory limit, the pids limit; the guest sees its
    CPUs."""
    mnt = tmp_path / "export"
    bundle.config["annotations"] = {"umld.mount": str(mnt)}
    bundle.config["linux"]["resources"] = {
        "cpu": {"quota": 150000, "period": 100000, "shares": 512},
        "memory": {"limit": 96 << 20},
        "pids": {"limit": 100},
    }
    script = "grep -c ^processor /proc/cpuinfo > /shared/c.tmp; mv /shared/c.tmp /shared/cpus"
    path = bundle.command(f"{script}; exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "res", check=True)
    umld_oci("start", "res", check=True)
    wait_for(lambda: (bundle.shared / "cpus").exists(), "the guest's answer")
    config = mnt / "config"
    got = {k: (config / k).read_text().strip() for k in ("vcpus", "cpu_weight", "memory")}
    assert got == {"vcpus": "2", "cpu_weight": "50", "memory": str(96 << 20)}, got
    assert (config / "limits" / "nproc").read_text().strip() == "100"
    assert (bundle.shared / "cpus").read_text() == "2\n"
    umld_oci("delete", "--force", "res", check=True)


def test_as_an_ordinary_user(ordinary_user: User, rootfs: Path) -> None:
    """create, start, state and delete by a user who is not root, with a
    root file system of the user's own; the guest's root inside."""
    mine = ordinary_user.work / "rootfs"
    if not mine.exists():
        shutil.copytree(rootfs, mine, symlinks=True)
        subprocess.run(["chown", "-R", f"{ordinary_user.uid}:{ordinary_user.gid}", str(mine)])
    b = Bundle(ordinary_user.work / "bundle", mine)
    subprocess.run(["chown", "-R", f"{ordinary_user.uid}:{ordinary_user.gid}", str(b.path)])
    b.config["annotations"] = {"umld.mount": "none"}
    # Whole or not at all: the file appears only once the id is in it.
    script = "id -u > /shared/uid.tmp; mv /shared/uid.tmp /shared/uid; exec sleep 100"
    path = b.command(script).write()
    state = ordinary_user.work / "oci-state"

    rt = Runtime(ordinary_user.argv([sys.executable, "-m", "umld", "oci"]), state)

    def oci(*args: str) -> subprocess.CompletedProcess[str]:
        return rt(*args)

    try:
        assert oci("create", "--bundle", str(path), "u1").returncode == 0
        assert json.loads(oci("state", "u1").stdout)["status"] == "created"
        assert oci("start", "u1").returncode == 0
        wait_for((b.shared / "uid").exists, "the user program")
        assert (b.shared / "uid").read_text() == "0\n"
    finally:
        p = oci("delete", "--force", "u1")
    assert p.returncode == 0, p.stderr
    assert not (state / "u1").exists()


def test_pause_resume_and_ps(umld_oci: Runtime, bundle: Bundle) -> None:
    """pause stops every process of the container (state "paused", as
    runc says), resume lets them go on; ps lists their host pids."""
    counter = bundle.shared / "n"
    path = bundle.command(
        "i=0; (sleep 100 &); while :; do i=$((i+1)); echo $i > /shared/n; sleep 0.02; done"
    ).write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    umld_oci("start", "c1", check=True)
    wait_for(lambda: counter.exists() and counter.read_text().strip() not in ("", "1"), "count")
    pids = json.loads(umld_oci("ps", "--format", "json", "c1", check=True).stdout)
    # The shell and the sleep 100 at least (each short sleep comes and goes).
    assert len(pids) >= 2 and sum(os.path.exists(f"/proc/{p}") for p in pids) >= 2
    umld_oci("pause", "c1", check=True)
    assert umld_oci.state_of("c1")["status"] == "paused"
    wait_for(lambda: all(_proc_state(p) in ("T", "t", "") for p in pids), "every process stopped")
    held = counter.read_text()
    time.sleep(0.3)  # a paused container does not count: a window for it to be wrong
    assert counter.read_text() == held
    assert umld_oci("pause", "c1").returncode != 0
    umld_oci("resume", "c1", check=True)
    assert umld_oci.state_of("c1")["status"] == "running"
    wait_for(lambda: counter.read_text() != held, "the count to go on")
    table = umld_oci("ps", "c1", check=True).stdout
    assert "sleep 100" in table and "PID" in table


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_a_network_namespace_given_by_path_is_joined(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """linux.namespaces network with a path (an engine's): the container
    is in that namespace, the very one `ip netns exec` enters."""
    if os.geteuid() != 0:
        pytest.skip("ip netns needs root")
    name = f"umldtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = f"/run/netns/{name}"
        bundle.config["linux"]["namespaces"].append({"type": "network", "path": ns})
        # Its sysctls are the engine's to set (the guest's root does not
        # own it): written by umld's stage, the group ids the guest's.
        bundle.config["linux"]["sysctl"] = {
            "net.ipv4.ping_group_range": "0 5", "net.ipv4.ip_unprivileged_port_start": "80",
        }  # fmt: skip
        script = ("readlink /proc/self/ns/net > /shared/ns; "
                  "cat /proc/sys/net/ipv4/ping_group_range > /shared/range")  # fmt: skip
        umld_oci("run", "--bundle", str(bundle.command(script).write()), "c1", check=True)

        def inside(*argv: str) -> str:
            return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip

        want = inside("readlink", "/proc/self/ns/net")
        assert (bundle.shared / "ns").read_text() == want
        assert want != os.readlink("/proc/self/ns/net") + "\n"
        assert (bundle.shared / "range").read_text() == "0\t5\n"
        assert inside("cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start") == "80\n"
        # On the host, the guest's groups are host ids of the machine's
        # own range (never the host's root group).
        low, high = map(int, inside("cat", "/proc/sys/net/ipv4/ping_group_range").split())
        assert low >= 65536 and high == low + 5, (low, high)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_exec_in_a_running_container(umld_oci: Runtime, bundle: Bundle, tmp_path: Path) -> None:
    """exec runs a command in the container (its names, its files, as the
    user asked) with the caller's stdio, and ends with its status; with
    --detach, the pid file names a process that ends as the command does."""
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    refused = umld_oci("exec", "c1", "true")
    assert refused.returncode != 0 and "not running" in refused.stderr
    umld_oci("start", "c1", check=True)
    p = umld_oci(
        "exec", "--cwd", "/tmp", "-e", "X=1", "c1", "sh", "-c", "echo $X $(pwd) $(hostname); exit 4"
    )
    assert (p.returncode, p.stdout) == (4, "1 /tmp box\n")
    process = tmp_path / "process.json"
    process.write_text(json.dumps({
        "args": ["sh", "-c", "id -u; id -g; id -G; echo $ONLY"],
        "env": ["ONLY=this", "PATH=/bin"], "cwd": "/",
        "user": {"uid": 5, "gid": 6, "additionalGids": [7]},
    }))  # fmt: skip
    p = umld_oci("exec", "--process", str(process), "c1")
    assert (p.returncode, p.stdout) == (0, "5\n6\n6 7\nthis\n")
    pid_file = tmp_path / "exec.pid"
    script = "while [ ! -e /shared/go ]; do sleep 0.02; done; exit 6"
    umld_oci("exec", "-d", "--pid-file", str(pid_file), "c1", "sh", "-c", script, check=True)
    relay = int(pid_file.read_text())
    fd = os.pidfd_open(relay)
    try:
        assert os.path.exists(f"/proc/{relay}")
        (bundle.shared / "go").touch()
        wait_for(lambda: not os.path.exists(f"/proc/{relay}") or _zombie(relay), "the exec's end")
    finally:
        os.close(fd)
    missing = umld_oci("exec", "c1", "/bin/nonexistent")
    assert missing.returncode == 127


def test_umld_ls_and_top_show_the_runtimes_containers(bundle: Bundle) -> None:
    """`umld ls` lists the OCI runtime's containers (its default root) as
    oci:ID, with their state and their command, beside the daemon's;
    `umld top` shows them and their processes from their exports."""
    from umld.oci._state import default_root

    rt = Runtime([sys.executable, "-m", "umld", "oci"], default_root())
    cid = f"ls-{os.getpid()}"
    path = bundle.command("exec sleep 100").write()
    try:
        rt("create", "--bundle", str(path), cid, check=True)
        rt("start", cid, check=True)
        out = subprocess.run(
            [sys.executable, "-m", "umld", "ls"], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        rows = [line.split() for line in out.stdout.splitlines()]
        mine = [r for r in rows if r and r[0] == f"oci:{cid}"]
        assert mine and mine[0][1] == "running" and mine[0][-2:] == ["sleep", "100"], rows
        top = subprocess.run(
            [sys.executable, "-m", "umld", "top", "--once"], capture_output=True, text=True,
            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert f"oci:{cid}" in top.stdout and "sleep" in top.stdout, top.stdout + top.stderr
    finally:
        rt("delete", "--force", cid)
    assert not (default_root() / cid).exists()


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".", "x y", ""])
def test_an_id_that_is_not_one_name_is_refused(umld_oci: Runtime, bundle: Bundle, bad: str) -> None:
    path = bundle.command("true").write()
    p = umld_oci("create", "--bundle", str(path), bad)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # the error (and usage, for "")
    assert not (umld_oci.state.parent / "escape").exists()
    assert _ids(umld_oci.state) == []


def test_the_guest_never_reaches_the_runtimes_state(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """Even given the directory that holds the runtime's root (a bind of
    its parent), the guest finds nothing of it: not its state, not its
    control socket (which would start, signal and exec)."""
    bundle.config["mounts"].append(
        {"destination": "/host", "type": "bind", "source": str(tmp_path), "options": ["rbind"]}
    )
    script = (
        "ls -a /host/umld-state > /shared/listing 2>&1; "
        "cat /host/umld-state/c1/state.json > /shared/state 2>&1; echo done > /shared/done"
    )
    path = bundle.command(script).write()
    umld_oci("create", "--bundle", str(path), "c1", check=True)
    assert (umld_oci.state / "c1" / "ctl.sock").exists()
    umld_oci("start", "c1", check=True)
    wait_for((bundle.shared / "done").exists, "the guest's look")
    assert "c1" not in (bundle.shared / "listing").read_text()
    assert '"pid"' not in (bundle.shared / "state").read_text()


def test_errors_go_to_the_json_log(umld_oci: Runtime, tmp_path: Path) -> None:
    """--log FILE --log-format json: the error an engine shows its user,
    one JSON object per line, besides the line on stderr."""
    log = tmp_path / "log.json"
    p = umld_oci("--log", str(log), "--log-format", "json", "state", "nosuch")
    assert p.returncode == 1
    assert p.stderr.strip() == "umld oci: container nosuch does not exist"
    [entry] = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["level"] == "error" and entry["msg"] == "container nosuch does not exist"


def test_a_hook_that_hangs_times_out_and_leaves_nothing(umld_oci: Runtime, bundle: Bundle) -> None:
    before = _machine_cgroups()
    bundle.config["hooks"] = {
        "prestart": [{"path": "/bin/sleep", "args": ["sleep", "100"], "timeout": 1}]
    }
    path = bundle.command("touch /shared/ran").write()
    started = time.monotonic()
    p = umld_oci("create", "--bundle", str(path), "bad")
    assert p.returncode == 1 and time.monotonic() - started < 30
    assert "prestart hook /bin/sleep" in p.stderr and "timed out" in p.stderr
    assert not (umld_oci.state / "bad").exists()
    assert not (bundle.shared / "ran").exists()
    wait_for(lambda: _machine_cgroups() <= before, "the machine's cgroups to go")


def test_mount_points_of_a_read_only_root_never_follow_its_symlinks(
    umld_oci: Runtime, rootfs: Path, tmp_path: Path
) -> None:
    """The runtime makes the mount points a read-only root lacks; a
    destination through a symlink of the root is refused, and nothing is
    made where the symlink points."""
    mine = tmp_path / "rootfs"
    shutil.copytree(rootfs, mine, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (mine / "evil").symlink_to(outside)
    b = Bundle(tmp_path / "bundle", mine)
    b.config["mounts"].append(
        {"destination": "/evil/inner", "type": "tmpfs", "source": "tmpfs", "options": []}
    )
    p = umld_oci("create", "--bundle", str(b.command("true").write()), "bad")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "umld oci: config.json: mounts /evil/inner: evil in the root is not a directory "
        "(a symlink is not followed)"
    ]
    assert list(outside.iterdir()) == []
    b.config["mounts"][-1]["destination"] = "/made/here"
    umld_oci("run", "--bundle", str(b.write()), "ok", check=True)
    assert (mine / "made" / "here").is_dir()


def test_a_terminal_needs_a_console_socket_and_the_reverse(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    bundle.config["process"]["terminal"] = True
    path = bundle.command("true").write()
    p = umld_oci("create", "--bundle", str(path), "bad")
    assert p.stderr.strip() == "umld oci: process.terminal is set: --console-socket is needed"
    sock = tmp_path / "console.sock"
    p = umld_oci("create", "--bundle", str(path), "--console-socket", str(sock), "bad")
    assert p.returncode == 1 and p.stderr.startswith("umld oci: --console-socket ")
    bundle.config["process"]["terminal"] = False
    p = umld_oci("create", "--bundle", str(bundle.write()), "--console-socket", str(sock), "bad")
    assert p.stderr.strip() == "umld oci: --console-socket given, but process.terminal is not set"
    assert _ids(umld_oci.state) == []


def _processes_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and not _zombie(int(entry)):
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_create_that_gives_up_ends_its_supervisor(
    umld_oci: Runtime, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create waits for the machine only so long: then its supervisor and
    the machine end, and nothing of the container stays."""
    monkeypatch.setenv("UMLD_OCI_CREATE_TIMEOUT", "0.001")
    path = bundle.command("touch /shared/ran").write()
    p = umld_oci("create", "--bundle", str(path), "slow")
    assert p.returncode == 1
    assert p.stderr.strip() == "umld oci: the container was not made within 0.001 s"
    assert not (umld_oci.state / "slow").exists()
    wait_for(lambda: not _processes_with(str(umld_oci.state)), "the supervisor's end")
    assert not (bundle.shared / "ran").exists()


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (by PPid, /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


# -- ids and capabilities, against runc ---------------------------------------------

#: podman's default capabilities less CAP_SETFCAP, which a root-run
#: machine's root never holds (sandbox.c: a file capability it set would
#: be the host root's through the idmap).
CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
]  # fmt: skip
IDS_SCRIPT = (
    "stat -c %u:%g /bin/busybox /etc; touch /tmp/made; stat -c %u:%g /tmp/made; "
    "grep -E '^Cap(Bnd|Eff|Prm|Inh|Amb)' /proc/self/status; "
    "chown 5:5 /tmp/made && stat -c %u:%g /tmp/made; "
    "touch /bin/x 2>/dev/null || echo no write to a file of another owner; exit 4"
)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -R that keeps each file's own ids, shifted (as an engine
    prepares a root file system for a user namespace)."""
    paths = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, name) for name in (*dirnames, *filenames)]
    for p in paths:
        st = os.lstat(p)
        os.lchown(p, uid + st.st_uid, gid + st.st_gid)


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
def test_id_mappings_and_capabilities_match_runc(tmp_path: Path, rootfs: Path) -> None:
    """A root file system chowned for a user namespace (linux.uidMappings
    and gidMappings to host ids 300000..), run with podman's default
    capabilities: the guest sees the same owners, writes files with the
    same host ids, holds the same capability sets and is refused the
    same, under runc and under umld."""
    # runc's container root must reach its root file system by path: a
    # directory all may search (pytest's own is root's alone).
    reachable = Path(tempfile.mkdtemp(prefix="umld-ids-"))
    os.chmod(reachable, 0o755)
    try:
        results = _ids_under_both(tmp_path, rootfs, reachable)
    finally:
        shutil.rmtree(reachable)
    assert results[0] == results[1]
    code, out, _, uid, gid = results[0]
    assert code == 4 and (uid, gid) == (300005, 300005), results[0]
    assert out.startswith("0:0\n0:0\n0:0\n") and "5:5\n" in out, out
    assert "no write to a file of another owner" in out


def _ids_under_both(tmp_path: Path, rootfs: Path, reachable: Path) -> list[tuple[Any, ...]]:
    results: list[tuple[Any, ...]] = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        mine = reachable / f"rootfs-{name}"
        shutil.copytree(rootfs, mine, symlinks=True)
        (mine / "bin" / "x").write_text("")
        os.chown(mine / "bin" / "x", 0, 0)  # host root's: outside the maps
        _chown_tree(mine, 300000, 300000)
        os.lchown(mine / "bin" / "x", 0, 0)
        os.chmod(mine / "bin" / "x", 0o644)
        b = Bundle(tmp_path / f"bundle-{name}", mine)
        b.config["root"]["readonly"] = False
        b.config["mounts"] = [m for m in b.config["mounts"] if m["destination"] != "/shared"]
        b.config["linux"]["namespaces"] += [{"type": "user"}, {"type": "network"}]
        maps = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        b.config["linux"]["uidMappings"] = maps
        b.config["linux"]["gidMappings"] = maps
        sets = ("bounding", "effective", "permitted")
        b.config["process"]["capabilities"] = {s: CAPS for s in sets}
        rt = Runtime(argv, tmp_path / f"state-{name}")
        p = rt("run", "--bundle", str(b.command(IDS_SCRIPT).write()), f"ids-{name}", timeout=120)
        assert (mine / "tmp" / "made").exists(), (name, p)
        made = os.stat(mine / "tmp" / "made")
        results.append((p.returncode, p.stdout, p.stderr, made.st_uid, made.st_gid))
        assert not _ids(rt.state), f"{name} left its container"
    return results


def test_capabilities_of_the_process_and_of_exec(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """process.capabilities: the first process holds the sets asked (an
    unknown name is left out, CAP_SETFCAP never held), an ordinary uid
    keeps only its ambient ones across exec, and exec takes the
    container's sets, or --process's own."""
    caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_WARP_DRIVE"]
    bundle.config["process"]["capabilities"] = {
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps,
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }  # fmt: skip
    script = "grep -E '^Cap' /proc/self/status > /shared/f.tmp; mv /shared/f.tmp /shared/first"
    script += "; exec sleep 100"
    path = bundle.command(script).write()
    umld_oci("create", "--bundle", str(path), "caps", check=True)
    umld_oci("start", "caps", check=True)
    kill_bind = f"{1 << 5 | 1 << 10:016x}"
    wait_for(lambda: (bundle.shared / "first").exists(), "the first process's capabilities")
    first = dict(line.split(":\t") for line in (bundle.shared / "first").read_text().splitlines())
    assert first == {"CapInh": kill_bind, "CapPrm": kill_bind, "CapEff": kill_bind,
                     "CapBnd": kill_bind, "CapAmb": f"{1 << 10:016x}"}  # fmt: skip
    p = umld_oci("exec", "caps", "grep", "^CapEff", "/proc/self/status", check=True)
    assert p.stdout.split() == ["CapEff:", kill_bind]
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({
        "args": ["grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"], "cwd": "/",
        "user": {"uid": 1000, "gid": 1000},
        "capabilities": {"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                         "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
    }))  # fmt: skip
    p = umld_oci("exec", "--process", str(proc), "caps", check=True)
    assert p.stdout.split() == ["CapEff:", f"{1 << 5:016x}", "CapBnd:", f"{1 << 5:016x}"]
    # A --process without capabilities gets the container's (runc's exec).
    proc.write_text(json.dumps({"args": ["grep", "^CapBnd", "/proc/self/status"], "cwd": "/"}))
    p = umld_oci("exec", "--process", str(proc), "caps", check=True)
    assert p.stdout.split() == ["CapBnd:", kill_bind]
    umld_oci("delete", "--force", "caps", check=True)


class ConsoleSocket:
    """An engine's console socket: where a runtime sends a terminal's
    master (SCM_RIGHTS), as conmon and containerd's shim listen."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.server.settimeout(30)

    def received(self) -> list[int]:
        """The descriptors the next connection sends (none by the timeout:
        an empty list)."""
        import socket

        try:
            conn, _ = self.server.accept()
        except TimeoutError:
            return []
        with conn:
            conn.settimeout(self.server.gettimeout())
            try:
                _, fds, _, _ = socket.recv_fds(conn, 16, 1)
            except TimeoutError:
                return []
        return fds

    def master(self) -> int:
        fds = self.received()
        assert len(fds) == 1, fds
        return fds[0]

    def close(self) -> None:
        self.server.close()


def _read_until(fd: int, text: bytes, timeout: float = 30) -> bytes:
    import select

    got = b""
    end = time.monotonic() + timeout
    while text not in got:
        left = end - time.monotonic()
        assert left > 0, f"no {text!r} on the terminal: {got!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last user is gone
                break
            got += chunk
    return got


def test_exec_on_a_terminal_of_its_own(umld_oci: Runtime, bundle: Bundle, tmp_path: Path) -> None:
    """exec --tty --console-socket: the command runs on a new terminal of
    the container's devpts, sized as process.consoleSize says, whose
    master reaches the console socket; it reads what is typed there."""
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "t1", check=True)
    umld_oci("start", "t1", check=True)
    console = ConsoleSocket(tmp_path / "console.sock")
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({
        "args": ["sh", "-c", "tty; stty size; read line; echo typed: $line; exit 6"],
        "cwd": "/", "env": ["PATH=/bin"], "terminal": True,
        "consoleSize": {"width": 77, "height": 22},
    }))  # fmt: skip
    pid_file = tmp_path / "exec.pid"
    try:
        p = umld_oci("exec", "--process", str(proc), "--console-socket", str(console.path),
                     "--detach", "--pid-file", str(pid_file), "t1")  # fmt: skip
        assert p.returncode == 0, p.stderr
        master = console.master()
        out = _read_until(master, b"22 77")
        os.write(master, b"hello\n")
        out += _read_until(master, b"typed: hello")
        assert b"/dev/pts/" in out, out
        relay = int(pid_file.read_text())
        wait_for(lambda: not os.path.exists(f"/proc/{relay}") or _zombie(relay), "the exec's end")
        os.close(master)
    finally:
        console.close()
    refused = umld_oci("exec", "--tty", "t1", "true")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "umld oci: exec: a terminal (--tty, process.terminal) needs --console-socket"
    )
    umld_oci("delete", "--force", "t1", check=True)


def test_exec_never_sends_a_ptmx_the_guest_forged(
    umld_oci: Runtime, bundle: Bundle, tmp_path: Path
) -> None:
    """The guest's root covers /dev/pts with a ramdisk holding a FIFO named
    ptmx: exec --tty refuses in one line and the console socket gets
    nothing (else the guest would hand the engine a descriptor of its
    choosing as a terminal)."""
    bundle.config["root"]["readonly"] = False
    script = "mount -t tmpfs none /dev/pts && mkfifo /dev/pts/ptmx; touch /shared/ready; sleep 100"
    mine = tmp_path / "rootfs"
    shutil.copytree(bundle.config["root"]["path"], mine, symlinks=True)
    (mine / "bin" / "mkfifo").symlink_to("busybox")
    bundle.config["root"]["path"] = str(mine)
    path = bundle.command(script).write()
    umld_oci("create", "--bundle", str(path), "f1", check=True)
    umld_oci("start", "f1", check=True)
    try:
        wait_for((bundle.shared / "ready").exists, "the forged ptmx")
    except AssertionError:
        raise AssertionError(umld_oci.diagnosis("f1")) from None
    console = ConsoleSocket(tmp_path / "console.sock")
    console.server.settimeout(0.5)
    try:
        p = umld_oci("exec", "--tty", "--console-socket", str(console.path), "f1", "true")
        assert p.returncode != 0
        assert "is not a devpts terminal multiplexer" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert console.received() == []
    finally:
        console.close()
    umld_oci("delete", "--force", "f1", check=True)


MASK_SCRIPT = (
    "wc -c < /proc/version; ls /etc/secrets | wc -l; cat /etc/secrets/key 2>&1 | wc -c; "
    "echo 4096 > /proc/sys/kernel/shmmni 2>/dev/null && echo wrote a sysctl || echo sysctl ro; "
    "touch /shared/ro/x 2>/dev/null && echo wrote || echo ro; touch /shared/rw && echo rw"
)


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
def test_masked_and_readonly_paths_match_runc(tmp_path: Path, rootfs: Path) -> None:
    """linux.maskedPaths (a /proc file, a directory of the root) and
    readonlyPaths (/proc/sys, a directory of a bind): the same views and
    the same refusals under runc and umld."""
    results = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        mine = tmp_path / f"rootfs-{name}"
        shutil.copytree(rootfs, mine, symlinks=True)
        (mine / "etc" / "secrets").mkdir()
        (mine / "etc" / "secrets" / "key").write_text("hunter2\n")
        b = Bundle(tmp_path / f"bundle-{name}", mine)
        (b.shared / "ro").mkdir(mode=0o777)
        b.config["linux"]["maskedPaths"] = ["/proc/version", "/etc/secrets", "/no/such/path"]
        b.config["linux"]["readonlyPaths"] = ["/proc/sys", "/shared/ro", "/no/such/dir"]
        rt = Runtime(argv, tmp_path / f"state-{name}")
        p = rt("run", "--bundle", str(b.command(MASK_SCRIPT).write()), f"m-{name}", timeout=120)
        results.append((p.returncode, p.stdout, p.stderr))
        assert not (b.shared / "ro" / "x").exists()
        assert not _ids(rt.state), f"{name} left its container"
    assert results[0] == results[1], results
    assert results[0][1] == "0\n0\n62\nsysctl ro\nro\nrw\n", results[0]


#: A profile with each kind of answer: mkdir denied with EACCES, a signal
#: (SIGUSR1 by kill(2)) denied by an argument rule, sethostname(2) killing.
PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]},
        {"names": ["sethostname"], "action": "SCMP_ACT_KILL_PROCESS"},
    ],
}  # fmt: skip
SECCOMP_SCRIPT = (
    "mkdir /tmp/d; echo mkdir=$?; kill -USR1 $$; echo kill=$?; kill -0 $$; echo kill0=$?; "
    "sh -c 'hostname x'; echo sethostname=$?; grep ^Seccomp: /proc/self/status"
)


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
def test_a_seccomp_profile_matches_runc(tmp_path: Path, rootfs: Path) -> None:
    """linux.seccomp: the calls it denies fail with its errno (or kill
    with SIGSYS), the others run, under runc and umld alike; an exec'd
    process gets the container's filter too."""
    results = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        mine = tmp_path / f"rootfs-{name}"
        shutil.copytree(rootfs, mine, symlinks=True)
        b = Bundle(tmp_path / f"bundle-{name}", mine)
        b.config["root"]["readonly"] = False
        b.config["linux"]["seccomp"] = PROFILE
        rt = Runtime(argv, tmp_path / f"state-{name}")
        p = rt("run", "--bundle", str(b.command(SECCOMP_SCRIPT).write()), f"s-{name}", timeout=120)
        assert not (mine / "tmp" / "d").exists()
        b.command("exec sleep 100").write()
        rt("create", "--bundle", str(b.path), f"e-{name}", check=True)
        rt("start", f"e-{name}", check=True)
        e = rt("exec", f"e-{name}", "sh", "-c", "mkdir /tmp/e; echo mkdir=$?")
        rt("delete", "--force", f"e-{name}", check=True)
        results.append((p.returncode, p.stdout, e.returncode, e.stdout))
        assert not _ids(rt.state), f"{name} left its container"
    assert results[0] == results[1], results
    code, out, _, exec_out = results[0]
    assert code == 0
    assert out.startswith("mkdir=1\nkill=1\nkill0=0\nsethostname=159\nSeccomp:\t2\n"), out
    assert exec_out == "mkdir=1\n"


def test_a_profile_umld_cannot_honour_is_refused(umld_oci: Runtime, bundle: Bundle) -> None:
    bundle.config["linux"]["seccomp"] = {**PROFILE, "defaultAction": "SCMP_ACT_TRACE"}
    p = umld_oci("create", "--bundle", str(bundle.command("true").write()), "bad")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "umld oci: config.json: linux.seccomp.defaultAction SCMP_ACT_TRACE: not supported "
        "(umld is the container's tracer, so its stops would be umld's own)"
    ]
    assert _ids(umld_oci.state) == []


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
@pytest.mark.parametrize("score", [500, -300])
def test_oom_score_adj_matches_runc(tmp_path: Path, rootfs: Path, score: int) -> None:
    """process.oomScoreAdj: the container's processes start at it, above
    0 and below (where a memory limit keeps the machine's OOMs its own);
    the guest may raise its score and not go below where it started."""
    script = "cat /proc/self/oom_score_adj; echo 600 > /proc/self/oom_score_adj; " \
             "echo -1000 > /proc/self/oom_score_adj 2>/dev/null || echo refused"  # fmt: skip
    results = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        b = Bundle(tmp_path / f"bundle-{name}", rootfs)
        b.config["process"]["oomScoreAdj"] = score
        b.config["linux"]["resources"] = {"memory": {"limit": 256 << 20}}
        rt = Runtime(argv, tmp_path / f"state-{name}")
        p = rt("run", "--bundle", str(b.command(script).write()), f"o-{name}", timeout=120)
        results.append((p.returncode, p.stdout, p.stderr))
        assert not _ids(rt.state), f"{name} left its container"
    if score < 0 and not _has_sys_resource():
        # Lowering a score takes the host's CAP_SYS_RESOURCE (this
        # project's CI runs without it): both refuse, umld in one line.
        assert results[0][0] == results[1][0] == 1, results
        assert results[1][2] == "umld oci: config.json: process.oomScoreAdj: Permission denied\n"
        return
    assert results[0] == results[1], results
    assert results[0][1] == f"{score}\nrefused\n"


def _has_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


SYSCTL_SCRIPT = (
    "cat /proc/sys/kernel/shmmni /proc/sys/fs/mqueue/msg_max /proc/sys/net/ipv4/ping_group_range; "
    "hostname; echo 100 > /proc/sys/kernel/shmmni 2>/dev/null || echo sysctl ro"
)


@pytest.mark.skipif(RUNC is None or os.geteuid() != 0, reason="runc runs here as root")
def test_sysctls_match_runc(tmp_path: Path, rootfs: Path) -> None:
    """linux.sysctl of the container's own namespaces (IPC, message
    queues, a network of its own; kernel.hostname), /proc/sys read-only
    after them: the same values and refusal under runc and umld."""
    results = []
    for name, argv in (("runc", [str(RUNC)]), ("umld", [sys.executable, "-m", "umld", "oci"])):
        b = Bundle(tmp_path / f"bundle-{name}", rootfs)
        b.config["linux"]["namespaces"].append({"type": "network"})
        b.config["linux"]["readonlyPaths"] = ["/proc/sys"]
        b.config["linux"]["sysctl"] = {
            "kernel.shmmni": "4001", "fs.mqueue.msg_max": "20",
            "net.ipv4.ping_group_range": "0 0",
        }  # fmt: skip
        rt = Runtime(argv, tmp_path / f"state-{name}")
        p = rt("run", "--bundle", str(b.command(SYSCTL_SCRIPT).write()), f"y-{name}", timeout=120)
        results.append((p.returncode, p.stdout, p.stderr))
        assert not _ids(rt.state), f"{name} left its container"
    assert results[0] == results[1], results
    assert results[0][1] == "4001\n20\n0\t0\nbox\nsysctl ro\n", results[0]


def test_a_sysctl_of_the_hosts_is_refused(umld_oci: Runtime, bundle: Bundle) -> None:
    for key, why in (
        ("vm.swappiness", "not in a namespace of the machine's own"),
        ("net.ipv4.ip_forward", "the machine shares the host's network"),
        ("kernel.hostname", "conflicts with the hostname field"),
    ):
        bundle.config["linux"]["sysctl"] = {key: "1"}
        p = umld_oci("create", "--bundle", str(bundle.command("true").write()), "bad")
        assert p.returncode != 0 and why in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert _ids(umld_oci.state) == []
