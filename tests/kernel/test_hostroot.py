"""A machine run by host root leaves no set-id program and no file
capabilities on the host.

tests/guest/setid.c (64-bit and -m32) tries every way: chmod, fchmod,
fchmodat, fchmodat2, open/openat/creat/mknod/mknodat/openat2 creating with
a set-id mode, and security.capability through setxattr, lsetxattr,
fsetxattr and setxattrat.  Natively (as root) every one works, so the test
can fail; in a root-run machine, into a writable --bind, each is refused
with EPERM and counted as denied, and everything else (a set-group-ID
mode without group execute, a plain mode, a user.* attribute) works as
natively.  An ordinary user's machine is not affected: it behaves as
natively.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUEST_SRC, User

pytestmark = pytest.mark.uses_ptrace

#: What a root-run machine refuses, and what is left then: the file's old
#: mode (chmod), no file (the creating calls), no capability.
REFUSED = {
    "chmod-4755": "mode=644",
    "chmod-2755": "mode=644",
    "chmod-6711": "mode=644",
    "fchmod-4755": "mode=644",
    "fchmodat-4755": "mode=644",
    "fchmodat2-4755": "mode=644",
    "open-4755": "mode=-",
    "openat-4755": "mode=-",
    "creat-4755": "mode=-",
    "mknod-4755": "mode=-",
    "mknodat-2755": "mode=-",
    "openat2-4755": "mode=-",
    "setxattr-cap": "cap=0",
    "lsetxattr-cap": "cap=0",
    "fsetxattr-cap": "cap=0",
    "setxattrat-cap": "cap=0",
}


#: openat2(2) with resolve flags fails with ENOSYS in a root-run machine,
#: whatever its mode: the kernel would read its open_how again after the
#: check (umld/core/syscalls/sys_file.py).
UNAVAILABLE = {"openat2-nosym-4755": "mode=-", "openat2-nosym-0640": "mode=-"}


@pytest.fixture(scope="module")
def setid_bins() -> Iterator[Path]:
    out = Path(f"/tmp/umld-setid-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(mode=0o755)
    src = str(GUEST_SRC / "setid.c")
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out / "setid"), src], check=True)
    m32 = subprocess.run(
        ["gcc", "-m32", "-O1", "-Wall", "-Werror", "-o", str(out / "setid32"), src],
        capture_output=True,
        text=True,
    )
    if m32.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        pytest.skip(f"cannot build 32-bit programs (gcc-multilib): {m32.stderr.strip()}")
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition("=")
        out[name] = rest
    return out


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _umld(backend: str, bind: Path, bins: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "umld",
        "run",
        f"--tracer={backend}",
        f"--bind={bind}",
        f"--bind={bins}:{bins}:ro",
        "--stats",
        "--",
    ]


@pytest.mark.parametrize("probe", ["setid", "setid32"])
def test_a_root_run_machine_leaves_no_set_id_file(
    backend: str, probe: str, setid_bins: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs host root")
    native_dir, guest_dir = tmp_path / "native", tmp_path / "guest"
    native_dir.mkdir()
    guest_dir.mkdir()
    native = _lines(_run([str(setid_bins / probe), str(native_dir)]).stdout)
    assert native["chmod-4755"] == "0 mode=4755" and native["setxattr-cap"] == "0 cap=1", native
    r = _run([*_umld(backend, tmp_path, setid_bins), str(setid_bins / probe), str(guest_dir)])
    guest = _lines(r.stdout)
    want = {k: (f"-1 {REFUSED[k]}" if k in REFUSED else v) for k, v in native.items()}
    want.update({k: f"-38 {v}" for k, v in UNAVAILABLE.items()})  # ENOSYS
    assert guest == want
    # Each refusal is a denied event (counted in the statistics).
    denied = re.search(r"(\d+) denied", r.stderr)
    assert denied is not None and int(denied.group(1)) == len(REFUSED) + len(UNAVAILABLE), r.stderr
    # Nothing set-id landed on the host.
    for f in guest_dir.iterdir():
        assert not f.stat().st_mode & 0o6000 or oct(f.stat().st_mode) == oct(0o102745), f


def test_an_ordinary_users_machine_is_as_native(
    backend: str, ordinary_user: User, setid_bins: Path
) -> None:
    """Without host root the rules do not apply (the calls do not even
    stop): the user's own set-id files are theirs, and file capabilities
    fail as natively (no CAP_SETFCAP)."""
    base = ordinary_user.work / f"setid-{backend}"
    for d in (base, base / "native", base / "guest"):
        d.mkdir()
        os.chown(d, ordinary_user.uid, ordinary_user.gid)
    probe = str(setid_bins / "setid")
    native = _run(ordinary_user.argv([probe, str(base / "native")])).stdout
    guest = _run(
        ordinary_user.argv([*_umld(backend, base, setid_bins), probe, str(base / "guest")])
    ).stdout
    assert _lines(guest) == _lines(native)
    assert _lines(native)["chmod-4755"] == "0 mode=4755"
