"""The default root: the host's tree, copy-on-write (issue 11).

Every test runs as root and as an ordinary user (``umld-tester``, made by
the ``ordinary_user`` fixture), in fresh directories outside the test
session's bound temporary directory (under /var/tmp and the user's home),
so that what the guest sees there comes through the overlays alone; the
host side is compared before and after (content, modes, times) and never
changes unless a --bind says so.  Reads of a machine's export are made by a
separate process running as the machine's user.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import Result, User, run
from tests.kernel.test_sandbox import PY_PRELUDE, HostWatch, snapshot

pytestmark = pytest.mark.uses_ptrace

GUEST_PY = "/usr/bin/python3"


class Who:
    """Runs umld and other programs as root or as the ordinary user."""

    def __init__(self, who: str, user: User) -> None:
        if who == "root" and os.geteuid() != 0:
            pytest.skip("root only")
        self.name = who
        self.user = user if who == "user" else None

    @property
    def home(self) -> Path:
        return self.user.home if self.user is not None else Path(os.path.expanduser("~"))

    def argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.user is None else self.user.argv(argv)

    def umld(self, *options: str) -> list[str]:
        """``umld run`` (to give to :meth:`run` or :meth:`argv`)."""
        return [sys.executable, "-m", "umld", "run", "--tracer=c", *options, "--"]

    def run(self, argv: Sequence[str], cwd: Path | None = None, timeout: float = 120) -> Result:
        return run(self.argv(argv), cwd=cwd, timeout=timeout)

    def own(self, path: Path) -> Path:
        """Give ``path`` (and what is below) to this identity."""
        if self.user is not None:
            for p in [path, *path.rglob("*")]:
                os.lchown(p, self.user.uid, self.user.gid)
        return path


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, ordinary_user: User) -> Who:
    return Who(request.param, ordinary_user)


@pytest.fixture
def fresh(who: Who) -> Iterator[Callable[[str], Path]]:
    """``fresh(where)``: a new directory under /var/tmp or the home of
    ``who``, owned by it, removed afterwards."""
    made: list[Path] = []

    def make(where: str) -> Path:
        base = Path("/var/tmp") if where == "var-tmp" else who.home
        d = base / f"umld-cow-{os.getpid()}-{os.urandom(4).hex()}"
        d.mkdir()
        made.append(d)
        return who.own(d)

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


MAKEFILE = "out.txt: in.txt\n\tcat in.txt > out.txt\n\techo built >> out.txt\n"


@pytest.mark.parametrize("where", ["var-tmp", "home"])
def test_make_where_you_are(who: Who, fresh: Callable[[str], Path], where: str) -> None:
    """`umld run -- make` in a project directory builds there; the guest
    sees the result, the host's directory stays as it was; with --bind
    "$PWD" the build's output reaches the host."""
    d = fresh(where)
    (d / "Makefile").write_text(MAKEFILE)
    (d / "in.txt").write_text("source\n")
    who.own(d)
    before = snapshot(d)
    r = who.run([*who.umld(), "sh", "-c", "make -s && cat out.txt && pwd"], cwd=d)
    assert (r.returncode, r.stdout) == (0, f"source\nbuilt\n{d}\n"), r
    assert snapshot(d) == before
    assert not (d / "out.txt").exists()
    # The next machine starts from the host's tree again.
    r = who.run([*who.umld(), "sh", "-c", "test -e out.txt; echo $?"], cwd=d)
    assert r.stdout == "1\n", r
    # Through a bind of the directory, the output is the host's.
    r = who.run([*who.umld(f"--bind={d}"), "make", "-s"], cwd=d)
    assert r.returncode == 0, r
    assert (d / "out.txt").read_text() == "source\nbuilt\n"


def test_the_guest_starts_where_the_caller_is(who: Who, fresh: Callable[[str], Path]) -> None:
    d = fresh("home")
    (d / "sub dir").mkdir()
    who.own(d)
    r = who.run([*who.umld(), "pwd"], cwd=d / "sub dir")
    assert (r.returncode, r.stdout) == (0, f"{d}/sub dir\n"), r


def _one_line(r: Result, code: int, text: str) -> None:
    assert r.returncode == code, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("umld: ") and text in lines[0], r
    assert "Traceback" not in r.stderr


def test_a_directory_the_guest_cannot_have_is_one_line(
    who: Who, fresh: Callable[[str], Path]
) -> None:
    """Never a silent /: a working directory that is gone, one a
    --read-only-root machine has not (its $HOME is a ramdisk), one given
    with -C that does not exist: exit 125 and one line."""
    d = fresh("home")
    gone = d / "gone"
    gone.mkdir()
    who.own(gone)
    # A shell that removes its own directory, then starts umld there.
    r = who.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$@"', "sh", *who.umld(),
                 "pwd"])  # fmt: skip
    _one_line(r, 125, "working directory is gone")
    r = who.run([*who.umld("--read-only-root"), "pwd"], cwd=d)
    _one_line(r, 125, f"cannot change to {d} in the guest")
    r = who.run([*who.umld("-C", "/no/such/dir"), "pwd"], cwd=d)
    _one_line(r, 125, "cannot change to /no/such/dir in the guest")


def test_a_program_built_on_the_host_in_tmp_runs(who: Who) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    d = Path("/tmp") / f"umld-cow-bin-{os.getpid()}-{os.urandom(3).hex()}"
    d.mkdir()
    try:
        (d / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hello");}\n')
        subprocess.run(["cc", "-o", str(d / "hello"), str(d / "hello.c")], check=True)
        d.chmod(0o755)
        r = who.run([*who.umld(), str(d / "hello")], cwd=Path("/"))
        assert (r.returncode, r.stdout) == (0, "hello\n"), r
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_venv_in_home_and_a_pyenv_python_run(who: Who, fresh: Callable[[str], Path]) -> None:
    d = fresh("home")
    venv = d / "venv"
    made = who.run([GUEST_PY, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made
    code = "import sys; print(sys.prefix)"
    r = who.run([*who.umld(), str(venv / "bin" / "python"), "-c", code], cwd=d)
    assert (r.returncode, r.stdout) == (0, f"{venv}\n"), r
    if who.user is None:
        pythons = sorted(Path("/root/.pyenv/versions").glob("*/bin/python3"))
        if pythons:
            r = who.run([*who.umld(), str(pythons[0]), "-c", code], cwd=d)
            assert (r.returncode, r.stdout) == (0, f"{pythons[0].parent.parent}\n"), r


def _wheel(path: Path) -> Path:
    """A minimal pure-Python wheel (PEP 427) of the package umldcowpkg."""
    files = {
        "umldcowpkg/__init__.py": b"WHERE = 'in the guest'\n",
        "umldcowpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: umldcowpkg\n"
        b"Version: 1.0\n",
        "umldcowpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: umld-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += "umldcowpkg-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("umldcowpkg-1.0.dist-info/RECORD", record)
    whl = path / "umldcowpkg-1.0-py3-none-any.whl"
    whl.write_bytes(buf.getvalue())
    return whl


def test_pip_install_user_stays_in_the_guest(who: Who, fresh: Callable[[str], Path]) -> None:
    if subprocess.run([GUEST_PY, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("no pip for the system's python3")
    d = fresh("var-tmp")
    whl = _wheel(d)
    who.own(d)
    site = who.run([GUEST_PY, "-c", "import site; print(site.getusersitepackages())"])
    user_site = Path(site.stdout.strip())
    existed = user_site.exists()
    before = snapshot(user_site) if existed else None
    script = (
        f"{GUEST_PY} -m pip install -q --user --break-system-packages --no-index --no-deps "
        f"--disable-pip-version-check {whl} && "
        f"{GUEST_PY} -c 'import umldcowpkg; print(umldcowpkg.WHERE)'"
    )
    r = who.run([*who.umld(), "sh", "-c", script], cwd=d, timeout=180)
    assert (r.returncode, r.stdout) == (0, "in the guest\n"), r
    assert user_site.exists() == existed
    if before is not None:
        assert snapshot(user_site) == before
    assert not (user_site / "umldcowpkg").exists()


# -- what changed: changes/, changes/.deleted, diff, umld diff -------------------

CHANGER = r"""
set -e
cd "$1"
echo new > created.txt
echo more >> modified.txt
rm deleted.txt
rm -r dir-to-file && echo now-a-file > dir-to-file
rm file-to-dir && mkdir file-to-dir && echo inside > file-to-dir/inner
mkdir newdir && echo deep > newdir/deep.txt
rm -r emptied && mkdir emptied && echo fresh > emptied/fresh
ln -s "$2" evil-abs
ln -s ../../../../../../../../.."$2" evil-rel
rm "$2"
touch "$3"
exec sleep 120
"""


def _project(d: Path) -> None:
    (d / "modified.txt").write_text("host\n")
    (d / "deleted.txt").write_text("host\n")
    (d / "kept.txt").write_text("host\n")
    (d / "dir-to-file").mkdir()
    (d / "dir-to-file" / "x").write_text("x\n")
    (d / "file-to-dir").write_text("file\n")
    (d / "emptied").mkdir()
    (d / "emptied" / "old1").write_text("1\n")
    (d / "emptied" / "old2").write_text("2\n")


def _wait(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_changes_and_diff_list_exactly_what_the_guest_did(
    who: Who, fresh: Callable[[str], Path]
) -> None:
    d = fresh("var-tmp")
    _project(d)
    secret = fresh("var-tmp") / "secret"
    secret.write_text("host secret\n")
    who.own(d)
    who.own(secret.parent)
    before = snapshot(d)
    mnt = fresh("home") / "mnt"
    mnt.mkdir()
    who.own(mnt)
    marker = "/tmp/umld-cow-marker-" + os.urandom(4).hex()
    guest = ["sh", "-c", CHANGER, "sh", str(d), str(secret), marker]
    p = subprocess.Popen(
        who.argv([*who.umld(f"--mount={mnt}"), *guest]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def cat(rel: str) -> Result:
            return who.run(["cat", str(mnt / rel)])

        _wait(lambda: marker in cat("diff").stdout, "the guest's changes")
        rel = str(d)
        want = [
            f"A {rel}/created.txt",
            f"M {rel}/dir-to-file",
            f"D {rel}/emptied/old1",
            f"D {rel}/emptied/old2",
            f"A {rel}/emptied/fresh",
            f"A {rel}/evil-abs",
            f"A {rel}/evil-rel",
            f"M {rel}/file-to-dir/",
            f"A {rel}/file-to-dir/inner",
            f"M {rel}/modified.txt",
            f"D {rel}/deleted.txt",
            f"A {rel}/newdir/",
            f"A {rel}/newdir/deep.txt",
            f"A {marker}",
            f"D {secret}",
        ]
        diff = cat("diff")
        assert diff.returncode == 0, diff
        got = diff.stdout.splitlines()
        assert got == sorted(got, key=lambda line: line[2:]), got
        assert sorted(got) == sorted(want), got
        # umld diff prints the same, from a separate process.
        cli = who.run([sys.executable, "-m", "umld", "diff", "--mount", str(mnt)])
        assert (cli.returncode, cli.stdout) == (0, diff.stdout), cli
        deleted = cat("changes/.deleted").stdout.splitlines()
        assert sorted(deleted) == sorted(
            [f"{rel}/{n}" for n in ("deleted.txt", "dir-to-file", "emptied/old1",
                                    "emptied/old2", "file-to-dir")] + [str(secret)]
        ), deleted  # fmt: skip
        # The content as the guest sees it; whiteouts are not listed.
        c = f"changes{rel}"
        assert cat(f"{c}/modified.txt").stdout == "host\nmore\n"
        assert cat(f"{c}/dir-to-file").stdout == "now-a-file\n"
        assert cat(f"{c}/newdir/deep.txt").stdout == "deep\n"
        listing = who.run(["ls", "-A", str(mnt / c)]).stdout.split()
        assert "deleted.txt" not in listing and "kept.txt" not in listing, listing
        assert {"created.txt", "modified.txt", "newdir"} <= set(listing), listing
        # A guest's symlink read from the host never leads to a host file
        # (the guest deleted its copy of the secret: the host's is there).
        for name in ("evil-abs", "evil-rel"):
            for tree in (c, f"fs{rel}"):
                r = cat(f"{tree}/{name}")
                assert "host secret" not in r.stdout, (tree, name, r)
                assert r.returncode != 0, (tree, name, r)
        # Read-only: nothing is written through changes/.
        w = who.run(["sh", "-c", f"echo x > {mnt / c / 'created.txt'}"])
        assert w.returncode != 0 and "Read-only file system" in w.stderr, w
        assert snapshot(d) == before
        assert secret.read_text() == "host secret\n"
    finally:
        # SIGTERM: umld ends the machine and unmounts its export.
        p.terminate()
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert snapshot(d) == before
    assert not os.path.exists(marker)


def test_a_named_machine_keeps_its_changes_an_unnamed_one_does_not(
    who: Who, fresh: Callable[[str], Path]
) -> None:
    d = fresh("home")
    (d / "file").write_text("host\n")
    who.own(d)
    before = snapshot(d)
    name = f"umld-cow-{os.getpid()}-{os.urandom(3).hex()}"
    state = (
        Path("/var/lib/umld/machines") / name
        if who.user is None
        else who.home / ".local/share/umld/machines" / name
    )
    try:
        for options in ((), (f"--name={name}",)):
            r = who.run([*who.umld(*options), "sh", "-c", "echo guest > file; echo new > new"],
                        cwd=d)  # fmt: skip
            assert r.returncode == 0, r
            r = who.run([*who.umld(*options), "sh", "-c", "cat file; cat new 2>&1"], cwd=d)
            if options:
                assert r.stdout == "guest\nnew\n", r
            else:
                assert r.stdout.startswith("host\n") and "No such file" in r.stdout, r
        assert snapshot(d) == before
        if who.user is None:
            image = state / "upper.img"
            fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck
    finally:
        shutil.rmtree(state, ignore_errors=True)


# -- escapes: nothing the guest does reaches the host's files --------------------

ESCAPES = r"""
victim, d = sys.argv[1], sys.argv[2]
os.chdir(d)
try_("write", lambda: open(victim, "a").write("guest\n"))
os.symlink(victim, "abs")
try_("through-abs-symlink", lambda: open("abs", "a").write("guest\n"))
os.symlink("../" * 20 + victim.lstrip("/"), "rel")
try_("through-rel-symlink", lambda: open("rel", "a").write("guest\n"))
try_("dotdot", lambda: open("/.." * 20 + victim, "a").write("guest\n"))
try_("proc-self-root", lambda: open("/proc/self/root" + victim, "a").write("guest\n"))
try_("proc-1-root", lambda: open("/proc/1/root" + victim, "a").write("guest\n"))
dfd = os.open(os.path.dirname(victim), os.O_RDONLY | os.O_DIRECTORY)
try_("dirfd", lambda: os.write(os.open(os.path.basename(victim), os.O_WRONLY | os.O_APPEND,
                                       dir_fd=dfd), b"guest\n"))
try_("hard-link", lambda: os.link(victim, "hard"))
try_("write-hard-link", lambda: open("hard", "a").write("guest\n"))
try_("chmod", lambda: os.chmod(victim, 0o777))
try_("truncate", lambda: os.truncate(victim, 0))
try_("rename-over", lambda: os.rename("hard", victim))
try_("unlink", lambda: os.unlink(victim))
try_("rmdir-tree", lambda: os.system("rm -rf " + os.path.dirname(victim)))
print("done", os.path.exists(victim))
"""


def test_nothing_the_guest_does_reaches_a_host_file(who: Who, fresh: Callable[[str], Path]) -> None:
    """Symlinks, `..`, /proc/*/root, directory descriptors, hard links,
    renames and removals under the copy-on-write root: every write lands in
    the machine's layer (or is refused); inotify on the host sees no
    change of the victim or its directory."""
    victim_dir = fresh("var-tmp")
    victim = victim_dir / "victim"
    victim.write_text("unchanged\n")
    who.own(victim_dir)
    work = fresh("home")
    before = snapshot(victim_dir)
    watch = HostWatch(victim_dir)
    try:
        r = who.run(
            [*who.umld(), GUEST_PY, "-c", PY_PRELUDE + ESCAPES, str(victim), str(work)], cwd=work
        )
        assert r.returncode == 0 and "Traceback" not in r.stderr, r
        lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        # Natively these would change the victim: in the guest they change
        # its copy, and the guest saw its own removal.
        assert lines["write"].startswith("OK") and lines["dotdot"].startswith("OK"), r
        assert lines["done"] == "False", r
        quiet = ("ACCESS", "OPEN", "CLOSE_NOWRITE")
        writes = [e for e in watch.events() if not e.startswith(quiet)]
        assert writes == [], writes
        assert snapshot(victim_dir) == before
        assert victim.read_text() == "unchanged\n" and victim.stat().st_nlink == 1
    finally:
        watch.close()
