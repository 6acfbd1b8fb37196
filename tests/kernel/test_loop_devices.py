"""Loop devices of a root-run machine (issue 17, the devices/loop setting:
umld/core/loopdev.py).

Real programs under real ptrace: util-linux's losetup and mount, e2fsprogs'
mkfs and debugfs, and an image file the test reads back on the host.  The
adversarial half: the guest reaches no loop device but those it leased, a
device node written into its image opens nothing, loop-control cannot
make or destroy the host's devices, only device-backed file systems are
mounted for it, and nothing stays attached after the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, run, umld_argv, wait_for
from umld.core import procfs

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.skipif(not procfs.host_root(), reason="loop devices are a root-run machine's"),
    pytest.mark.skipif(
        not os.path.exists("/dev/loop-control") or shutil.which("mkfs.ext4") is None,
        reason="needs the host's loop devices and e2fsprogs",
    ),
]


def _attached_to(image: Path) -> list[str]:
    """The host's loop devices that have ``image`` attached."""
    out = subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(":")[0] for line in out.splitlines()]


def _lines(backend: str, tmp_path: Path, text: str, loops: int = 1) -> list[str]:
    """What the shell script ``text`` (set -e) prints in a machine with
    ``loops`` loop devices; it must succeed."""
    path = tmp_path / "script.sh"
    path.write_text("set -e\n" + text)
    got = run([*umld_argv(backend, f"--devices-loop={loops}"), "sh", str(path)])
    assert got.returncode == 0, got.stderr
    return got.stdout.splitlines()


def test_losetup_mkfs_mount_work_for_the_guests_root(backend: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    lines = _lines(
        backend,
        tmp_path,
        f"""
truncate -s 32M {image}
dev=$(losetup -f --show {image})
stat -c '%F %U:%G %a' "$dev" /dev/loop-control
mkfs.ext4 -q "$dev"
mkdir /tmp/m
mount "$dev" /tmp/m
echo written > /tmp/m/file
chown 1000:1000 /tmp/m/file
stat -c '%u:%g %s' /tmp/m/file
grep ' /tmp/m ' /proc/self/mountinfo | cut -d' ' -f6
umount /tmp/m
losetup -d "$dev"
test ! -e "$dev" && echo "node gone"
mount -o loop,ro {image} /tmp/m
cat /tmp/m/file
umount /tmp/m
""",
        loops=2,
    )
    assert lines[:2] == ["block special file root:disk 660", "character special file root:disk 660"]
    assert lines[2] == "1000:1000 8"
    # Mounted for the guest: always nodev, idmapped with the guest's ids.
    assert {"nodev", "idmapped"} <= set(lines[3].split(","))
    assert lines[4:] == ["node gone", "written"]
    # On disk, the guest's ids (the idmap): the owner the guest gave.
    listing = subprocess.run(
        ["debugfs", "-R", "stat /file", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "User:  1000   Group:  1000" in listing, listing
    assert _attached_to(image) == []


def test_a_device_left_attached_is_detached_with_the_machine(backend: str, tmp_path: Path) -> None:
    image = tmp_path / "left.img"
    script = f"truncate -s 8M {image}\nlosetup -f {image}\nlosetup -a | grep -c left.img\n"
    assert _lines(backend, tmp_path, script) == ["1"]
    assert _attached_to(image) == []


@pytest.fixture
def host_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loop device of the host's, attached to an image with a secret."""
    image = tmp_path_factory.mktemp("host") / "secret.img"
    image.write_bytes(b"host secret\n" + bytes(1 << 20))
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    yield dev
    subprocess.run(["losetup", "-d", dev], check=False)


def test_the_guest_reaches_no_other_loop_device(
    backend: str, tmp_path: Path, host_device: str
) -> None:
    index = int(host_device.removeprefix("/dev/loop"))
    image = tmp_path / "guest.img"
    lines = _lines(
        backend,
        tmp_path,
        f"""
ls /dev | grep loop || true
cat {host_device} 2>/dev/null && echo "read the host's device"
mknod /tmp/x b 7 {index} 2>/dev/null && echo "made a node of the host's device"
python3 - <<'EOF'
import fcntl, os
ctl = os.open("/dev/loop-control", os.O_RDWR)
for name, request in (("LOOP_CTL_REMOVE", 0x4C81), ("LOOP_CTL_ADD", 0x4C80)):
    try:
        fcntl.ioctl(ctl, request, {index})
        print(name, "ran")
    except OSError as exc:
        print(name, os.strerror(exc.errno))
EOF
truncate -s 16M {image}
dev=$(losetup -f --show {image})
test "$dev" != {host_device} && echo "leased another"
losetup -f {image} 2>/dev/null || echo "one device at a time"
mkfs.ext4 -q "$dev"
# A device node written into the image by hand (the guest may write its
# image as it likes): the host's device behind it never opens.
debugfs -w -R "mknod hostdev b 7 {index}" "$dev" >/dev/null 2>&1
mkdir /tmp/m
mount "$dev" /tmp/m
stat -c '%F %t:%T' /tmp/m/hostdev
head -c 11 /tmp/m/hostdev 2>/dev/null || echo "its node opens nothing"
umount /tmp/m
# A file system without a device is not mounted for the guest.
mount -t proc "$dev" /tmp/m 2>/dev/null && echo "mounted proc"
exit 0
""",
        loops=1,
    )
    assert lines == [
        "loop-control",
        "LOOP_CTL_REMOVE Operation not permitted",
        "LOOP_CTL_ADD Operation not permitted",
        "leased another",
        "one device at a time",
        f"block special file 7:{index:x}",
        "its node opens nothing",
    ]
    assert _attached_to(image) == []
    assert Path(host_device).exists()
    with open(host_device, "rb") as f:
        assert f.read(11) == b"host secret"


def test_an_autoclear_device_leaves_the_machine_at_its_unmount(
    backend: str, tmp_path: Path
) -> None:
    """``mount -o loop`` attaches with autoclear.  After the guest's unmount
    the device is free on the host as natively, and no longer the guest's:
    a file a host process binds to it then never reaches the guest."""
    image, secret = tmp_path / "auto.img", tmp_path / "secret.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    secret.write_bytes(b"host secret\n" + bytes(1 << 20))
    devfile, unmounted, bound = tmp_path / "dev", tmp_path / "unmounted", tmp_path / "bound"
    script = tmp_path / "auto.sh"
    script.write_text(
        f"""set -e
mkdir /tmp/m
mount -o loop {image} /tmp/m
losetup -j {image} | cut -d: -f1 > {devfile}
umount /tmp/m
touch {unmounted}
while [ ! -e {bound} ]; do sleep 0.05; done
dev=$(cat {devfile})
test -e "$dev" || echo "node gone"
head -c 11 "$dev" 2>/dev/null || echo "nothing read"
losetup -a | grep -c . || true
"""
    )
    argv = [*umld_argv(backend, "--devices-loop=1"), "sh", str(script)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dev = ""
    try:
        wait_for(lambda: unmounted.exists() or proc.poll() is not None, "the guest's unmount")
        assert proc.poll() is None, proc.communicate()
        dev = devfile.read_text().strip()
        assert dev.startswith("/dev/loop")
        wait_for(lambda: _attached_to(image) == [], "the autoclear detach")
        subprocess.run(["losetup", dev, str(secret)], check=True)
        bound.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["node gone", "nothing read", "0"]


def test_without_the_setting_there_is_no_loop_control(backend: str) -> None:
    got = run([*umld_argv(backend), "sh", "-c", "ls /dev | grep -c loop || true"])
    assert (got.returncode, got.stdout) == (0, "0\n"), got.stderr


def test_loop_devices_need_a_root_run_machine(backend: str, ordinary_user: User) -> None:
    argv = ordinary_user.umld_argv(backend, "--devices-loop=1")
    got = run([*argv, "true"], cwd=ordinary_user.work)
    assert got.returncode == 125
    assert got.stderr.count("\n") == 1 and "--devices-loop needs" in got.stderr, got.stderr
    unsafe = run([*umld_argv(backend, "--devices-loop=1", "--unsafe-host-ids"), "true"])
    assert unsafe.returncode == 125
    assert unsafe.stderr.count("\n") == 1, unsafe.stderr


def test_inode_flags_on_the_guests_own_file_system(backend: str, tmp_path: Path) -> None:
    """chattr +i/+a (CAP_LINUX_IMMUTABLE of the host's namespace) works on
    a loop device's file system of the machine and on a tmpfs the guest
    mounted itself, for the file's owner or a holder of CAP_FOWNER; not on
    the machine's other trees, nor for a user who neither owns the file
    nor holds the capability."""
    image = tmp_path / "flags.img"
    lines = _lines(
        backend,
        tmp_path,
        f"""
truncate -s 16M {image}
dev=$(losetup -f --show {image})
mkfs.ext4 -q "$dev"
mkdir /tmp/m
mount "$dev" /tmp/m
touch /tmp/m/f /tmp/m/g /tmp/h
chattr +i /tmp/m/f && lsattr /tmp/m/f | cut -c1-5
rm -f /tmp/m/f 2>&1 || true
chattr -i /tmp/m/f && rm /tmp/m/f && echo removed
chmod 666 /tmp/m/g
setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps=+linux_immutable \\
  --ambient-caps=+linux_immutable chattr +a /tmp/m/g 2>&1 || true
chattr +i /tmp/h 2>&1 || true
umount /tmp/m
losetup -d "$dev"
mkdir /tmp/t && mount -t tmpfs none /tmp/t && touch /tmp/t/f
chattr +i /tmp/t/f && rm -f /tmp/t/f 2>&1 || true
chattr -i /tmp/t/f && umount /tmp/t && echo "own tmpfs"
""",
        loops=1,
    )
    assert lines == [
        "----i",
        "rm: cannot remove '/tmp/m/f': Operation not permitted",
        "removed",
        "chattr: Operation not permitted while setting flags on /tmp/m/g",
        "chattr: Operation not permitted while setting flags on /tmp/h",
        "rm: cannot remove '/tmp/t/f': Operation not permitted",
        "own tmpfs",
    ]


def test_umount2_of_the_guests_mounts_as_natively(backend: str, tmp_path: Path) -> None:
    """MNT_EXPIRE marks, then unmounts (umld never touches the mount in
    between); MNT_FORCE|MNT_EXPIRE is EINVAL; MNT_FORCE unmounts."""
    image = tmp_path / "expire.img"
    code = tmp_path / "umount.py"
    code.write_text(
        """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def umount2(flags):
    r = libc.umount2(b"/tmp/m", flags)
    return "ok" if r == 0 else os.strerror(ctypes.get_errno())
def mount():
    assert libc.mount(sys.argv[1].encode(), b"/tmp/m", b"ext4", 0, None) == 0
mount()
print("expire", umount2(4), umount2(4))
mount()
print("force|expire", umount2(5))
print("force", umount2(1))
"""
    )
    lines = _lines(
        backend,
        tmp_path,
        f"""
truncate -s 16M {image}
dev=$(losetup -f --show {image})
mkfs.ext4 -q "$dev"
mkdir /tmp/m
python3 {code} "$dev"
losetup -d "$dev"
""",
        loops=1,
    )
    assert lines == [
        "expire Resource temporarily unavailable ok",
        "force|expire Invalid argument",
        "force ok",
    ]
