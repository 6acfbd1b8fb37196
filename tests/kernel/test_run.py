"""`umld run` itself: the hostname service, process model guarantees,
signals to umld, and errors for user mistakes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Compare, live_pids_with, run, umld_argv

pytestmark = pytest.mark.uses_ptrace


# -- the first emulated service: the guest's host name --------------------------


def test_hostname_option(backend: str) -> None:
    r = run([*umld_argv(backend, "--hostname", "guest-one"), "sh", "-c", "hostname; uname -n"])
    assert (r.returncode, r.stdout) == (0, "guest-one\nguest-one\n"), r.stderr
    py = run(
        [
            *umld_argv(backend, "--hostname", "guest-two"),
            "python3",
            "-c",
            "import socket, os; print(socket.gethostname(), os.uname().nodename)",
        ]
    )
    assert py.stdout == "guest-two guest-two\n", py.stderr


def test_default_hostname_is_the_hosts(compare: Compare) -> None:
    r = compare(["uname", "-a"])
    assert socket.gethostname() in r.stdout


def test_pid_max_is_the_hosts(compare: Compare) -> None:
    """A new pid namespace has a pid_max of its own (Linux 6.14) that starts
    at 4194304; the guest sees the host's, as top and ps size their pid
    column by it."""
    compare(["cat", "/proc/sys/kernel/pid_max"])


def test_sethostname_changes_only_the_guest(backend: str) -> None:
    before = socket.gethostname()
    r = run(
        [
            *umld_argv(backend, "--hostname", "a"),
            "sh",
            "-c",
            "hostname renamed-in-guest && hostname && sh -c 'uname -n'",
        ]
    )
    assert (r.returncode, r.stdout) == (0, "renamed-in-guest\nrenamed-in-guest\n"), r.stderr
    assert socket.gethostname() == before
    with open("/proc/sys/kernel/hostname") as f:
        assert f.read().strip() == before


def test_sethostname_errors_match_linux(backend: str) -> None:
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, n):
    r = libc.sethostname(name, n)
    return r, ctypes.get_errno() if r else 0
print(call(b"x" * 65, 65))       # EINVAL: longer than __NEW_UTS_LEN
print(call(b"x", -1))            # EINVAL
print(call(None, 5))             # EFAULT
print(call(b"ok", 2), os.uname().nodename)
"""
    r = run([*umld_argv(backend), "python3", "-c", code])
    assert r.stdout.splitlines() == ["(-1, 22)", "(-1, 22)", "(-1, 14)", "(0, 0) ok"], r.stderr
    # Without CAP_SYS_ADMIN the guest gets EPERM, as natively (where the
    # call is harmless: it fails).
    # hostname(1) says "you must be root" exactly when errno is EPERM.
    unprivileged = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "hostname",
        "x",
    ]
    native = run(unprivileged)
    guest = run([*umld_argv(backend), *unprivileged])
    assert (native.returncode, native.stderr) == (guest.returncode, guest.stderr)
    assert "must be root" in guest.stderr


def test_denied_host_calls(backend: str) -> None:
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall(167, 0, 0), ctypes.get_errno())          # swapon
print(libc.syscall(164, 0, 0), ctypes.get_errno())          # settimeofday
"""
    r = run([*umld_argv(backend), "python3", "-c", code])
    assert r.stdout.split() == ["-1", "1", "-1", "1"], r.stderr


# -- process model ----------------------------------------------------------------


def test_orphans_reparent_to_first_process(backend: str, guest_bin: Path) -> None:
    r = run([*umld_argv(backend), str(guest_bin / "orphan")])
    assert r.stdout == "orphan re-parented to first process: 1\n", r


def test_background_processes_end_with_the_guest(backend: str, no_strays: str) -> None:
    # One background child and one orphan (its parent subshell exits).
    script = (
        f"(exec -a {no_strays} sleep 1000) & child=$!; "
        f"( (exec -a {no_strays} sleep 1000) & ) ; sleep 0.3; "
        "tr '\\0' ' ' < /proc/$child/cmdline; echo; exit 3"
    )
    r = run([*umld_argv(backend), "bash", "-c", script])
    assert (r.returncode, r.stdout) == (3, f"{no_strays} 1000 \n"), r
    # umld returns only once every guest process is gone.
    assert live_pids_with(no_strays) == []


def test_sigkill_of_umld_kills_the_guest(backend: str, no_strays: str) -> None:
    p = _start_guest(backend, no_strays)
    p.kill()
    p.wait(10)
    deadline = time.monotonic() + 5
    while live_pids_with(no_strays) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_pids_with(no_strays) == []


def _start_guest(backend: str, marker: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [*umld_argv(backend), "bash", "-c", f"exec -a {marker} sleep 1000"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # A test run from a background job inherits SIGINT ignored; the
        # guest would inherit that from umld, as it would natively.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 10
    while not live_pids_with(marker):
        assert time.monotonic() < deadline, "guest did not start"
        time.sleep(0.02)
    return p


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_umld_ends_the_guest(backend: str, no_strays: str, sig: int) -> None:
    p = _start_guest(backend, no_strays)
    p.send_signal(sig)
    assert p.wait(10) == 128 + sig
    assert not live_pids_with(no_strays)


def test_guest_that_ignores_sigterm_is_killed_by_a_second(backend: str, no_strays: str) -> None:
    p = subprocess.Popen(
        [*umld_argv(backend), "bash", "-c", f"trap '' TERM; exec -a {no_strays} sleep 1000"],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not live_pids_with(no_strays):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.terminate()
    time.sleep(0.3)
    assert p.poll() is None  # the guest ignores it; umld waits
    p.terminate()
    assert p.wait(10) == 128 + signal.SIGKILL


def test_guest_crash_reports_signal(backend: str) -> None:
    r = run([*umld_argv(backend), "python3", "-c", "import os; os.abort()"])
    assert r.returncode == 128 + signal.SIGABRT


# -- user mistakes: a message, an exit status, never a traceback ---------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run"], 2, "missing command"),
        (["run", "--bogus", "--", "true"], 2, "unrecognized arguments"),
        (["run", "--tracer=nope", "--", "true"], 2, "invalid choice"),
        (["run", "--", "no-such-command-xyz"], 127, "no-such-command-xyz: command not found"),
        (["run", "--", "/no/such/file"], 127, "No such file or directory"),
        (["run", "--", "/etc/passwd"], 126, "Permission denied"),
        (["run", "--", "/etc"], 126, "Is a directory"),
        (["run", "--hostname", "x" * 65, "--", "true"], 2, "hostname: 1 to 64 bytes"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_user_mistakes(args: list[str], code: int, message: str) -> None:
    r = run([sys.executable, "-m", "umld", *args])
    assert r.returncode == code, r
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
def test_refused_ptrace_is_explained(backend: str) -> None:
    # Under `strace -f` umld's children are strace's tracees: ptrace refuses.
    r = run(["strace", "-f", "-o", "/dev/null", *umld_argv(backend), "true"])
    assert r.returncode == 1
    assert "umld: ptrace(PTRACE_SEIZE) of a child was refused" in r.stderr
    assert "itself being traced" in r.stderr
    assert "Traceback" not in r.stderr


def test_interactive_shell_job_control(backend: str) -> None:
    """`umld run -- bash -i` on a terminal: Ctrl-C reaches the guest's
    foreground job, not umld; the shell carries on."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as terminal
        os.environ["PS1"] = "PROMPT> "
        os.environ["TERM"] = "dumb"
        os.execv(sys.executable, [*umld_argv(backend), "bash", "--norc", "--noprofile", "-i"])
    out = b""

    def expect(token: bytes, timeout: float = 15) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while token not in out:
            assert time.monotonic() < deadline, f"did not see {token!r} in {out[-500:]!r}"
            import select

            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break

    expect(b"PROMPT> ")
    os.write(fd, b"sleep 1000\n")
    time.sleep(0.5)
    os.write(fd, b"\x03")  # Ctrl-C
    out = b""
    expect(b"PROMPT> ")
    os.write(fd, b"echo status=$?\n")
    expect(b"status=130")
    os.write(fd, b"exit 5\n")
    _, st = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WEXITSTATUS(st) == 5


# -- bad input found in the review (issue 9, item 10) ---------------------------


def _one_clear_line(r: object, code: int, message: str) -> None:
    """Exit status ``code``, ``message`` on the first line of stderr, no
    traceback; a usage hint may follow a usage error, nothing else."""
    assert r.returncode == code, r  # type: ignore[attr-defined]
    lines = r.stderr.splitlines()  # type: ignore[attr-defined]
    assert "Traceback" not in r.stderr, r.stderr  # type: ignore[attr-defined]
    assert lines and lines[0].startswith("umld: ") and message in lines[0], lines
    rest = lines[1:]
    assert rest == [] or (code == 2 and len(rest) == 1 and rest[0].startswith("usage: ")), lines


BAD_TOML = {
    "number": ("command = 5\n", "command must be a string or a list of strings"),
    "mixed-list": ('command = ["true", 1]\n', "command must be a string or a list of strings"),
    "quote": ('command = "sh -c \'echo unterminated"\n', "command: No closing quotation"),
    "binary": (b"\xff\xfe\x00\x01\x80command = 1\n", "not a UTF-8 TOML file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOML))
@pytest.mark.parametrize("cmd", ["run", "start"])
def test_bad_config_file_is_one_line(tmp_path: Path, kind: str, cmd: str) -> None:
    text, message = BAD_TOML[kind]
    path = tmp_path / "machine.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if cmd == "run":
        argv = ["run", "--config", str(path)]
    else:  # checked by the client before it looks for a daemon
        argv = ["start", "x", "--mount", str(tmp_path / "none"), "--config", str(path)]
    r = run([sys.executable, "-m", "umld", *argv])
    _one_clear_line(r, 2, message)
    assert str(path) in r.stderr.splitlines()[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("99999999999T", "memory: from 1M to 1P"),
        ("9" * 400, "memory: a size such as 512M or 4G"),
        ("1025T", "memory: from 1M to 1P"),
    ],
    ids=["petabytes", "400-digits", "1025T"],
)
def test_absurd_memory_is_refused(value: str, message: str) -> None:
    r = run([sys.executable, "-m", "umld", "run", "--memory", value, "--", "true"])
    _one_clear_line(r, 2, message)


def test_huge_sizes_are_refused_everywhere() -> None:
    for option in (f"--tmpfs=/x:size={'9' * 400}", f"--disk=/tmp/x.img:/x:size={'9' * 400}"):
        r = run([sys.executable, "-m", "umld", "run", option, "--", "true"])
        _one_clear_line(r, 2, "bad size")


def test_missing_config_dir_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    r = run([sys.executable, "-m", "umld", "run", f"--config-dir={missing}", "--", "true"])
    _one_clear_line(r, 2, f"--config-dir {missing}: No such file or directory")
    afile = tmp_path / "file"
    afile.write_text("")
    r = run([sys.executable, "-m", "umld", "run", f"--config-dir={afile}", "--", "true"])
    _one_clear_line(r, 2, f"--config-dir {afile}: not a directory")


def test_config_dir_closing_accept_does_not_delay_the_start(tmp_path: Path) -> None:
    """A setting applied before the machine's tracer loop runs must not
    wait for that loop (it used to wait 5 s for net/accept)."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "accept").write_text("closed\n")
    start = time.monotonic()
    r = run([*umld_argv("c", f"--config-dir={tmp_path}"), "true"], timeout=60)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert elapsed < 3.0, f"umld run took {elapsed:.1f} s"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="disk images need root")


@needs_root
def test_tiny_disk_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "tiny.img"
    r = run([*umld_argv("c", f"--disk={image}:/mnt:size=1k"), "true"], timeout=60)
    _one_clear_line(r, 2, "a disk image is at least 1M")
    assert not image.exists()


@needs_root
def test_failed_machine_leaves_no_new_disk_image(tmp_path: Path) -> None:
    # /data cannot be made on the host's read-only /: the machine fails
    # after the image was created (mkfs) and before it was ever mounted.
    image = tmp_path / "new.img"
    ro = "--read-only-root"
    r = run([*umld_argv("c", ro, f"--disk={image}:/no-such-dir-umld/data"), "true"], timeout=60)
    _one_clear_line(r, 125, "cannot create the mount point")
    assert not image.exists(), "the machine failed but left its new image behind"
    # An image that existed before is never removed.
    old = tmp_path / "old.img"
    subprocess.run(["truncate", "-s", "64M", str(old)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(old)], check=True)
    r = run([*umld_argv("c", ro, f"--disk={old}:/no-such-dir-umld/data"), "true"], timeout=60)
    assert r.returncode == 125, r
    assert old.exists()
    # And a machine that mounted its new image keeps it.
    r = run([*umld_argv("c", f"--disk={image}:/tmp/data"), "sh", "-c", "echo x > /tmp/data/f"])
    assert r.returncode == 0, r.stderr
    assert image.exists()


@pytest.mark.parametrize("kind", sorted(BAD_TOML))
def test_bad_machine_definition_is_one_line(tmp_path: Path, kind: str) -> None:
    """The daemon reads definitions with the same checks (it logs the line)."""
    from umld.daemon import load_definition
    from umld.errors import UsageError

    text, message = BAD_TOML[kind]
    path = tmp_path / "box.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_definition(str(path))
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)
