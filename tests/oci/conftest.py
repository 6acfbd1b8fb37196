"""The OCI runtime's tests: a root file system of busybox for bundles, a
bundle per test, and a runtime's command line with a state root of the
test's own (umld's, checked to leave nothing behind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

BUSYBOX = shutil.which("busybox")
APPLETS = (
    "sh", "sleep", "cat", "echo", "true", "false", "ls", "id", "hostname", "env", "pwd",
    "mv", "touch", "head", "kill", "mkdir", "rm", "ps", "grep", "tail", "cut", "wc", "readlink",
    "tty", "stty", "stat", "chown", "mount",
)  # fmt: skip


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [word for line in out.splitlines() for word in line.split() if word.startswith("/")]


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root file system of busybox: /bin/busybox and its applets, its
    libraries where the loader looks, an /etc/passwd, empty mount points."""
    if BUSYBOX is None:
        pytest.skip("busybox is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("oci") / "rootfs"
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "shared"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for app in APPLETS:
        (root / "bin" / app).symlink_to("busybox")
    for lib in _libraries(BUSYBOX):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    os.chmod(root / "tmp", 0o1777)
    return root


class Bundle:
    def __init__(self, path: Path, rootfs: Path) -> None:
        self.path = path
        self.shared = path / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        os.chmod(self.shared, 0o777)
        self.config: dict[str, Any] = {
            "ociVersion": "1.0.2",
            "root": {"path": str(rootfs), "readonly": True},
            "process": {
                "args": ["sh", "-c", "true"],
                "env": ["PATH=/bin", "HOME=/"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
            },
            "hostname": "box",
            # `runc spec`'s mounts: the machine has each of its own.
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {
                    "destination": "/dev",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
                },
                {
                    "destination": "/dev/pts",
                    "type": "devpts",
                    "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
                },
                {
                    "destination": "/dev/shm",
                    "type": "tmpfs",
                    "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                },
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
                {
                    "destination": "/sys",
                    "type": "sysfs",
                    "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"],
                },
                {
                    "destination": "/shared",
                    "type": "bind",
                    "source": str(self.shared),
                    "options": ["rbind", "rw"],
                },
            ],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts")]},
            # Each test's export in its own directory: one a test leaves
            # behind never stands in another's way.
            "annotations": {"umld.mount": str(path / "export")},
        }

    def command(self, script: str) -> Bundle:
        self.config["process"]["args"] = ["sh", "-c", script]
        return self

    def write(self) -> Path:
        (self.path / "config.json").write_text(json.dumps(self.config))
        return self.path


class Runtime:
    """One runtime's command line with a --root of the test's own."""

    def __init__(self, argv: list[str], state: Path) -> None:
        self.argv = argv
        self.state = state

    def __call__(
        self, *args: str, bundle: Path | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        # Global options (--log...) go before the runtime's own --root.
        opts: list[str] = []
        while args and args[0].startswith("--log"):
            opts, args = [*opts, *args[:2]], args[2:]
        # Files, not pipes, for its output: a container keeps the
        # runtime's stdio (as under runc), so a pipe would not end at
        # create's exit.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            code = subprocess.run(
                [*self.argv, *opts, "--root", str(self.state), *args],
                cwd=bundle or "/",
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            ).returncode
            out.seek(0)
            err.seek(0)
            p = subprocess.CompletedProcess(
                args, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def diagnosis(self, cid: str) -> str:
        """The container's state and its supervisor's log, for a test's
        failure message."""
        log = self.state / cid / "supervisor.log"
        text = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        return f"state: {self('state', cid).stdout.strip()}\nsupervisor.log: {text}"

    def state_of(self, cid: str) -> dict[str, Any]:
        p = self("state", cid, check=True)
        return json.loads(p.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def umld_oci(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime([sys.executable, "-m", "umld", "oci"], tmp_path / "umld-state")
    yield rt
    logged = {
        cid: (rt.state / cid / "supervisor.log").read_text(errors="replace")
        for cid in _ids(rt.state)
        if (rt.state / cid / "supervisor.log").exists()
    }
    for cid in _ids(rt.state):
        rt("delete", "--force", cid)
    # What went wrong inside a supervisor is an error of its test too.
    errors = {c: t for c, t in logged.items() if " ERROR: " in t or "Traceback" in t}
    assert not errors, f"supervisors logged errors: {errors}"
    left = _ids(rt.state)
    assert not left, f"containers left behind: {left}"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    mine = [m for m in mounts if m.startswith(str(tmp_path))]
    for m in mine:  # reported below, and gone before the next test
        subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True)
    assert not mine, f"export mounts left behind: {mine}"


def _ids(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir()) if state.exists() else []


@pytest.fixture
def bundle(tmp_path: Path, rootfs: Path) -> Bundle:
    return Bundle(tmp_path / "bundle", rootfs)
