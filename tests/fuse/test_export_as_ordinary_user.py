"""The live export of a machine run by an ordinary user (``umld-tester``).

A user's FUSE mount answers that user alone (no allow_other, fuse(4)):
not even root may read it.  So every access here is made by a separate
process running as the machine's user (``_FSOP``, one access per
process, under a time limit), never by the test process.  The live
names are checked as root too: umld sets them through the same helper
(``umld-sandbox names``) for both.

The representative scenarios of test_export_scenarios.py: the live
settings (names applied in the guest's UTS namespace; a bad value
refused, the old one kept), fs/ and export/ both ways, proc/, status,
events, ctl (pause, resume, halt) and the mount gone with the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import User
from tests.kernel.test_cow_root import Who

pytestmark = [pytest.mark.uses_fuse, pytest.mark.uses_ptrace]

#: One access to the mount, as the process running it: prints {"ok": ...}
#: or {"err": "ENAME"}.
_FSOP = r"""
import errno, json, os, sys
op, path, arg = sys.argv[1], sys.argv[2], (sys.argv[3:] or [""])[0]
try:
    if op == "read":
        with open(path, "rb") as f:
            out = f.read().decode(errors="replace")
    elif op == "write":
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, arg.encode())
        finally:
            os.close(fd)
        out = None
    elif op == "create":
        with open(path + ".tmp", "w") as f:
            f.write(arg)
        os.rename(path + ".tmp", path)
        out = None
    elif op == "stream":  # what a stream (events) holds so far
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        out = b"".join(chunks).decode(errors="replace")
    elif op == "list":
        out = sorted(os.listdir(path))
    else:
        raise SystemExit(f"bad op {op}")
    print(json.dumps({"ok": out}))
except OSError as e:
    print(json.dumps({"err": errno.errorcode.get(e.errno or 0, str(e.errno))}))
"""

#: Time limit of one access (a hung export fails the test, never hangs it).
ACCESS_TIMEOUT = 10.0


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def mounted(path: Path) -> bool:
    """Whether a mount sits at ``path`` (mountinfo: never touches it)."""
    target = str(path).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class Export:
    """One `umld run --mount` of ``who`` and its mount, read and written
    by processes of ``who``."""

    def __init__(self, who: Who, base: Path, cmd: Sequence[str], *options: str) -> None:
        self.who = who
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        who.own(self.mnt)
        self.log = base / "umld.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                who.argv([*who.umld(f"--mount={self.mnt}", *options), *cmd]),
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def op(self, op: str, rel: str, arg: str = "") -> dict[str, Any]:
        r = subprocess.run(
            self.who.argv([sys.executable, "-c", _FSOP, op, str(self.mnt / rel), arg]),
            capture_output=True,
            text=True,
            timeout=ACCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r
        got: dict[str, Any] = json.loads(r.stdout)
        return got

    def read(self, rel: str) -> str:
        got = self.op("read", rel)
        assert "ok" in got, (rel, got)
        return str(got["ok"])

    def write(self, rel: str, text: str) -> str | None:
        """None, or the errno's name."""
        got = self.op("write", rel, text)
        return None if "ok" in got else str(got["err"])

    def listing(self, rel: str) -> list[str]:
        got = self.op("list", rel)
        assert "ok" in got, (rel, got)
        return list(got["ok"])

    def wait_ready(self) -> None:
        """Until the export answers and the guest's program runs."""

        def up() -> bool:
            assert self.proc.poll() is None, f"umld ended:\n{self.output()}"
            return mounted(self.mnt) and bool(self.op("list", "proc").get("ok"))

        wait_for(up, "the export")

    def stop(self) -> bool:
        """End umld (SIGTERM, then SIGKILL); True if the mount went with it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not mounted(self.mnt):
            return True
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        return False


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> Who:
    return Who(request.param, ordinary_user)


@pytest.fixture
def export() -> Iterator[Callable[..., Export]]:
    """``export(who, cmd, *options)``: a started machine whose export is up,
    in a fresh directory of ``who`` under /var/tmp (the guest's cwd); each
    is ended at teardown, and its mount must be gone."""
    started: list[Export] = []
    made: list[Path] = []

    def start(who: Who, cmd: Sequence[str], *options: str) -> Export:
        d = Path("/var/tmp") / f"umld-export-{os.getpid()}-{os.urandom(4).hex()}"
        d.mkdir()
        made.append(d)
        who.own(d)
        e = Export(who, d, cmd, *options)
        started.append(e)
        e.wait_ready()
        return e

    try:
        yield start
    finally:
        left = [str(e.mnt) for e in started if not e.stop()]
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
    assert not left, f"mounts left behind (unmounted now): {left}"


#: The guest's names as its own programs see them, every 20 ms, in its
#: export/ (uname(2) through uname -n, and the UTS namespace's files).
_NAMES = (
    "while :; do "
    'echo "$(uname -n) $(cat /proc/sys/kernel/hostname) $(cat /proc/sys/kernel/domainname)" '
    "> /run/umld/export/names.new; mv /run/umld/export/names.new /run/umld/export/names; "
    "sleep 0.02; done"
)


def test_live_names(who: Who, export: Callable[..., Export]) -> None:
    """config/hostname and config/domainname, written while the guest
    runs, are what its uname(2) and /proc/sys/kernel read, with no
    warning.  Before (as an ordinary user): "guest hostname: Operation
    not permitted" in the log and the old name in the guest."""
    m = export(who, ["/bin/sh", "-c", _NAMES])
    first = wait_for(lambda: m.op("read", "export/names").get("ok"), "the guest's names")
    assert first.split()[:2] == ["vm", "vm"], first
    assert m.write("config/hostname", "live-host\n") is None
    assert m.write("config/domainname", "live.example\n") is None
    want = "live-host live-host live.example\n"
    wait_for(lambda: m.read("export/names") == want, "the guest to see its new names", 5)
    assert m.read("config/hostname") == "live-host\n"
    assert m.read("config/domainname") == "live.example\n"
    # A name sethostname(2) refuses (over 64 bytes) is refused, the old kept.
    assert m.write("config/hostname", "x" * 65 + "\n") == "EINVAL"
    assert m.read("export/names") == want
    assert m.proc.poll() is None
    log = m.output()
    assert "WARNING" not in log and "not permitted" not in log, log


_GUEST = r"""
echo from-guest > /run/umld/export/x
echo guest-file > /tmp/made-by-guest
while [ ! -e /tmp/from-host ] || [ ! -e /run/umld/export/y ]; do sleep 0.02; done
cat /tmp/from-host /run/umld/export/y > /run/umld/export/seen
i=0
while :; do i=$((i + 1)); echo $i > /run/umld/export/count; sleep 0.02; done
"""


def test_the_export_of_an_ordinary_users_machine(
    ordinary_user: User, export: Callable[..., Export]
) -> None:
    who = Who("user", ordinary_user)
    m = export(who, ["/bin/sh", "-c", _GUEST])
    if os.geteuid() == 0:
        # The user's alone (no allow_other): root is refused as well.
        with pytest.raises(PermissionError):
            os.listdir(m.mnt)
    assert m.read("status").startswith("name: "), m.read("status")
    # proc/: the guest's processes and their command lines.
    pids = m.listing("proc")
    cmdlines = [m.op("read", f"proc/{p}/cmdline").get("ok", "") for p in pids]
    assert any("/run/umld/export/x" in c for c in cmdlines), cmdlines
    # export/ and fs/, both ways.
    wait_for(lambda: m.op("read", "export/x").get("ok") == "from-guest\n", "export/x")
    assert m.read("fs/tmp/made-by-guest") == "guest-file\n"
    assert m.op("create", "fs/tmp/from-host", "host-file\n") == {"ok": None}
    assert m.op("create", "export/y", "host-export\n") == {"ok": None}
    wait_for(
        lambda: m.op("read", "export/seen").get("ok") == "host-file\nhost-export\n",
        "the guest to see the host's files",
    )
    # The event stream names what ran.
    events = str(m.op("stream", "events")["ok"])
    assert re.search(r"^\S+ exec pid=\d+ cat", events, re.M), events[-2000:]
    # Live settings: a bad value is refused and changes nothing.
    vcpus = m.read("config/vcpus")
    assert m.write("config/vcpus", "lots\n") == "EINVAL"
    assert m.read("config/vcpus") == vcpus
    assert m.write("ctl", "no such command\n") == "EINVAL"
    # ctl: pause holds the guest, resume lets it go on.

    def count() -> int:
        text = m.op("read", "export/count").get("ok") or "0"
        return int(text.strip() or 0)

    wait_for(lambda: count() > 0, "the guest's counter")
    assert m.write("ctl", "pause\n") is None

    def all_stopped() -> bool:
        states = [m.op("read", f"proc/{p}/status").get("ok", "") for p in m.listing("proc")]
        return bool(states) and all(re.search(r"^State:\t[Tt]", s, re.M) for s in states)

    wait_for(all_stopped, "every process of the machine to stop")
    held = count()
    assert m.write("ctl", "resume\n") is None
    wait_for(lambda: count() > held, "the guest to go on after resume")
    # halt: the machine ends, umld with it, and the mount goes.
    assert m.write("ctl", "halt\n") is None
    m.proc.wait(20)
    wait_for(lambda: not mounted(m.mnt), "the mount to go", 10)
    log = m.output()
    assert "Traceback" not in log, log
