"""podman with umld as its runtime, against podman with runc.

Debian's podman, as root, with a store of the test's own (the `vfs`
storage driver: each container's root is a plain directory, which umld
presents to the guest through an idmapped mount; podman's default
overlay root cannot be idmapped, see the README) and a test-only
containers.conf for this kind of host (cgroupfs, rlimits below podman's
defaults).  The image is imported from the busybox root the lifecycle
tests use.  Each command runs under both runtimes; outputs and exit
statuses must be the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.uses_fuse,
    pytest.mark.skipif(
        shutil.which("podman") is None or shutil.which("runc") is None or os.geteuid() != 0,
        reason="podman and runc, as root (make test installs them)",
    ),
]

IMAGE = "localhost/umld-test-busybox:1"
UMLD_OCI = str(Path(sys.executable).with_name("umld-oci"))
CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
"""


class Podman:
    def __init__(self, work: Path) -> None:
        self.work = work
        (work / "containers.conf").write_text(CONF)
        self.base = [
            "podman",
            "--storage-driver",
            "vfs",
            "--root",
            str(work / "storage"),
            "--runroot",
            str(work / "runroot"),
        ]

    def __call__(
        self, runtime: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, "--runtime", runtime, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "CONTAINERS_CONF": str(self.work / "containers.conf"),
                "PYTHONPATH": str(ROOT),
            },
        )


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> Iterator[Podman]:
    work = tmp_path_factory.mktemp("podman")
    tar = work / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    p = Podman(work)
    imported = subprocess.run(
        [*p.base, "import", str(tar), IMAGE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")},
    )
    assert imported.returncode == 0, imported.stderr
    yield p
    subprocess.run([*p.base, "rm", "-a", "-f"], capture_output=True, timeout=120)


RUNTIMES = ("/usr/sbin/runc", UMLD_OCI)


def both(podman: Podman, *args: str) -> list[tuple[int, str]]:
    out = []
    for runtime in RUNTIMES:
        p = podman(runtime, *args)
        out.append((p.returncode, p.stdout))
    return out


def test_run_rm_status_and_output(podman: Podman) -> None:
    got = both(podman, "run", "--rm", "--network", "none", IMAGE, "sh", "-c", "echo hi; exit 3")
    assert got[0] == got[1] == (3, "hi\n")


def test_env_workdir_user_volume_limits(podman: Podman, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("from the host\n")
    script = "echo $FOO; pwd; cat /vol/f; hostname; id; echo x > /vol/out"
    got = both(
        podman,
        "run", "--rm", "--network", "none", "-e", "FOO=bar", "-w", "/tmp", "-u", "0:0",
        "-v", f"{vol}:/vol", "--memory", "64m", "--cpus", "1", "--hostname", "hh",
        "--group-add", "5", "--group-add", "7",
        IMAGE, "sh", "-c", script,
    )  # fmt: skip
    assert (
        got[0]
        == got[1]
        == (
            0,
            "bar\n/tmp\nfrom the host\nhh\nuid=0(root) gid=0(root) groups=0(root),5,7\n",
        )
    )
    assert (vol / "out").read_text() == "x\n"


def test_detached_stop_logs_and_the_live_export(podman: Podman) -> None:
    """`run -d`, `ps`, `logs`, `stop` (its SIGTERM reaches the trap) and the
    exit code in `inspect`; under umld the container's machine is exported
    at /run/umld/oci/ID while it runs."""
    script = 'echo started; trap "echo got TERM; exit 9" TERM; while :; do sleep 0.05; done'
    results = []
    for runtime in RUNTIMES:
        p = podman(runtime, "run", "-d", "--network", "none", IMAGE, "sh", "-c", script)
        assert p.returncode == 0, p.stderr
        cid = p.stdout.strip()
        try:
            results.append(_detached_case(podman, runtime, cid))
        finally:  # a failure leaves no container running into the next test
            podman(runtime, "rm", "-f", "-t", "0", cid)
        if runtime == UMLD_OCI:
            gone = Path("/run/umld/oci") / cid
            wait_for(lambda g=gone: not g.exists(), "the export's end")  # type: ignore[misc]
    assert results[0] == results[1] == ("9", "started\ngot TERM\n")


def _detached_case(podman: Podman, runtime: str, cid: str) -> tuple[str, str]:
    """One runtime's run: (the exit code, the logs)."""
    wait_for(
        lambda r=runtime, c=cid: "started" in podman(r, "logs", c).stdout,  # type: ignore[misc]
        "the container's start",
    )
    ps = podman(runtime, "ps", "--format", "{{.ID}}")
    assert cid[:12] in ps.stdout
    if runtime == UMLD_OCI:
        export = Path("/run/umld/oci") / cid
        assert (export / "status").read_text().startswith("name: ")
        # Its shell (the loop's sleep comes and goes between two reads).
        assert len(os.listdir(export / "proc")) >= 1
        # A setting written there is the container's at once.
        (export / "config" / "hostname").write_text("renamed\n")
        got = podman(runtime, "exec", cid, "hostname")
        assert (got.returncode, got.stdout) == (0, "renamed\n"), got.stderr
    stop = podman(runtime, "stop", "-t", "10", cid)
    assert stop.returncode == 0, stop.stderr
    code = podman(runtime, "inspect", cid, "--format", "{{.State.ExitCode}}").stdout.strip()
    logs = podman(runtime, "logs", cid).stdout
    assert podman(runtime, "rm", cid).returncode == 0
    return code, logs


def test_the_engines_network_is_the_containers(podman: Podman) -> None:
    """Without --network, podman gives the container its bridge's network
    namespace by path: the same interfaces and routes under both."""
    script = "grep -c eth0 /proc/net/dev; grep -c '^eth0' /proc/net/route"
    got = both(podman, "run", "--rm", IMAGE, "sh", "-c", script)
    assert got[0] == got[1] == (0, "1\n" + got[0][1].split("\n")[1] + "\n")
    assert got[0][1].split("\n")[1] != "0"


def test_exec(podman: Podman) -> None:
    """`podman exec` with -e, -w and -u: the same output and status."""
    results = []
    for runtime in RUNTIMES:
        p = podman(runtime, "run", "-d", "--network", "none", IMAGE, "sleep", "100")
        assert p.returncode == 0, p.stderr
        cid = p.stdout.strip()
        try:
            a = podman(runtime, "exec", "-e", "X=1", "-w", "/tmp", cid, "sh", "-c",
                       "echo $X $(pwd); exit 5")  # fmt: skip
            b = podman(runtime, "exec", "-u", "5:6", cid, "id")
            results.append((a.returncode, a.stdout, b.returncode, b.stdout))
        finally:
            podman(runtime, "rm", "-f", "-t", "0", cid)
    assert results[0] == results[1] == (5, "1 /tmp\n", 0, "uid=5 gid=6\n")


def test_an_overlay_root_is_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, rootfs: Path
) -> None:
    """podman's default storage gives an overlayfs mount as the root, which
    a root-run machine cannot present (it cannot be idmapped): create says
    so in one line naming the way out; no container runs."""
    work = tmp_path_factory.mktemp("podman-overlay")
    p = Podman(work)
    p.base[p.base.index("vfs")] = "overlay"
    # The overlay driver wants a short runroot (50 characters at most).
    runroot = tempfile.mkdtemp(prefix="umld-po-", dir="/tmp")
    p.base[p.base.index("--runroot") + 1] = runroot
    tar = work / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
    assert subprocess.run([*p.base, "import", str(tar), IMAGE], capture_output=True,
                          env=env, timeout=120).returncode == 0  # fmt: skip
    try:
        r = p(UMLD_OCI, "run", "--rm", "--network", "none", IMAGE, "true")
        assert r.returncode != 0
        assert "is an overlayfs mount" in r.stderr and "--storage-driver vfs" in r.stderr
        assert "Traceback" not in r.stderr
        assert p(UMLD_OCI, "ps", "-q").stdout.strip() == ""
    finally:
        subprocess.run([*p.base, "rm", "-a", "-f"], capture_output=True, env=env, timeout=120)
        subprocess.run([*p.base, "system", "reset", "-f"], capture_output=True, env=env,
                       timeout=120)  # fmt: skip
        shutil.rmtree(runroot, ignore_errors=True)


def _screen(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def _typed_in_tmux(podman: Podman, session: str, size: tuple[int, int], argv: list[str],
                   typed: str) -> list[str]:  # fmt: skip
    """Run podman ``argv`` in a tmux window of ``size`` (columns, rows),
    type ``typed`` at the shell's prompt, and return the screen's lines
    after it, up to the EXITED line with podman's status."""
    env = f"CONTAINERS_CONF={podman.work / 'containers.conf'} PYTHONPATH={ROOT}"
    command = " ".join([*podman.base, *argv])
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]),
         f"env {env} {command}; echo EXITED $?; sleep 60"],
        check=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: any(ln.rstrip().endswith("#") for ln in _screen(session).splitlines()),
            "the shell's prompt",
        )
        subprocess.run(["tmux", "send-keys", "-t", session, typed, "Enter"], check=True)
        wait_for(lambda: "EXITED" in _screen(session), "the end")
        lines = [line.strip() for line in _screen(session).splitlines() if line.strip()]
        start = next(k for k, line in enumerate(lines) if line.endswith(typed))
        return lines[start + 1 :]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (make test installs it)")
def test_run_it_on_a_terminal_driven_with_tmux(podman: Podman) -> None:
    """`podman run -it` in a tmux window: the shell is on a terminal of
    its own (/dev/pts/0) the size of tmux's window, takes what is typed,
    and its exit status comes back; the same under both runtimes."""
    results = []
    for i, runtime in enumerate(RUNTIMES):
        argv = ["--runtime", runtime, "run", "-it", "--rm", "--network", "none", IMAGE, "sh"]
        session = f"umld-oci-{os.getpid()}-{i}"
        results.append(_typed_in_tmux(podman, session, (100, 30), argv,
                                      "tty; stty size; exit 4"))  # fmt: skip
    assert results[0] == results[1] == ["/dev/pts/0", "30 100", "EXITED 4"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (make test installs it)")
def test_exec_it_on_a_terminal_driven_with_tmux(podman: Podman) -> None:
    """`podman exec -it` into a running container, in a tmux window: a
    new terminal of the container's the window's size, what is typed,
    the exit status; the same under both runtimes."""
    results = []
    for i, runtime in enumerate(RUNTIMES):
        p = podman(runtime, "run", "-d", "--network", "none", IMAGE, "sleep", "100")
        assert p.returncode == 0, p.stderr
        cid = p.stdout.strip()
        try:
            argv = ["--runtime", runtime, "exec", "-it", cid, "sh"]
            session = f"umld-oci-exec-{os.getpid()}-{i}"
            results.append(_typed_in_tmux(podman, session, (90, 25), argv,
                                          "tty | cut -c1-9; stty size; exit 5"))  # fmt: skip
        finally:
            podman(runtime, "rm", "-f", "-t", "0", cid)
    assert results[0] == results[1] == ["/dev/pts/", "25 90", "EXITED 5"]


def test_capabilities_default_and_dropped(podman: Podman) -> None:
    """podman's default capabilities, and --cap-drop/--cap-add: the same
    sets as under runc, but for CAP_SETFCAP (bit 31), which a root-run
    machine's root never holds (sandbox.c)."""
    script = "grep -E '^Cap(Bnd|Eff|Prm)' /proc/self/status"
    setfcap = 1 << 31
    for opts in ([], ["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE,KILL"]):
        got = both(podman, "run", "--rm", "--network", "none", *opts, IMAGE, "sh", "-c", script)
        assert got[0][0] == got[1][0] == 0, got
        runc, umld = (dict(line.split(":\t") for line in out.splitlines()) for _, out in got)
        assert runc.keys() == umld.keys() == {"CapBnd", "CapEff", "CapPrm"}
        for key in runc:
            assert int(umld[key], 16) == int(runc[key], 16) & ~setfcap, (opts, runc, umld)
        if opts:
            assert int(umld["CapBnd"], 16) == 1 << 5 | 1 << 10


def test_a_user_namespace_map(podman: Podman) -> None:
    """--uidmap/--gidmap: podman copies the image chowned to host ids
    200000..; the container sees its files as its own and writes new ones
    with those host ids, as under runc."""
    script = "stat -c %u:%g / /bin/busybox; touch /made; stat -c %u:%g /made; id -u"
    results = []
    for runtime in RUNTIMES:
        p = podman(
            runtime, "run", "-d", "--network", "none",
            "--uidmap", "0:200000:65536", "--gidmap", "0:200000:65536",
            IMAGE, "sh", "-c", f"{script}; sleep 100",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        cid = p.stdout.strip()
        try:
            wait_for(
                lambda r=runtime, c=cid: podman(r, "logs", c).stdout.count("\n") >= 4,  # type: ignore[misc]
                "the script's output",
            )
            logs = podman(runtime, "logs", cid).stdout
            mount = podman(runtime, "mount", cid).stdout.strip()
            made = os.stat(Path(mount) / "made")
            results.append((logs, made.st_uid, made.st_gid))
        finally:
            podman(runtime, "rm", "-f", "-t", "0", cid)
    assert results[0] == results[1] == ("0:0\n0:0\n0:0\n0\n", 200000, 200000)


def test_a_seccomp_profile(podman: Podman, tmp_path: Path) -> None:
    """--security-opt seccomp=FILE (every other test runs podman's default
    profile): denied calls fail with the profile's errno under both
    runtimes."""
    import json

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13}],
    }))  # fmt: skip
    script = "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f; echo touch=$?"
    got = both(podman, "run", "--rm", "--network", "none", "--security-opt",
               f"seccomp={profile}", IMAGE, "sh", "-c", script)  # fmt: skip
    assert got[0] == got[1] == (0, "mkdir=1\ntouch=0\n"), got
