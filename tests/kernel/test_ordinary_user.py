"""What an ordinary user gets: the machine's layout, disk images, and the
one-line errors of a host without user namespaces.

Everything here runs `umld run` as the ``ordinary_user`` (``umld-tester``,
created by the set-up when the tests run as root), with that user's files
in its own 0700 directory: the layout tests of test_sandbox.py that apply
to a user (binds, ramdisk sizes, a read-only root, the escape attempts
from an assembled root), and the user's ``--disk`` images, which fuse2fs
serves (umld/core/fusedisk.py): they persist, pass ``e2fsck -fn`` after
every run and after SIGKILL of umld, are one machine's at a time, fill
up with ENOSPC, and a bad one is one line; a named machine's home disk
under --read-only-root is one of them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, User, live_pids_with, run, wait_written
from tests.kernel.test_sandbox import (
    DIRFD_PROBE,
    FSTYPE,
    GUEST_PY,
    PY_PRELUDE,
    RACER,
    SECRET,
    HostWatch,
    Outside,
    _race_counts,
    assert_usage_error,
    snapshot,
)

pytestmark = pytest.mark.uses_ptrace


def _fuse2fs_missing() -> str | None:
    if not all(shutil.which(t) for t in ("fuse2fs", "mkfs.ext4", "e2fsck", "debugfs")):
        return "needs fuse2fs and e2fsprogs (make install)"
    if not os.access("/dev/fuse", os.F_OK):
        return "no /dev/fuse"
    return None


needs_fuse2fs = pytest.mark.skipif(_fuse2fs_missing() is not None, reason=str(_fuse2fs_missing()))


def as_user(user: User, argv: Sequence[str], *, timeout: float = 120, **kw: object) -> Result:
    return run(user.argv(list(argv)), timeout=timeout, **kw)


def umld_as(user: User, backend: str, *options: str) -> list[str]:
    """`umld run` as the user, with exactly these options."""
    return user.umld_argv(backend, *options)


@pytest.fixture
def home(ordinary_user: User, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory of the user's own (mode 0700), removed afterwards."""
    d = ordinary_user.work / f"{tmp_path.name}-{os.urandom(3).hex()}"
    d.mkdir()
    os.chown(d, ordinary_user.uid, ordinary_user.gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def owned_dir(user: User, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.uid, user.gid)
    return path


def owned_file(user: User, path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, user.uid, user.gid)
    return path


# -- binds, ramdisks, a read-only root ---------------------------------------------


def test_binds_as_an_ordinary_user(backend: str, ordinary_user: User, home: Path) -> None:
    user = ordinary_user
    rw = owned_dir(user, home / "rw")
    ro = owned_dir(user, home / "ro")
    owned_file(user, ro / "kept", "kept\n")
    before = snapshot(ro)
    code = """
rw, ro = sys.argv[1:3]
try_("rw-create", lambda: open(rw + "/new", "w").write("from the guest\\n"))
try_("ro-read", lambda: read(ro + "/kept"))
try_("ro-create", lambda: open(ro + "/new", "w"))
try_("ro-write", lambda: open(ro + "/kept", "w"))
try_("ro-unlink", lambda: os.unlink(ro + "/kept"))
"""
    r = run(
        [
            *umld_as(user, backend, f"--bind={rw}", f"--bind={ro}:{ro}:ro"),
            GUEST_PY,
            "-c",
            PY_PRELUDE + code,
            str(rw),
            str(ro),
        ]
    )
    assert r.stdout.splitlines() == [
        "rw-create OK 15",
        "ro-read OK 'kept\\n'",
        "ro-create EROFS",
        "ro-write EROFS",
        "ro-unlink EROFS",
    ], r
    # Written through at once, owned by the user.
    st = (rw / "new").stat()
    assert (rw / "new").read_text() == "from the guest\n"
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
    assert snapshot(ro) == before


def test_tmpfs_size_is_enforced_for_an_ordinary_user(ordinary_user: User) -> None:
    r = run(
        [
            *umld_as(ordinary_user, "c", "--tmpfs", "/tmp/scratch:size=1M"),
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/scratch/f bs=1M count=2; echo rc=$?; "
            "df -k /tmp/scratch | awk 'NR == 2 {print $2}'",
        ]
    )
    assert "No space left on device" in r.stderr, r
    assert r.stdout.split() == ["rc=1", "1024"], r


def user_root(user: User, path: Path) -> tuple[str, ...]:
    """An assembled root in the user's directory (as test_sandbox's)."""
    owned_dir(user, path)
    options = ["--root", str(path), "--bind=/usr:/usr:ro", "--bind=/etc:/etc:ro"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", name)
        if host.is_symlink():
            (path / name).symlink_to(os.readlink(host))
            os.lchown(path / name, user.uid, user.gid)
        elif host.is_dir():
            options.append(f"--bind=/{name}:/{name}:ro")
    return tuple(options)


def test_read_only_root_for_an_ordinary_user(ordinary_user: User, home: Path) -> None:
    root = home / "root"
    options = user_root(ordinary_user, root)
    for name in ("usr", "etc", "dev", "proc", "sys"):
        owned_dir(ordinary_user, root / name)
    before = snapshot(root)
    code = """
try_("create", lambda: open("/x", "w"))
try_("mkdir", lambda: os.mkdir("/d"))
try_("symlink", lambda: os.symlink("/etc", "/l"))
"""
    r = run([*umld_as(ordinary_user, "c", *options, "--read-only-root"), GUEST_PY, "-c",
             PY_PRELUDE + code])  # fmt: skip
    assert r.stdout.splitlines() == ["create EROFS", "mkdir EROFS", "symlink EROFS"], r
    assert snapshot(root) == before
    # And writable without it: the guest writes the user's directory.
    r = run([*umld_as(ordinary_user, "c", *options), "sh", "-c", "echo made > /made"])
    assert r.returncode == 0, r
    assert (root / "made").read_text() == "made\n"


# -- escape attempts from an assembled root ------------------------------------------


@pytest.fixture
def user_outside(ordinary_user: User, home: Path) -> Iterator[Outside]:
    """A directory of the user's own that no machine is given, with a
    secret the user could read natively."""
    d = owned_dir(ordinary_user, home / "outside")
    f = owned_file(ordinary_user, d / "secret", SECRET)
    os.chmod(f, 0o600)
    before = snapshot(d)
    watch = HostWatch(d)
    try:
        yield Outside(d, f, watch, before)
        Outside(d, f, watch, before).assert_untouched()
    finally:
        watch.close()


def test_escapes_from_a_root_as_an_ordinary_user(
    backend: str, ordinary_user: User, home: Path, user_outside: Outside
) -> None:
    """`..` chains, /proc/*/root, symlinks and hard links from an
    assembled root: the secret the user can read natively stays out of
    reach of the user's guest."""
    user = ordinary_user
    root = home / "root"
    options = user_root(user, root)
    secret = str(user_outside.file)
    native = as_user(user, ["cat", secret])
    assert native.stdout == SECRET, native  # the control: the user may read it
    user_outside.watch.events()
    code = """
libc = ctypes.CDLL(None, use_errno=True)
def linkat_follow(src, dst):  # linkat(2) with AT_SYMLINK_FOLLOW
    if libc.linkat(-100, src.encode(), -100, dst.encode(), 0x400) != 0:
        raise OSError(ctypes.get_errno(), "linkat")
secret = sys.argv[1]
try_("abs-dotdot", lambda: read("/../../.." + secret))
try_("relative", lambda: read("../" * 40 + secret.lstrip("/")))
try_("proc-self-root", lambda: read("/proc/self/root/../../.." + secret))
try_("proc-1-root", lambda: read("/proc/1/root" + secret))
try_("openat-dotdot", lambda: os.open("../../../.." + secret, os.O_RDONLY,
                                      dir_fd=os.open("/etc", os.O_RDONLY)))
os.symlink(secret, "/abs")
os.symlink("../" * 30 + secret.lstrip("/"), "/rel")
try_("symlink-abs", lambda: read("/abs"))
try_("symlink-rel", lambda: read("/rel"))
try_("hard-link", lambda: os.link(secret, "/hard"))
try_("hard-link-follow", lambda: linkat_follow("/abs", "/hard"))
"""
    r = run([*umld_as(user, backend, *options), GUEST_PY, "-c", PY_PRELUDE + code, secret])
    assert r.stdout.splitlines() == [
        "abs-dotdot ENOENT",
        "relative ENOENT",
        "proc-self-root ENOENT",
        "proc-1-root EACCES",
        "openat-dotdot ENOENT",
        "symlink-abs ENOENT",
        "symlink-rel ENOENT",
        "hard-link ENOENT",
        "hard-link-follow ENOENT",
    ], r


def test_symlink_race_and_dirfd_as_an_ordinary_user(
    ordinary_user: User, home: Path, user_outside: Outside
) -> None:
    """The symlink flipped between check and use, and a directory held
    open while the host moves it next to the secret."""
    user = ordinary_user
    root = home / "root"
    options = user_root(user, root)
    owned_file(user, root / "inside", "inside\n")
    owned_dir(user, root / "race")
    n = "5000"
    r = run([*umld_as(user, "c", *options), GUEST_PY, "-c", RACER, str(user_outside.file),
             "/inside", "/race", n])  # fmt: skip
    assert r.returncode == 0, r
    seen = _race_counts(r.stdout)
    assert "SECRET" not in seen and seen.get("inside", 0) > 0, seen
    owned_dir(user, root / "box" / "inner")
    owned_file(user, root / "box" / "inner" / "own", "own\n")
    p = subprocess.Popen(
        [*umld_as(user, "c", *options), GUEST_PY, "-c", PY_PRELUDE + DIRFD_PROBE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    moved = user_outside.dir / "inner"
    try:
        assert p.stdout.readline() == "ready\n"
        (root / "box" / "inner").rename(moved)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if moved.exists():
            moved.rename(root / "box" / "inner")
        user_outside.watch.events()  # the host's own move
    assert out.splitlines() == [
        "own OK b'own\\n'",
        "dotdot-secret ENOENT",
        "dotdot-dir ENOENT",
        "proc-fd ENOENT",
        "getcwd ENOENT",
        "cwd-secret ENOENT",
        "cwd-up ENOENT",
    ], err


# -- disk images ---------------------------------------------------------------------


def image_free(image: Path) -> bool:
    """Whether nobody holds the image's lock: umld and fuse2fs hold it
    until fuse2fs has flushed the image and exited."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def fuse2fs_of(image: Path) -> list[int]:
    """Live fuse2fs processes serving ``image``."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"fuse2fs") and os.fsencode(image) in argv:
            out.append(int(pid))
    return out


def fsck_clean(image: Path) -> None:
    r = run(["e2fsck", "-fn", str(image)])
    assert r.returncode == 0, r


def fs_state(image: Path) -> str:
    """The image's state, "clean" or "not clean" (dumpe2fs's Filesystem state)."""
    r = run(["dumpe2fs", "-h", str(image)])
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Filesystem state:"))
    return line.split(":", 1)[1].strip()


def debugfs_cat(image: Path, path: str) -> str:
    return run(["debugfs", "-R", f"cat {path}", str(image)]).stdout


@needs_fuse2fs
def test_disk_image_of_an_ordinary_user(backend: str, ordinary_user: User, home: Path) -> None:
    """Before: "disk images need root (the kernel's loop device)"."""
    image = home / "disk.img"
    disk = f"--disk={image}:/tmp/data:size=64M"
    script = (
        FSTYPE + "echo persistent > /tmp/data/hello.txt && fstype /tmp/data && "
        "stat -c '%u %g' /tmp/data /tmp/data/hello.txt && id -u && id -g"
    )
    r = run([*umld_as(ordinary_user, backend, disk), "sh", "-c", script])
    uid, gid = ordinary_user.uid, ordinary_user.gid
    assert r.stdout.split("\n") == [
        "fuse.ext4", f"{uid} {gid}", f"{uid} {gid}", str(uid), str(gid), ""
    ], r  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r
    st = image.stat()
    assert (st.st_size, st.st_uid) == (64 << 20, uid)
    # umld run returns once fuse2fs has flushed the image and let it go.
    assert image_free(image) and not fuse2fs_of(image)
    fsck_clean(image)
    assert fs_state(image) == "clean"
    assert debugfs_cat(image, "/hello.txt") == "persistent\n"
    r = run([*umld_as(ordinary_user, backend, disk), "sh", "-c", "cat /tmp/data/hello.txt"])
    assert (r.returncode, r.stdout) == (0, "persistent\n"), r
    assert image_free(image)
    fsck_clean(image)


@needs_fuse2fs
def test_named_machines_home_disk_under_a_read_only_root(
    backend: str, ordinary_user: User, home: Path
) -> None:
    """--read-only-root keeps a named machine's home on a disk image of
    its own (the default root keeps the host's home, copy-on-write): for
    an ordinary user, in XDG_DATA_HOME, served by fuse2fs."""
    user = ordinary_user
    data = owned_dir(user, home / "data")
    name = f"ro-{os.urandom(3).hex()}"

    def umld(*argv: str) -> Result:
        return run(
            user.argv([sys.executable, "-m", "umld", "run", f"--tracer={backend}",
                       f"--name={name}", "--read-only-root", "--", *argv],
                      XDG_DATA_HOME=str(data)),
            cwd="/",  # the caller's directory: /tmp is the machine's own ramdisk here
        )  # fmt: skip

    r = umld("sh", "-c", f"echo kept > {user.home}/f; touch /etc/umld-x 2>&1; "
             f"stat -c '%u %m' {user.home}/f")  # fmt: skip
    assert r.stdout.splitlines() == [
        "touch: cannot touch '/etc/umld-x': Read-only file system",
        f"{user.uid} {user.home}",
    ], r
    assert not (user.home / "f").exists()
    image = data / "umld" / "machines" / name / "home.img"
    assert image_free(image) and not fuse2fs_of(image)
    fsck_clean(image)
    assert debugfs_cat(image, "/f") == "kept\n"
    r = umld("cat", f"{user.home}/f")
    assert (r.returncode, r.stdout, r.stderr) == (0, "kept\n", ""), r


@needs_fuse2fs
def test_disk_image_of_an_ordinary_user_is_one_machines(
    ordinary_user: User, home: Path, no_strays: str
) -> None:
    image = home / "disk.img"
    disk = f"--disk={image}:/tmp/data:size=16M"
    first = subprocess.Popen(
        [*umld_as(ordinary_user, "c", disk), "bash", "-c",
         f"echo one > /tmp/data/f; exec -a {no_strays} sleep 1000"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not live_pids_with(no_strays):
            assert first.poll() is None and time.monotonic() < deadline, "guest did not start"
            time.sleep(0.02)
        second = run([*umld_as(ordinary_user, "c", disk), "sh", "-c", "echo two > /tmp/data/f"])
        assert_usage_error(second, 1, f"disk image {image} is in use by another machine")
    finally:
        first.terminate()
        first.wait(20)
    assert image_free(image) and not fuse2fs_of(image)
    fsck_clean(image)
    assert debugfs_cat(image, "/f") == "one\n"


@needs_fuse2fs
@pytest.mark.parametrize(
    ("size", "code", "message"),
    [
        ("size=lots", 2, "bad size 'lots'"),
        ("size=512k", 2, "a disk image is at least 1M"),
    ],
)
def test_bad_disk_size_is_one_line(
    ordinary_user: User, home: Path, size: str, code: int, message: str
) -> None:
    image = home / "disk.img"
    r = run([*umld_as(ordinary_user, "c", f"--disk={image}:/tmp/data:{size}"), "true"])
    assert_usage_error(r, code, message)
    assert not image.exists()


@needs_fuse2fs
def test_an_image_fuse2fs_refuses_is_one_line(ordinary_user: User, home: Path) -> None:
    """A file that is no ext4 image: fuse2fs's reason, in one line, and
    the file as it was."""
    image = owned_file(ordinary_user, home / "not-ext4.img", "")
    os.truncate(image, 2 << 20)
    r = run([*umld_as(ordinary_user, "c", f"--disk={image}:/tmp/data"), "true"])
    assert_usage_error(r, 125, f"cannot mount the disk image {image}: ")
    assert "Bad magic number in super-block" in r.stderr, r
    assert image.stat().st_size == 2 << 20 and image.read_bytes() == bytes(2 << 20)
    assert not fuse2fs_of(image) and image_free(image)


@needs_fuse2fs
def test_full_disk_image_gives_enospc_and_stays_its_size(ordinary_user: User, home: Path) -> None:
    image = home / "small.img"
    r = run(
        [
            *umld_as(ordinary_user, "c", f"--disk={image}:/tmp/data:size=8M"),
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/data/big bs=1M count=16 2>&1 | head -1; echo done",
        ]
    )
    assert "No space left on device" in r.stdout and r.stdout.endswith("done\n"), r
    assert image.stat().st_size == 8 << 20
    fsck_clean(image)


@needs_fuse2fs
def test_disk_image_of_an_ordinary_user_survives_sigkill_of_umld(
    ordinary_user: User, home: Path, no_strays: str
) -> None:
    """SIGKILL of umld kills every traced process (PTRACE_O_EXITKILL);
    fuse2fs is not traced and ends on its parent-death signal, SIGTERM:
    it flushes the image and marks it clean, and lets its lock go last."""
    image = home / "disk.img"
    writer = (
        f"exec -a {no_strays} sh -c 'i=0; while :; do "
        "head -c 262144 /dev/urandom > /tmp/data/f$((i % 50)); "
        "mkdir -p /tmp/data/d$((i % 7)); i=$((i + 1)); echo $i > /progress/n; done'"
    )
    progress = owned_dir(ordinary_user, home / "progress")
    disk = f"--disk={image}:/tmp/data:size=64M"
    p = subprocess.Popen(
        [*umld_as(ordinary_user, "c", disk, f"--bind={progress}:/progress"), "bash", "-c", writer],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not live_pids_with(no_strays):
        assert p.poll() is None and time.monotonic() < deadline, "guest did not start"
        time.sleep(0.02)
    wait_written(progress / "n", 10)  # killed while it writes, mid-file
    assert fuse2fs_of(image)
    p.kill()
    p.wait(10)
    deadline = time.monotonic() + 30
    while live_pids_with(no_strays) or fuse2fs_of(image) or not image_free(image):
        assert time.monotonic() < deadline, "the guest or fuse2fs outlived umld"
        time.sleep(0.05)
    fsck_clean(image)
    # Marked clean by fuse2fs's unmount (e2fsck -n passes on an image left
    # "not clean" too: that is what a killed fuse2fs leaves).
    assert fs_state(image) == "clean"
    r = run([*umld_as(ordinary_user, "c", f"--disk={image}:/tmp/data"), "sh", "-c",
             "ls /tmp/data | wc -l"])  # fmt: skip
    assert r.returncode == 0 and int(r.stdout) > 1, r
    assert r.stderr == "", r


# -- a host without user namespaces ----------------------------------------------------

_NO_USERNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
to_child, ready = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(99)
    os.write(ready[1], b"x")
    os.read(to_child[0], 1)
    # Root of this namespace sets its limit of nested user namespaces to 0
    # (per namespace, user_namespaces(7)), then becomes the user.
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.execv(argv[0], argv)
os.read(ready[0], 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 65536\n")
os.write(to_child[1], b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="maps the user's id into a user namespace of root's")
def test_no_user_namespaces_is_one_line(ordinary_user: User) -> None:
    """With user.max_user_namespaces 0 (set in a user namespace of the
    test's, with the ids as on the host), the user's umld names the
    setting."""
    user = ordinary_user
    env = {
        "HOME": str(user.home),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "XDG_RUNTIME_DIR": str(user.work / "run"),
    }
    argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
            sys.executable, "-m", "umld", "run", "--", "true"]  # fmt: skip
    r = run([sys.executable, "-c", _NO_USERNS, str(user.uid), str(user.gid), *argv])
    assert_usage_error(r, 125, "cannot create a user namespace: user.max_user_namespaces is 0")


# -- a host where FUSE is not the user's ----------------------------------------------

#: In a mount namespace of its own, a root-only file over /dev/fuse (as a
#: host whose /dev/fuse is 0600 has it), then the command.
_NO_FUSE = 'mount --bind "$1" /dev/fuse && shift && exec "$@"'


@pytest.mark.skipif(os.geteuid() != 0, reason="covers /dev/fuse in a mount namespace of root's")
@pytest.mark.parametrize("what", ["export", "daemon", "disk"])
def test_no_fuse_is_one_line(ordinary_user: User, home: Path, what: str) -> None:
    """Before (export, daemon): libfuse's "fuse: failed to open /dev/fuse"
    and "cannot mount the export at DIR: cannot mount the export at DIR:
    fuse_session_mount failed"; the daemon a traceback."""
    user = ordinary_user
    blocker = home / "no-fuse"
    blocker.touch(mode=0o600)
    mnt = owned_dir(user, home / "mnt")
    umld = [sys.executable, "-m", "umld"]
    argv, message = {
        "export": (
            [*umld, "run", f"--mount={mnt}", "--", "true"],
            f"cannot mount the export at {mnt}: FUSE needs /dev/fuse readable and writable",
        ),
        "daemon": (
            [*umld, "daemon", "--mount", str(mnt)],
            f"cannot mount the export at {mnt}: FUSE needs /dev/fuse readable and writable",
        ),
        "disk": (
            [*umld, "run", f"--disk={home}/d.img:/tmp/data", "--", "true"],
            "an ordinary user's disk images need FUSE, and /dev/fuse is not readable",
        ),
    }[what]
    r = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _NO_FUSE, "sh",
             str(blocker), *user.argv(argv)], cwd=home)  # fmt: skip
    assert_usage_error(r, 1, message)
    assert not (home / "d.img").exists()


def test_an_unwritable_runtime_directory_is_one_line(ordinary_user: User) -> None:
    """umld keeps a machine's generated files in XDG_RUNTIME_DIR (an
    ordinary user's): one it cannot write is one line, not a traceback."""
    ro = ordinary_user.work / "read-only-runtime"
    ro.mkdir()
    os.chown(ro, ordinary_user.uid, ordinary_user.gid)
    ro.chmod(0o555)
    argv = [sys.executable, "-m", "umld", "run", "-C", "/", "--", "true"]
    r = run(ordinary_user.argv(argv, XDG_RUNTIME_DIR=str(ro)))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r
    assert r.stderr.splitlines() == [
        f"umld: cannot create the machine's runtime directory in {ro}: Permission denied "
        "(set XDG_RUNTIME_DIR to a directory of yours)"
    ], r
