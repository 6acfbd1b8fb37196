"""The machine's IPC namespace and its /proc/sys (issue 17).

* Adversarial: the host's System V objects and POSIX message queues are
  not the guest's to see or attach (the machine has an IPC namespace of
  its own; before, a 0666 shared memory segment of the host was
  attachable from any guest).
* The sysctls of the machine's own namespaces (IPC; the network's when it
  has its own) are its root's to tune, for its machine only; the host's
  stay others' to it (EACCES), with --net host the network's too, and with
  --unsafe-host-ids /proc/sys is read-only (sandbox.c, mask_proc).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User, run, umld_argv

pytestmark = pytest.mark.uses_ptrace

IPC_PRIVATE_KEY = 0x554D4C44  # "UMLD"
IPC_RMID = 0
_libc = ctypes.CDLL(None, use_errno=True)

WRITE = """
import os, sys
for arg in sys.argv[1:]:
    path, value = arg.split("=")
    try:
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, value.encode())
        os.close(fd)
        print(path, "ok", open(path).read().split()[0])
    except OSError as e:
        print(path, os.strerror(e.errno))
"""

OWN = {
    "/proc/sys/kernel/msgmax": "4096",
    "/proc/sys/kernel/shmmni": "100",
    "/proc/sys/fs/mqueue/queues_max": "20",
}
HOSTS = {
    "/proc/sys/vm/drop_caches": "1",
    "/proc/sys/kernel/printk": "1",
    "/proc/sys/fs/pipe-max-size": "4096",
}
NET = "/proc/sys/net/ipv4/ip_default_ttl"


def _host_values() -> dict[str, str]:
    return {p: Path(p).read_text() for p in (*OWN, *HOSTS, NET) if p != "/proc/sys/vm/drop_caches"}


def _write(argv: list[str], values: dict[str, str]) -> list[str]:
    got = run([*argv, "python3", "-c", WRITE, *(f"{p}={v}" for p, v in values.items())])
    assert got.returncode == 0, got.stderr
    return got.stdout.splitlines()


@pytest.fixture
def host_objects() -> Iterator[tuple[int, int]]:
    """A System V shared memory segment and message queue of the host's,
    open to everyone (0666)."""
    shm = _libc.shmget(IPC_PRIVATE_KEY, 4096, 0o1666)
    msq = _libc.msgget(IPC_PRIVATE_KEY, 0o1666)
    assert shm >= 0 and msq >= 0, ctypes.get_errno()
    yield shm, msq
    _libc.shmctl(shm, IPC_RMID, None)
    _libc.msgctl(msq, IPC_RMID, None)


PROBE = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
key = {IPC_PRIVATE_KEY}
for name, found in (("shmget", libc.shmget(key, 0, 0)), ("msgget", libc.msgget(key, 0))):
    print(name, "found" if found >= 0 else os.strerror(ctypes.get_errno()))
print("ipcs", sum(1 for line in open("/proc/sysvipc/shm") if line.split()[0] == str(key)))
"""


def test_the_hosts_ipc_objects_are_not_the_guests(host_objects: tuple[int, int]) -> None:
    native = run(["python3", "-c", PROBE])
    assert native.stdout.splitlines() == ["shmget found", "msgget found", "ipcs 1"], native
    got = run([*umld_argv("c"), "python3", "-c", PROBE])
    assert got.stdout.splitlines() == [
        f"shmget {os.strerror(errno.ENOENT)}",
        f"msgget {os.strerror(errno.ENOENT)}",
        "ipcs 0",
    ], got.stderr


def test_the_machines_own_sysctls_are_its_roots() -> None:
    before = _host_values()
    lines = _write(umld_argv("c"), {**OWN, NET: "99"})
    assert lines == [f"{p} ok {v}" for p, v in {**OWN, NET: "99"}.items()]
    assert _host_values() == before


def test_the_hosts_sysctls_stay_the_hosts() -> None:
    before = _host_values()
    denied = os.strerror(errno.EACCES)
    assert _write(umld_argv("c"), HOSTS) == [f"{p} {denied}" for p in HOSTS]
    # The host's network namespace is the host's.
    assert _write(umld_argv("c", "--net", "host"), {NET: "99"}) == [f"{NET} {denied}"]
    assert _host_values() == before


def test_unsafe_host_ids_keeps_proc_sys_read_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("root only")
    lines = _write(umld_argv("c", "--unsafe-host-ids"), {"/proc/sys/kernel/msgmax": "4096"})
    assert lines == [f"/proc/sys/kernel/msgmax {os.strerror(errno.EROFS)}"]


def test_as_an_ordinary_user(ordinary_user: User) -> None:
    """The user's machine: its guest is the user (others' to the machine's
    sysctls, as natively), and with --uid 0 its root."""
    before = _host_values()
    values = [f"{p}={v}" for p, v in OWN.items()]
    denied = os.strerror(errno.EACCES)
    for options, want in (
        ((), [f"{p} {denied}" for p in OWN]),
        (("--uid", "0"), [f"{p} ok {v}" for p, v in OWN.items()]),
    ):
        argv = ordinary_user.umld_argv("c", *options)
        got = run([*argv, "python3", "-c", WRITE, *values], cwd=ordinary_user.work)
        assert got.stdout.splitlines() == want, got.stderr
    native = run(ordinary_user.argv(["python3", "-c", WRITE, *values]))
    assert native.stdout.splitlines() == [f"{p} {denied}" for p in OWN]
    # Its root is no root of the host's sysctls either.
    argv = ordinary_user.umld_argv("c", "--uid", "0")
    hosts = [f"{p}={v}" for p, v in HOSTS.items()]
    got = run([*argv, "python3", "-c", WRITE, *hosts], cwd=ordinary_user.work)
    assert got.stdout.splitlines() == [f"{p} {denied}" for p in HOSTS], got.stderr
    assert _host_values() == before
