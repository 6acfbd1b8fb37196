"""The OCI runtime's tests: a root file system of busybox for bundles."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUSYBOX = shutil.which("busybox")
APPLETS = (
    "sh", "sleep", "cat", "echo", "true", "false", "ls", "id", "hostname", "env", "pwd",
    "mv", "touch", "head", "kill", "mkdir", "rm", "ps", "grep", "tail", "cut", "wc", "readlink",
    "tty", "stty", "stat", "chown",
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
