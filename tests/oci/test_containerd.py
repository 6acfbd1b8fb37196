"""containerd with umld as its runc binary, against containerd with runc.

Debian's containerd, started by the test with a root, state and socket
of its own; `ctr run --runc-binary` picks the runtime (the shim
io.containerd.runc.v2 calls it as it calls runc); `--rootfs` gives each
container a copy of the busybox root the lifecycle tests use.  Each
command runs under both runtimes; outputs and statuses must be the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.uses_fuse,
    pytest.mark.skipif(
        shutil.which("containerd") is None or shutil.which("runc") is None or os.geteuid() != 0,
        reason="containerd and runc, as root (make test installs them)",
    ),
]

UMLD_OCI = str(Path(sys.executable).with_name("umld-oci"))
RUNTIMES = ("/usr/sbin/runc", UMLD_OCI)


class Ctr:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.address = str(work / "containerd.sock")

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", self.address, "-n", "umldtest", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def rootfs(self, source: Path, name: str) -> str:
        copy = self.work / f"rootfs-{name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy, symlinks=True)
        return str(copy)

    def status(self, task: str) -> str:
        for line in self("task", "ls").stdout.splitlines()[1:]:
            words = line.split()
            if words and words[0] == task:
                return words[-1]
        return ""


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    work = tmp_path_factory.mktemp("containerd")
    c = Ctr(work)
    with open(work / "containerd.log", "wb") as log:
        daemon = subprocess.Popen(
            ["containerd", "--root", str(work / "root"), "--state", str(work / "state"),
             "--address", c.address],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for(lambda: c("version").returncode == 0, "containerd")
        yield c
    finally:
        for line in c("task", "ls").stdout.splitlines()[1:]:
            c("task", "kill", "-s", "KILL", line.split()[0])
        for line in c("container", "ls", "-q").stdout.split():
            c("task", "delete", "-f", line)
            c("container", "delete", line)
        daemon.terminate()
        daemon.wait(30)


def test_run_status_and_output(ctr: Ctr, rootfs: Path) -> None:
    got = []
    for i, runtime in enumerate(RUNTIMES):
        p = ctr(
            "run", "--rm", "--env", "PATH=/bin", "--runc-binary", runtime,
            "--rootfs", ctr.rootfs(rootfs, f"r{i}"), f"run{i}",
            "sh", "-c", "echo hi; id -u; exit 3",
        )  # fmt: skip
        got.append((p.returncode, p.stdout))
    assert got[0] == got[1] == (3, "hi\n0\n")


def test_detached_task_exec_kill_delete(ctr: Ctr, rootfs: Path) -> None:
    """run -d, task exec (its output and status), task kill (SIGTERM to
    the trap), the task stopped, delete: the same under both."""
    script = 'trap "exit 7" TERM; while :; do sleep 0.05; done'
    results = []
    for i, runtime in enumerate(RUNTIMES):
        name = f"task{i}"
        p = ctr(
            "run", "-d", "--env", "PATH=/bin", "--runc-binary", runtime,
            "--rootfs", ctr.rootfs(rootfs, name), name, "sh", "-c", script,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        wait_for(lambda n=name: ctr.status(n) == "RUNNING", "running")  # type: ignore[misc]
        ex = ctr("task", "exec", "--exec-id", "e1", name, "sh", "-c", "echo in exec; exit 2")
        assert ctr("task", "kill", name).returncode == 0
        wait_for(lambda n=name: ctr.status(n) == "STOPPED", "stopped")  # type: ignore[misc]
        deleted = ctr("task", "delete", name)
        ctr("container", "delete", name)
        # containerd reports the task's exit code as it deletes it.
        code7 = "exit code 7" in deleted.stderr
        results.append((ex.returncode, ex.stdout, deleted.returncode, code7))
        assert ctr.status(name) == ""
    assert results[0] == results[1] == (2, "in exec\n", 0, True)
