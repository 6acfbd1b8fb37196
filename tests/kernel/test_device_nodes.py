"""mknod(2) of devices by a root-run machine's root (issue 17: LTP's
mknod01, open11, statx01, mount03).

The guest's user namespace never gives it the initial namespace's
CAP_MKNOD, so umld's helper makes the node as the guest would
(sys_file._device_node): a character device the machine's /dev already
offers, anywhere; any device on the file system of one of its loop devices,
where it can never open (always nodev).  The adversarial half: a host
disk's or terminal's node is refused in /dev and on the machine's other
trees (a host tree's own mount is not nodev on the host), one on a loop
device's file system opens nothing, and a guest user without CAP_MKNOD
gets EPERM as natively.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import User, run, umld_argv
from umld.core import procfs

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.skipif(not procfs.host_root(), reason="device nodes are a root-run machine's"),
]

SCRIPT = """
umask 022
mknod /dev/mynull c 1 3 && echo hi > /dev/mynull && stat -c '%F %t:%T %U:%G %a' /dev/mynull
mknod /dev/myzero c 1 5 && head -c 2 /dev/myzero | od -An -tx1
mknod /dev/sdz b 8 0 2>&1 || true
mknod /dev/tty9 c 4 9 2>&1 || true
mknod /tmp/sda b 8 0 2>&1 || true
mknod /tmp/fifo p && stat -c '%F' /tmp/fifo
cd /tmp && mknod rel c 1 3 && stat -c '%F' rel
truncate -s 16M img && dev=$(losetup -f --show img) && mkfs.ext4 -q "$dev" && mkdir m
mount "$dev" m && mknod m/sda b 8 0 && stat -c '%F %t:%T' m/sda && (head -c 1 m/sda 2>&1 || true)
umount m
setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps=-all mknod /tmp/n5 c 1 3 2>&1 || true
"""


def test_the_machines_devices_and_inert_nodes(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "mknod.sh"
    script.write_text(SCRIPT)
    got = run([*umld_argv(backend, "--devices-loop=1"), "sh", str(script)])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [
        "character special file 1:3 root:root 644",
        " 00 00",
        "mknod: /dev/sdz: Operation not permitted",
        "mknod: /dev/tty9: Operation not permitted",
        "mknod: /tmp/sda: Operation not permitted",
        "fifo",
        "character special file",
        "block special file 8:0",
        "head: cannot open 'm/sda' for reading: Permission denied",
        "mknod: /tmp/n5: Operation not permitted",
    ], got.stderr


def test_an_ordinary_users_machine_is_unchanged(backend: str, ordinary_user: User) -> None:
    """Its guest root has no host privilege to lend: EPERM, as natively."""
    argv = ordinary_user.umld_argv(backend)
    got = run([*argv, "sh", "-c", "mknod /dev/mynull c 1 3 2>&1; true"], cwd=ordinary_user.work)
    assert got.returncode == 0, got.stderr
    assert "Operation not permitted" in got.stdout


def test_the_node_is_made_with_the_guests_permissions(backend: str, tmp_path: Path) -> None:
    """The guest's ids, groups and permissions decide, as for a file: a
    guest user without write permission on the directory is refused even
    with CAP_MKNOD; its root's node in a bound host tree is its own."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    script = (
        f"setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps=+mknod "
        f"--ambient-caps=+mknod mknod {shared}/user c 1 3 2>&1 || true\n"
        f"mknod {shared}/root c 1 3 && stat -c '%U %F' {shared}/root\n"
    )
    got = run([*umld_argv(backend, f"--bind={shared}"), "sh", "-c", script])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [
        f"mknod: {shared}/user: Permission denied",
        "root character special file",
    ]
    assert not (shared / "user").exists()
    assert (shared / "root").stat().st_uid == 0
