"""reboot(2) is the machine's (issue 17: LTP's reboot01 and reboot02;
sys_reboot.py): its root toggles Ctrl-Alt-Del, and a restart or halt ends
the machine, never the host, as a pid namespace's reboot ends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import User, run, umld_argv

pytestmark = pytest.mark.uses_ptrace

GUEST = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
MAGIC1, MAGIC2 = 0xFEE1DEAD, 672274793

def reboot(magic2, cmd):
    r = libc.syscall(169, MAGIC1, magic2, cmd, 0)
    return "ok" if r == 0 else os.strerror(ctypes.get_errno())

print("cad on", reboot(MAGIC2, 0x89ABCDEF))
print("cad off", reboot(MAGIC2, 0))
print("bad magic", reboot(1, 0))
print("bad command", reboot(MAGIC2, 100))
print("kexec", reboot(MAGIC2, 0x45584543))
sys.stdout.flush()
if os.getuid() == 0 and os.fork() == 0:
    os.setuid(65534)
    print("nobody", reboot(MAGIC2, 0x89ABCDEF))
    sys.stdout.flush()
    os._exit(0)
os.wait() if os.getuid() == 0 else None
if len(sys.argv) > 1:
    print("ending")
    sys.stdout.flush()
    reboot(MAGIC2, int(sys.argv[1], 0))
    print("still here")
"""


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    path = tmp_path / "reboot.py"
    path.write_text(GUEST)
    path.chmod(0o755)
    return path


def test_the_guests_root_owns_ctrl_alt_del(backend: str, guest: Path) -> None:
    got = run([*umld_argv(backend, "--uid=0"), "python3", str(guest)])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [
        "cad on ok",
        "cad off ok",
        "bad magic Invalid argument",
        "bad command Invalid argument",
        "kexec Invalid argument",
        "nobody Operation not permitted",
    ]


@pytest.mark.parametrize(("command", "status"), [("0xCDEF0123", 130), ("0x01234567", 129)])
def test_halt_and_restart_end_the_machine(
    backend: str, guest: Path, command: str, status: int, no_strays: str
) -> None:
    """Every guest process goes (a background sleeper named by the
    no_strays marker, which fails the test if it survives); the caller
    sees the first process killed by SIGINT (halt) or SIGHUP (restart)."""
    script = f"(exec -a {no_strays} sleep 300) & python3 {guest} {command}; echo after"
    got = run([*umld_argv(backend, "--uid=0"), "bash", "-c", script])
    assert got.returncode == status, got.stderr
    assert got.stdout.splitlines()[-1] == "ending"


def test_an_ordinary_users_guest_root_too(backend: str, ordinary_user: User) -> None:
    guest = ordinary_user.work / "reboot.py"
    guest.write_text(GUEST)
    guest.chmod(0o644)
    argv = ordinary_user.umld_argv(backend, "--uid=0")
    got = run([*argv, "python3", str(guest), "0xCDEF0123"], cwd=ordinary_user.work)
    assert got.returncode == 130, got.stderr
    assert got.stdout.splitlines()[:2] == ["cad on ok", "cad off ok"]
