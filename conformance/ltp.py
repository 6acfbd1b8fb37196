#!/usr/bin/env python3
"""Conformance: the Linux Test Project's syscalls tests, natively and under umld.

Usage (from the repository root):

    .venv/bin/python conformance/ltp.py [--tests fork01,uname02,... | --families]
        [--tracers c,python] [--prefix DIR] [--known FILE] [--timeout S]

LTP (release 20260529, ../shared/anchors/ltp-20260529.tar.xz) is built
once into PREFIX (default conformance/out/ltp) with the anchors' own
script (about 3 minutes on 2 cores).  The tests are the entries of its
runtest/syscalls whose name starts with one of FAMILIES (the calls a guest
kernel answers or must pass through faithfully: processes, signals, files,
memory, time, ids, names, scheduling, resources, events, sockets, mounts,
futexes, ptrace, reboot, modules), less those the known-differences file
marks ``skip`` (each with why: a race that runs for minutes, ...).

Each runs natively and as `umld run --uid 0 --tracer=T -- TEST` from the
tests' directory, one at a time (run by root, the machine gets loop
devices: `--devices-loop 2`).  With ``--as-user NAME`` (created when
missing) both sides run as that ordinary user instead, and umld as
`umld run --tracer=T -- TEST`: the subset that does not need root (the
rest is TCONF on both sides), compared with its own differences file,
conformance/ltp-known-user.txt; LTP's exit status says the outcome
(lib/tst_test.c): 0 passed, 32 only not applicable (TCONF), bits 1
TFAIL, 2 TBROK, 4 TWARN.  Printed: the counts per side, then every test
whose status under umld differs from native, with the first
TFAIL/TBROK/TWARN lines umld alone printed.

The known-differences file (conformance/ltp-known.txt) lists, one per
line, ``TEST STATUS REASON`` (STATUS: the status under umld, or ``*``) and
``TEST skip REASON``.  Exit status: 0 when every difference is listed
there, 1 when one is not (a new difference fails the run; a listed one
that now matches is reported, to be dropped), 2 when LTP could not be
built or umld not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CONF_DIR: Final = Path(__file__).resolve().parent
REPO_DIR: Final = CONF_DIR.parent
ANCHORS: Final = REPO_DIR.parent / "shared" / "anchors"
KNOWN_FILE: Final = CONF_DIR / "ltp-known.txt"
KNOWN_USER_FILE: Final = CONF_DIR / "ltp-known-user.txt"

#: Name prefixes of the selected tests, by family (runtest/syscalls names).
FAMILIES: Final = {
    "process": "fork vfork clone execve execl execv execlp execvp exit wait getpid getppid "
    "kill tkill tgkill setsid getsid setpgid getpgid setpgrp getpgrp prctl",
    "signals": "signal sigaction rt_sig sigprocmask sigpending sigsuspend sigwait sigtimedwait "
    "sigaltstack pause alarm",
    "files": "open close read write pread pwrite readv writev preadv pwritev lseek llseek "
    "stat fstat lstat newuname statx access faccessat chmod fchmod chown fchown lchown link "
    "unlink rename mkdir rmdir creat dup fcntl truncate ftruncate getcwd chdir fchdir "
    "readlink symlink umask utime utimes utimensat mknod pipe sendfile splice tee fsync "
    "fdatasync sync getdents",
    "memory": "mmap munmap mprotect mremap madvise mlock munlock mlockall munlockall msync "
    "mincore brk sbrk getpagesize memfd_create",
    "time": "time gettimeofday clock_gettime clock_getres clock_nanosleep nanosleep adjtimex "
    "clock_adjtime timerfd timer_ getitimer setitimer times",
    "ids": "getuid geteuid getgid getegid setuid setgid setreuid setregid setresuid "
    "setresgid getresuid getresgid setgroups getgroups setfsuid setfsgid",
    "names": "uname gethostname sethostname setdomainname getdomainname",
    "sched": "sched_ nice getpriority setpriority",
    "resources": "getrlimit setrlimit prlimit getrusage",
    "events": "epoll poll ppoll select pselect eventfd signalfd inotify",
    "sockets": "socket bind connect accept listen send recv socketpair getsockname "
    "getpeername getsockopt setsockopt",
    "mount": "mount umount pivot_root",
    "futex": "futex",
    "ptrace": "ptrace",
    "reboot": "reboot",
    "modules": "init_module finit_module delete_module",
}
PREFIXES: Final = tuple(p for names in FAMILIES.values() for p in names.split())
_BAD: Final = re.compile(r"\b(TFAIL|TBROK|TWARN)\b")


@dataclass
class Known:
    """The known-differences file: expected umld status and why, and skips."""

    status: dict[str, tuple[str, str]] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Known:
        known = cls()
        if not path.exists():
            return known
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 3:
                sys.exit(f"ltp: {path}:{n}: want TEST STATUS|skip REASON, not {line!r}")
            name, what, why = parts
            if what == "skip":
                known.skip[name] = why
            elif what == "*" or what.isdigit():
                known.status[name] = (what, why)
            else:
                sys.exit(f"ltp: {path}:{n}: status {what!r} is not a number, * or skip")
        return known

    def excuses(self, name: str, status: int) -> str | None:
        entry = self.status.get(name)
        if entry is None or entry[0] not in ("*", str(status)):
            return None
        return entry[1]


def build(prefix: Path) -> Path:
    """The directory of the built tests (built first when missing)."""
    bindir = prefix / "testcases" / "bin"
    if not (bindir / "ptrace01").exists():
        script = ANCHORS / "build-ltp.sh"
        if not script.exists():
            sys.exit(f"ltp: {script} is missing (the LTP anchor)")
        print(f"ltp: building LTP into {prefix} (about 3 minutes)", flush=True)
        r = subprocess.run(["bash", str(script), str(prefix)], capture_output=True, text=True)
        if r.returncode != 0 or not (bindir / "ptrace01").exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            print("ltp: building LTP failed: " + " | ".join(tail), file=sys.stderr)
            sys.exit(2)
    return bindir


def selection(prefix: Path, names: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """(name, argv) of the runtest/syscalls entries selected."""
    entries: list[tuple[str, list[str]]] = []
    for raw in (prefix / "runtest" / "syscalls").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, *cmd = line.split(None, 1)
        argv = shlex.split(cmd[0]) if cmd else [name]
        entries.append((name, argv))
    if names is not None:
        wanted = set(names)
        found = [e for e in entries if e[0] in wanted]
        missing = wanted - {e[0] for e in found}
        # A test named but not in runtest/syscalls runs by its own name.
        return found + [(n, [n]) for n in sorted(missing)]
    return [e for e in entries if e[0].startswith(PREFIXES)]


def as_user(name: str, tmp: Path) -> list[str]:
    """The argv prefix that runs a command as the ordinary user ``name``
    (created when missing), with a login-like environment and an
    XDG_RUNTIME_DIR of its own below TMP."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    # The tests' directory is the user's: a copy-on-write machine of an
    # ordinary user cannot copy up a directory whose owner has no id in it
    # (EOVERFLOW), as natively it could not write another user's.
    os.chown(tmp, entry.pw_uid, entry.pw_gid)
    run_dir = tmp / f"run-{name}"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(run_dir, entry.pw_uid, entry.pw_gid)
    env = {
        "HOME": entry.pw_dir,
        "USER": name,
        "LOGNAME": name,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "XDG_RUNTIME_DIR": str(run_dir),
        "PYTHONPATH": str(REPO_DIR),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--reset-env",
        "env",
        *(f"{k}={v}" for k, v in env.items()),
    ]


def run(argv: Sequence[str], bindir: Path, timeout: float, tmp: Path) -> tuple[int, str, float]:
    env = dict(
        os.environ,
        LTPROOT=str(bindir.parent.parent),
        TMPDIR=str(tmp),
        PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    if argv[0] == "setpriv":
        # --reset-env: the test's own variables go last of env(1)'s.
        at = argv.index("env") + 1
        while "=" in argv[at]:
            at += 1
        path = f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        argv = [*argv[:at], f"LTPROOT={env['LTPROOT']}", f"TMPDIR={tmp}", path, *argv[at:]]
    start = time.monotonic()
    try:
        p = subprocess.run(
            list(argv),
            cwd=bindir,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return -1, out + f"\nTBROK: timed out after {timeout:.0f} s", time.monotonic() - start
    except FileNotFoundError:
        return -2, f"TBROK: {argv[0]} not built", 0.0
    return p.returncode, p.stdout + p.stderr, time.monotonic() - start


def clean(tmp: Path) -> None:
    """What tests left in TMP: a test killed at its timeout leaves its
    mounts (a loop-mounted image) and directories; detached first."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(f"{tmp}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def outcome(status: int) -> str:
    if status == 0:
        return "pass"
    if status == 32:
        return "n/a"
    if status < 0 or status & 2:
        return "broken"
    if status & 1:
        return "fail"
    return "warn"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", help="comma-separated test names (default: the families)")
    p.add_argument("--tracers", default="c")
    p.add_argument("--prefix", default=str(CONF_DIR / "out" / "ltp"))
    p.add_argument("--known", help=f"the differences file (default {KNOWN_FILE.name})")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per test and side")
    p.add_argument("--umld-option", action="append", default=[], help="more `umld run` options")
    p.add_argument("--native-only", action="store_true", help="only the native run (timings)")
    p.add_argument("--as-user", metavar="NAME", help="both sides as this ordinary user")
    args = p.parse_args(argv)
    prefix = Path(args.prefix)
    bindir = build(prefix)
    if args.as_user and os.geteuid() != 0:
        sys.exit("ltp: --as-user needs root (it switches to the user)")
    known_file = args.known or (KNOWN_USER_FILE if args.as_user else KNOWN_FILE)
    known = Known.read(Path(known_file))
    if args.as_user:
        # The races that run for minutes are skipped whoever runs them.
        known.skip.update(Known.read(KNOWN_FILE).skip)
    names = [t for t in args.tests.split(",") if t] if args.tests else None
    tests = [t for t in selection(prefix, names) if names or t[0] not in known.skip]
    tracers = [] if args.native_only else [t for t in args.tracers.split(",") if t]
    # LTP acquires a loop device for every test with a file system of its
    # own, one test at a time (devices/loop: a root-run machine's).
    loops = ["--devices-loop", "2"] if os.geteuid() == 0 and not args.as_user else []
    root = [] if args.as_user else ["--uid", "0"]
    umld = [sys.executable, "-m", "umld", "run", *root, *loops, *args.umld_option]
    who = f" as {args.as_user}" if args.as_user else ""
    print(
        f"ltp: {len(tests)} tests{who}, natively and under umld ({', '.join(tracers)})", flush=True
    )

    sides = ["native", *(f"umld-{t}" for t in tracers)]
    counts = {s: dict.fromkeys(("pass", "n/a", "fail", "broken", "warn"), 0) for s in sides}
    seconds = dict.fromkeys(sides, 0.0)
    new: list[str] = []
    excused: list[str] = []
    fixed: list[str] = []
    slow: list[str] = []
    unbuilt: list[str] = []
    # Each test's TMPDIR below a directory of this run's, every user's to
    # write (LTP drops privileges in some tests), cleaned at the end.
    tmp = Path(tempfile.mkdtemp(prefix="umld-ltp-", dir="/tmp"))
    tmp.chmod(0o1777)
    user = as_user(args.as_user, tmp) if args.as_user else []
    try:
        for k, (name, cmd) in enumerate(tests, 1):
            if not (bindir / cmd[0]).exists():
                unbuilt.append(name)  # runtest/syscalls names more than the build makes
                continue
            native, _, took = run([*user, *cmd], bindir, args.timeout, tmp)
            seconds["native"] += took
            if took > 10:
                slow.append(f"{name}: {took:.0f} s natively")
            counts["native"][outcome(native)] += 1
            for tracer in tracers:
                side = f"umld-{tracer}"
                status, out, took = run(
                    [*user, *umld, f"--tracer={tracer}", "--", *cmd], bindir, args.timeout, tmp
                )
                seconds[side] += took
                counts[side][outcome(status)] += 1
                if status == native:
                    if name in known.status:
                        fixed.append(f"{name}: now {status} under {side}, as natively")
                    continue
                why = known.excuses(name, status)
                if why is not None:
                    excused.append(f"{name} [{side}] {native} -> {status}: {why}")
                    continue
                lines = [x.strip() for x in out.splitlines() if _BAD.search(x)][:3]
                new.append(f"{name} [{side}] native {native}, umld {status}")
                new += [f"    {x}" for x in lines]
            if k % 25 == 0:
                print(f"ltp: {k}/{len(tests)} run", flush=True)

    finally:
        clean(tmp)
    print()
    print(f"{'':10}" + "".join(f"{c:>8}" for c in counts["native"]) + "   seconds")
    for side in sides:
        print(f"{side:10}" + "".join(f"{v:8}" for v in counts[side].values()), end="")
        print(f"   {seconds[side]:7.1f}")
    if unbuilt:
        print(f"not built here ({len(unbuilt)}, not run): {' '.join(unbuilt)}")
    for line in slow:
        print(f"slow: {line}")
    for line in excused:
        print(f"known: {line}")
    for line in fixed:
        print(f"fixed: {line} (drop it from {known_file})")
    if len(tests) > 10 and counts["native"]["pass"] == 0:
        print("ltp: no test passed natively: the run itself is broken", file=sys.stderr)
        return 2
    if new:
        print(f"\nnew differences ({sum(1 for x in new if not x.startswith(' '))}):")
        for line in new:
            print(f"  {line}")
        return 1
    print("\nltp: no difference but the known ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
