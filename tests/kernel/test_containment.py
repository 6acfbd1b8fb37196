"""The guest is never host root, and nothing crosses the machine's edges.

Issue 9's findings, each as a probe that a guest runs for real: the ids
the guest has on the host, what it can do to host cgroups, host-global
kernel files, the caller's keyrings, umld's own exports, and the size of
its ramdisks.  Probes that touch host state use values that change
nothing (a file written back with what it holds, a victim process and a
cgroup the test creates), and most have a control that shows the probe
would succeed natively, or with --unsafe-host-ids (the old identity
map), so that each test can fail.

Tests run as root and, where it applies, as an ordinary user (the
``ordinary_user`` fixture).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, User, live_pids_with, run, umld_argv
from umld.core.ids import SLOT, machine_ranges

pytestmark = pytest.mark.uses_ptrace

PY = "/usr/bin/python3"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="what a root-run machine gets")


def guest_py(code: str, *options: str, backend: str = "c") -> Result:
    return run([*umld_argv(backend, *options), PY, "-c", code])


def wait_for(predicate: object, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def extents(text: str) -> list[tuple[int, int, int]]:
    """(inside, outside, count) rows of a uid_map or gid_map."""
    return [tuple(int(x) for x in line.split()) for line in text.splitlines() if line.strip()]  # type: ignore[misc]


@contextmanager
def sleeping_guest(
    umld: list[str], before: str = ""
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A machine whose first process runs the shell code ``before`` and then
    sleeps: yields the sleep's host pid (found by its marker) and the umld
    process, whose stdout is a pipe; kills the machine afterwards."""
    marker = f"umld-sleeper-{os.getpid()}-{os.urandom(3).hex()}"
    p = subprocess.Popen(
        [*umld, "bash", "-c", f"{before}exec -a {marker} sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: live_pids_with(marker), what="the guest's sleep")
        (pid,) = live_pids_with(marker)
        yield pid, p
    finally:
        p.kill()
        p.communicate()


# -- identity -------------------------------------------------------------------


@as_root
def test_root_run_guest_maps_only_its_own_subordinate_range(backend: str) -> None:
    r = guest_py(
        "print(open('/proc/self/uid_map').read(), end='|'); "
        "print(open('/proc/self/gid_map').read(), end='')",
        "--uid=0",
        backend=backend,
    )
    assert r.returncode == 0, r
    uid_map, gid_map = r.stdout.split("|")
    uids, gids = machine_ranges()
    for text, allowed in ((uid_map, uids), (gid_map, gids)):
        rows = extents(text)
        assert rows, text
        for _inside, outside, count in rows:
            assert outside != 0 and count <= SLOT, text
            assert allowed.start <= outside and outside + count <= allowed.start + allowed.size
    # And the host sees the guest's root as that unprivileged id (this
    # machine's range: another lease than the first machine's, maybe).
    with sleeping_guest(umld_argv(backend)) as (pid, _):
        status = Path(f"/proc/{pid}/status").read_text()
        own_map = extents(Path(f"/proc/{pid}/uid_map").read_text())
    uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    host_uid = int(uid_line.split()[1])
    assert host_uid == own_map[0][1], status
    assert uids.start <= host_uid < uids.start + uids.size


def test_ordinary_user_guest_is_that_user(ordinary_user: User) -> None:
    with sleeping_guest(ordinary_user.umld_argv("c", "--uid=0"), "id -u; ") as (pid, p):
        # Read from the host's user namespace: the host ids.
        maps = {n: extents(Path(f"/proc/{pid}/{n}").read_text()) for n in ("uid_map", "gid_map")}
        assert p.stdout is not None
        first = p.stdout.readline()
    assert first.strip() == "0"
    # --uid=0 without --gid: the guest's gid stays the user's.
    assert maps == {
        "uid_map": [(0, ordinary_user.uid, 1)],
        "gid_map": [(ordinary_user.gid, ordinary_user.gid, 1)],
    }


@as_root
def test_unsafe_host_ids_is_explicit_and_loud() -> None:
    r = run([*umld_argv("c", "--unsafe-host-ids"), "cat", "/proc/self/uid_map"])
    assert r.returncode == 0, r
    assert extents(r.stdout) == [(0, 0, 4294967295)]
    assert "--unsafe-host-ids" in r.stderr and "host's root" in r.stderr, r.stderr


@as_root
def test_guest_sees_the_callers_owners() -> None:
    """Host files show with the owners the caller sees (idmapped mounts),
    so a root-run guest reads what root could, and `ls -l /` reads as
    natively."""
    paths = [
        "/",
        "/etc/passwd",
        "/root",
        "/usr/bin/sudo" if Path("/usr/bin/sudo").exists() else "/tmp",
    ]
    code = "import os,sys; print([(os.stat(p).st_uid, os.stat(p).st_gid) for p in sys.argv[1:]])"
    native = run([PY, "-c", code, *paths])
    guest = run([*umld_argv("c"), PY, "-c", code, *paths])
    # /tmp is the guest's own ramdisk, owned by its root: the same ids.
    assert guest.stdout == native.stdout, (native, guest)
    r = run([*umld_argv("c"), "sh", "-c", "head -c1 /etc/shadow >/dev/null && ls /root >/dev/null"])
    assert r.returncode == 0, r


def test_binds_land_owned_by_the_caller_on_nosuid_nodev(
    tmp_path: Path, ordinary_user: User
) -> None:
    as_user = os.geteuid() != 0
    shared = ordinary_user.work / "shared" if not as_user else tmp_path / "shared"
    shared.mkdir()
    if os.geteuid() == 0:
        os.chown(shared, ordinary_user.uid, ordinary_user.gid)
    script = "touch /mnt/made && awk '$5 == \"/mnt\" {print $6}' /proc/self/mountinfo"
    r = run([*ordinary_user.umld_argv("c", "--uid=0", f"--bind={shared}:/mnt"), "sh", "-c", script])
    assert r.returncode == 0, r
    assert {"nosuid", "nodev"} <= set(r.stdout.strip().split(",")), r
    st = (shared / "made").stat()
    assert (st.st_uid, st.st_gid) == (ordinary_user.uid, ordinary_user.gid)
    if os.geteuid() == 0:
        root_dir = tmp_path / "rootshared"
        root_dir.mkdir()
        r = run([*umld_argv("c", "--uid=0", f"--bind={root_dir}:/mnt"), "sh", "-c", script])
        assert r.returncode == 0, r
        assert {"nosuid", "nodev"} <= set(r.stdout.strip().split(",")), r
        st = (root_dir / "made").stat()
        assert (st.st_uid, st.st_gid) == (0, 0)


def _writable_root_sysfs_file() -> Path | None:
    for p in (
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/mm/transparent_hugepage/defrag",
        "/sys/kernel/mm/ksm/run",
    ):
        path = Path(p)
        try:
            if path.stat().st_uid == 0 and path.stat().st_mode & 0o200:
                return path
        except OSError:
            continue
    return None


# Writes back what the file holds (the bracketed choice, or the number).
_WRITE_BACK = """
import re, sys
path = sys.argv[1]
text = open(path).read()
m = re.search(r"\\[(\\w+)\\]", text)
value = m.group(1) if m else text.strip()
try:
    with open(path, "w") as f:
        f.write(value)
    print("written")
except OSError as e:
    print("refused", e.errno)
"""


@as_root
def test_root_owned_sysfs_file_given_writable_stays_unchangeable(tmp_path: Path) -> None:
    """Even through a read-write bind of /sys, the guest's root is not
    the owner of root's files: it sees them and cannot change them."""
    target = _writable_root_sysfs_file()
    if target is None:
        pytest.skip("no root-writable sysfs attribute here")
    native = run([PY, "-c", _WRITE_BACK, str(target)])
    if native.stdout.strip() != "written":
        pytest.skip(f"root cannot write {target} back here: {native}")
    guest = run(
        [
            *umld_argv("c", "--bind=/sys:/mnt"),
            PY,
            "-c",
            _WRITE_BACK,
            f"/mnt{str(target)[4:]}",
        ]
    )
    assert guest.stdout.split() == ["refused", "13"], guest  # EACCES
    control = run(
        [*umld_argv("c", "--unsafe-host-ids", "--bind=/sys:/mnt"), PY, "-c", _WRITE_BACK,
         f"/mnt{str(target)[4:]}"]
    )  # fmt: skip
    assert control.stdout.strip() == "written", control


# -- cgroups --------------------------------------------------------------------


def _unified() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4])
    return None


@pytest.fixture
def victim_cgroup() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A v2 cgroup made by the test, with a sleeping victim process in it."""
    unified = _unified()
    if os.geteuid() != 0 or unified is None:
        pytest.skip("needs root and a cgroup2 hierarchy")
    own = next(
        ln.split(":", 2)[2]
        for ln in Path("/proc/self/cgroup").read_text().splitlines()
        if ln.startswith("0::")
    )
    cg = unified / own.lstrip("/") / f"umld-victim-{os.getpid()}"
    cg.mkdir()
    victim = subprocess.Popen(["sleep", "300"])
    (cg / "cgroup.procs").write_text(str(victim.pid))
    try:
        yield cg, victim
    finally:
        victim.kill()
        victim.wait()
        deadline = time.monotonic() + 5
        while True:
            try:
                cg.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


_KILL_PROBE = """
import os, sys, subprocess
paths = sys.argv[1:]
out = []
for p in paths:
    try:
        with open(p, "w") as f:
            f.write("1")
        out.append("killed")
    except OSError as e:
        out.append(f"refused-{e.errno}")
# Its own cgroup2 view: a cgroup namespace rooted at the machine.
os.makedirs("/tmp/cg", exist_ok=True)
r = subprocess.run(["mount", "-t", "cgroup2", "none", "/tmp/cg"], capture_output=True)
out.append("mounted" if r.returncode == 0 else "nomount")
if r.returncode == 0:
    skip = ("cgroup.", "cpu", "memory", "io", "pids")
    out.append(",".join(sorted(e for e in os.listdir("/tmp/cg") if not e.startswith(skip))) or "-")
print(" ".join(out))
"""


def test_cgroup_kill_of_a_host_process_is_out_of_reach(
    victim_cgroup: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    cg, victim = victim_cgroup
    unified = _unified()
    assert unified is not None
    rel = cg.relative_to(unified)
    paths = [str(cg / "cgroup.kill"), f"/mnt/{rel}/cgroup.kill"]
    r = run([*umld_argv("c", f"--bind={unified}:/mnt", "--uid=0"), PY, "-c", _KILL_PROBE, *paths])
    words = r.stdout.split()
    assert r.returncode == 0, r
    # Through the host's read-only /sys: EROFS; through a read-write
    # bind: EACCES, the cgroup belongs to a host id the guest lacks.
    assert words[:2] == ["refused-30", "refused-13"], r
    # Its own cgroup2 mount shows only its own subtree: no host cgroup.
    assert words[2] == "mounted" and f"umld-victim-{os.getpid()}" not in words[3], r
    assert victim.poll() is None, "the host's victim was killed"
    # Control: the old identity map (guest root = host root) kills it.
    control = run(
        [
            *umld_argv("c", f"--bind={unified}:/mnt", "--unsafe-host-ids"),
            PY,
            "-c",
            _KILL_PROBE,
            paths[1],
        ]
    )
    assert control.stdout.split()[0] == "killed", control
    victim.wait(10)


@as_root
def test_machine_runs_in_its_own_cgroups_with_the_default_process_limit() -> None:
    with sleeping_guest(umld_argv("c"), "cat /proc/self/cgroup; ") as (pid, p):
        host_view = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert p.stdout is not None
        inside = [p.stdout.readline().strip() for _ in host_view]
    own = {
        ln.split(":")[1]: ln.split(":", 2)[2]
        for ln in Path("/proc/self/cgroup").read_text().splitlines()
    }
    pids_line = next(ln for ln in host_view if ln.split(":")[1] == "pids")
    path = pids_line.split(":", 2)[2]
    assert Path(path).name.startswith("umld-") and path != own["pids"], host_view
    pids_max = Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.max"
    if pids_max.exists():
        assert pids_max.read_text().strip() == "4096"
    # Inside, its cgroup namespace: every hierarchy at its root.
    assert all(line.endswith(":/") for line in inside), inside


_FORKS = """
import os, time
made = 0
for _ in range(30):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    made += 1
print(made)
"""


def _nproc_dir(tmp: Path, owner: User | None) -> Path:
    d = tmp / "cfg"
    (d / "limits").mkdir(parents=True)
    (d / "limits" / "nproc").write_text("8\n")
    if owner is not None and os.geteuid() == 0:
        for p in (d, d / "limits", d / "limits" / "nproc"):
            os.chown(p, owner.uid, owner.gid)
    return d


def test_config_dir_limits_hold_from_the_first_instruction(tmp_path: Path) -> None:
    cfg = _nproc_dir(tmp_path, None)
    r = run([*umld_argv("c", f"--config-dir={cfg}"), PY, "-c", _FORKS], timeout=60)
    assert r.returncode == 0, r
    # 8 tasks at most: the guest's first process and fewer than 8 children.
    assert 0 < int(r.stdout) < 8, r


def test_config_dir_limits_hold_for_an_ordinary_user(ordinary_user: User) -> None:
    cfg = _nproc_dir(ordinary_user.work / "nproc", ordinary_user)
    r = run([*ordinary_user.umld_argv("c", f"--config-dir={cfg}"), PY, "-c", _FORKS], timeout=60)
    assert r.returncode == 0, r
    assert 0 < int(r.stdout) < 8, r


# -- host-global kernel files ----------------------------------------------------

MASKED = [
    "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/sched_debug",
    "/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip

_SHOW = """
import os, sys
for p in sys.argv[1:]:
    if os.path.isdir(p):
        print(p, len(os.listdir(p)))
    else:
        try:
            with open(p, "rb") as f:
                print(p, len(f.read(4096)))
        except OSError as e:
            print(p, "err", e.errno)
"""


def _masked_probe(r: Result) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in r.stdout.splitlines()}


def test_host_global_proc_and_sys_files_are_masked(ordinary_user: User) -> None:
    present = [p for p in MASKED if os.path.exists(p)]
    native = _masked_probe(run([PY, "-c", _SHOW, *present]))
    guests = [run([*umld_argv("c"), PY, "-c", _SHOW, *present])] if os.geteuid() == 0 else []
    guests.append(run([*ordinary_user.umld_argv("c"), PY, "-c", _SHOW, *present]))
    shown_natively = [p for p in present if native.get(p) not in ("0", None)]
    assert shown_natively, native  # the probe can tell
    for g in guests:
        seen = _masked_probe(g)
        for p in present:
            assert seen.get(p) in ("0", "err 13", "err 1", "err 2"), (p, seen.get(p), g)


@as_root
def test_proc_irq_write_back_is_refused() -> None:
    if not os.path.exists("/proc/irq/default_smp_affinity"):
        pytest.skip("no /proc/irq here")
    irq = ["/proc/irq/default_smp_affinity"]
    native = run([PY, "-c", _WRITE_BACK, *irq])
    assert native.stdout.strip() == "written", native
    guest = run([*umld_argv("c"), PY, "-c", _WRITE_BACK, *irq])
    assert guest.stdout.split() == ["refused", "30"], guest  # EROFS


# -- keyrings -----------------------------------------------------------------------

_KEYS = """
set -u
echo "session:$(keyctl show @s 2>&1 | grep -c umld-secret)"
echo "print:$(keyctl print "$KEY" >/dev/null 2>&1 && echo read || echo refused)"
echo "search:$(keyctl search @s user umld-secret >/dev/null 2>&1 && echo found || echo none)"
echo "user:$(keyctl search @u user umld-user-secret >/dev/null 2>&1 && echo found || echo none)"
echo "uprint:$(keyctl print "$UKEY" >/dev/null 2>&1 && echo read || echo refused)"
"""


def _keys_session(inner: list[str], user: User | None) -> Result:
    """Run ``inner`` (with $KEY, $UKEY set) in a new host session keyring
    that holds a key, with another key in the user keyring.  Root's keys
    are made readable by all of root's processes (a root-run guest is not
    root's user); an ordinary user's keep the default permissions (a guest
    of an ordinary user is that user)."""
    # Permissions are set while the keys are possessed (in the session
    # keyring), then the second moves to the user keyring.
    perm = "keyctl setperm $KEY 0x3f3f0000 && keyctl setperm $UKEY 0x3f3f0000 && "
    script = (
        "KEY=$(keyctl add user umld-secret s3cret @s) && "
        "UKEY=$(keyctl add user umld-user-secret s3cret @s) && "
        + (perm if user is None else "")
        + "keyctl link $UKEY @u && keyctl unlink $UKEY @s && "
        + 'export KEY UKEY && "$@"; rc=$?; keyctl unlink $UKEY @u >/dev/null; exit $rc'
    )
    argv = ["keyctl", "session", "-", "sh", "-c", script, "sh", *inner]
    return run(user.argv(argv) if user is not None else argv)


def test_guest_has_its_own_session_keyring(ordinary_user: User) -> None:
    if subprocess.run(["which", "keyctl"], capture_output=True).returncode != 0:
        pytest.skip("keyctl (keyutils) is not installed")
    native = _keys_session(["sh", "-c", _KEYS], None)
    assert "session:1" in native.stdout and "print:read" in native.stdout, native
    runs = [(None, [*umld_argv("c"), "sh", "-c", _KEYS])] if os.geteuid() == 0 else []
    umld_run = [sys.executable, "-m", "umld", "run", "--tracer=c", "--"]
    runs.append((ordinary_user, [*umld_run, "sh", "-c", _KEYS]))
    for user, inner in runs:
        r = _keys_session(inner, user)
        assert r.returncode == 0, r
        out = dict(line.split(":", 1) for line in r.stdout.split())
        assert out["session"] == "0" and out["search"] == "none" and out["user"] == "none", (
            user,
            r,
        )
        assert out["print"] == "refused" and out["uprint"] == "refused", (user, r)


# -- umld's exports ------------------------------------------------------------------


def _mounted(path: Path) -> bool:
    return any(
        line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def _export_dir(user: User | None) -> Path:
    base = Path("/var/tmp") / f"umld-exports-{os.getpid()}-{os.urandom(3).hex()}"
    base.mkdir(mode=0o755)
    if user is not None and os.geteuid() == 0:
        os.chown(base, user.uid, user.gid)
    return base


@pytest.mark.uses_fuse
@pytest.mark.parametrize("who", ["root", "user"])
def test_exports_are_invisible_inside_machines(who: str, ordinary_user: User) -> None:
    from tests.fuse.conftest import fuse_unavailable

    if who == "root" and os.geteuid() != 0:
        pytest.skip("root only")
    user = ordinary_user if who == "user" else None
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    base = _export_dir(user)
    first, second = base / "first", base / "second"

    def umld(*options: str) -> list[str]:
        if user is None:
            return [sys.executable, "-m", "umld", "run", *options, "--"]
        return user.umld_argv("c", *options)

    a = subprocess.Popen(
        [*umld(f"--mount={first}"), "sh", "-c", f"ls -A {first} {base}/first; sleep 30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: _mounted(first), what="the first export")
        r = run([*umld(f"--mount={second}"), "sh", "-c", f"ls -A {first}; echo =; ls -A {second}"])
        assert r.returncode == 0, r
        assert r.stdout.split() == ["="], r  # both mount points empty
    finally:
        a.send_signal(signal.SIGTERM)
        out, _ = a.communicate(timeout=30)
        for d in (first, second, base):
            try:
                d.rmdir()
            except OSError:
                pass
    # The machine's own export, looked at from inside: nothing.
    assert "status" not in out and "config" not in out, out


# -- ramdisks ---------------------------------------------------------------------------


def _page(n: float) -> int:
    return int(n) - int(n) % 4096


def test_default_ramdisks_are_bounded_by_the_machines_memory() -> None:
    g = 1 << 30
    # The copy-on-write root: what the guest writes over the host's tree
    # (a statfs of / is its upper layer's) takes at most a quarter.
    r = run([*umld_argv("c", "--memory=1G"), "sh", "-c", "df -B1 --output=size / /run /dev/shm"])
    assert r.returncode == 0, r
    sizes = [int(x) for x in r.stdout.split()[1:]]
    assert sizes == [_page(0.25 * g), 32 << 20, _page(0.1 * g)], r
    # The read-only host root: ramdisks on /tmp and $HOME instead.
    r = run(
        [
            *umld_argv("c", "--memory=1G", "--read-only-root", "-C", "/"),
            "sh",
            "-c",
            'df -B1 --output=size /tmp /run /dev/shm "$HOME" | tail -n +2',
        ]
    )
    assert r.returncode == 0, r
    sizes = [int(x) for x in r.stdout.split()]
    assert sizes == [_page(0.2 * g), 32 << 20, _page(0.1 * g), _page(0.2 * g)], r
    assert sum(sizes) <= 0.55 * g
    # Full is full: ENOSPC, not the host's memory; nothing on the host.
    for layout in ((), ("--read-only-root", "-C", "/"), ("--upper-size=8M",)):
        big = f"/tmp/umld-big-{os.getpid()}"
        r = run(
            [*umld_argv("c", "--memory=64M", *layout), "sh", "-c",
             f"head -c 100M /dev/zero > {big}; echo $?"]
        )  # fmt: skip
        assert "No space left on device" in r.stderr and r.stdout.strip() == "1", (layout, r)
        assert not os.path.exists(big)


@as_root
def test_ramdisk_pages_are_charged_to_the_machine() -> None:
    fill = "head -c 64M /dev/zero > /tmp/fill && "
    with sleeping_guest(umld_argv("c"), fill) as (pid, _):
        mem = None
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrl, path = line.split(":", 2)
            if "memory" in ctrl.split(","):
                mem = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.usage_in_bytes"
            elif ctrl == "" and mem is None:
                unified = _unified()
                if unified is not None:
                    mem = unified / path.lstrip("/") / "memory.current"
        if mem is None or not mem.exists():
            pytest.skip("no memory controller here")
        assert int(mem.read_text()) >= 64 << 20


# -- fake root keeps working -----------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("mkfs.ext4", "debugfs")),
    reason="disk images need root and e2fsprogs",
)
def test_chown_persists_on_the_disk_image_with_guest_ids(tmp_path: Path) -> None:
    """Ids written by the guest's fake root land on its disk image as the
    guest's ids (an idmapped mount), not as the machine's host range, so
    they read back the same in the next run whatever range it gets."""
    from tests.kernel.test_sandbox import wait_detached

    image = tmp_path / "disk.img"
    disk = f"--disk={image}:/mnt:size=16M"
    r = run([*umld_argv("c", disk), "sh", "-c", "touch /mnt/f && chown 1234:5678 /mnt/f"])
    assert r.returncode == 0, r
    # Another machine holds a range meanwhile: the next run gets another.
    holder = subprocess.Popen(
        [*umld_argv("c"), "sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        wait_detached(image)
        r = run([*umld_argv("c", disk), "stat", "-c", "%u:%g", "/mnt/f"])
        assert r.stdout == "1234:5678\n", r
    finally:
        holder.kill()
        holder.wait()
    wait_detached(image)
    r = run(["debugfs", "-R", "stat /f", str(image)])
    assert "User:  1234" in r.stdout and "Group:  5678" in r.stdout, r


# -- what held in the review keeps holding --------------------------------------------

_HELD = r"""
import ctypes, errno, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def err():
    return errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())

# ptrace of the machine's init and of the first process's parent.
out["ptrace"] = "ok" if libc.ptrace(16, 1, 0, 0) == 0 else err()   # PTRACE_ATTACH
# process_vm_writev into init.
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x400000, 8)
r = libc.process_vm_writev(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["process_vm_writev"] = "ok" if r >= 0 else err()
# setns into init's mount namespace (built by the more privileged sandbox).
try:
    ns = os.open("/proc/1/ns/mnt", os.O_RDONLY)
    out["setns"] = "ok" if libc.setns(ns, 0) == 0 else err()
except OSError as e:
    out["setns"] = errno.errorcode[e.errno]
fd = os.open("/", os.O_RDONLY)
# open_by_handle_at needs CAP_DAC_READ_SEARCH in the initial namespace.
class fh(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("h", ctypes.c_char * 128)]
h = fh(8, 1)
out["open_by_handle_at"] = "ok" if libc.open_by_handle_at(fd, ctypes.byref(h), 0) >= 0 else err()
# A classic chroot escape ends at the guest's root, not the host's.
os.makedirs("/tmp/jail", exist_ok=True)
keep = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")
os.fchdir(keep)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
out["chroot"] = "guest" if open("/proc/1/cmdline", "rb").read().startswith(b"umld-init") else "host"
print(" ".join(f"{k}={v}" for k, v in out.items()), flush=True)
# Last, kill(-1): every process it may signal, which are the guest's (this
# one included).
os.kill(-1, signal.SIGKILL)
"""


@pytest.mark.parametrize("who", ["root", "user"])
def test_checks_that_held_keep_holding(who: str, ordinary_user: User, tmp_path: Path) -> None:
    if who == "root" and os.geteuid() != 0:
        pytest.skip("root only")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        if who == "root":
            argv = [*umld_argv("c", "--uid=0"), PY, "-c", _HELD]
        else:
            argv = [*ordinary_user.umld_argv("c", "--uid=0"), PY, "-c", _HELD]
        r = run(argv)
        # kill(-1, SIGKILL) killed the probe itself too: its output stands.
        fields = dict(w.split("=", 1) for w in r.stdout.split())
        assert fields == {
            "ptrace": "EPERM",
            "process_vm_writev": "EPERM",
            "setns": fields.get("setns") if fields.get("setns") in ("EPERM", "EACCES") else "?",
            "open_by_handle_at": "EPERM",
            "chroot": "guest",
        }, r
        assert victim.poll() is None, "kill(-1) in a guest reached a host process"
    finally:
        victim.kill()
        victim.wait()


# -- no file capability can reach the host ---------------------------------------


@as_root
def test_root_run_guest_cannot_get_a_capability_onto_the_host() -> None:
    """CAP_SETFCAP is out of a root-run guest's bounding set: it can set no
    security.capability (whatever a race on guest memory would let past
    the seccomp checks), nor map a nested user namespace's root onto its
    own root (which could)."""
    r = run(
        [
            *umld_argv("c", "--uid=0"),
            "sh",
            "-c",
            "grep CapBnd /proc/self/status; "
            "unshare --user --map-root-user true 2>/dev/null; echo nested=$?; "
            "setpriv --reuid=1000 --regid=1000 --clear-groups "
            "unshare --user --map-root-user true; echo other=$?",
        ]
    )
    bounding, nested, other = r.stdout.split("\n")[:3]
    assert not int(bounding.split()[1], 16) >> 31 & 1, r  # CAP_SETFCAP
    # The guest's root may not map a nested root onto itself; its other
    # users may (no idmap turns their ids into the host's root).
    assert (nested, other) == ("nested=1", "other=0"), r
    native = run(["unshare", "--user", "--map-root-user", "true"])
    assert native.returncode == 0, native


@pytest.mark.uses_fuse
def test_sctp_is_refused_in_a_live_machine(tmp_path: Path) -> None:
    from tests.fuse.conftest import fuse_unavailable

    if fuse_unavailable():
        pytest.skip(str(fuse_unavailable()))
    mnt = tmp_path / "m"
    code = (
        "import socket, sys\n"
        "for t, p in ((socket.SOCK_SEQPACKET, 0), (socket.SOCK_STREAM, 132), "
        "(socket.SOCK_SEQPACKET, 132)):\n"
        "    try:\n"
        "        socket.socket(socket.AF_INET, t, p); print('made')\n"
        "    except OSError as e:\n"
        "        print(e.errno)\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); print('unix')\n"
        "sys.stdout.flush(); import time; time.sleep(30)\n"
    )
    p = subprocess.Popen(
        [*umld_argv("c", f"--mount={mnt}"), PY, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        lines = [p.stdout.readline().strip() for _ in range(4)]
        assert lines == ["93", "93", "93", "unix"], (lines, p)  # EPROTONOSUPPORT
        # events is a stream (tail -f): read what is there.
        fd = os.open(mnt / "events", os.O_RDONLY)
        try:
            events = b""
            while events.count(b"socket: SCTP") < 3:
                chunk = os.read(fd, 65536)
                assert chunk, events
                events += chunk
        finally:
            os.close(fd)
    finally:
        # SIGTERM: umld unmounts its export on the way out.
        p.terminate()
        p.communicate(timeout=30)
