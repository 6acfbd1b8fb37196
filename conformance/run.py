#!/usr/bin/env python3
"""Conformance: CPython's own regression tests, natively and under umld.

Usage (from the repository root):

    .venv/bin/python conformance/run.py [--tracer c|python]
        [--suite default|issue3] [--tests test_os,test_posix,...]
        [--root-assembled] [--nested] [--jobs N] [--python PATH]

Each test module runs as `PYTHON -m test -v --randseed 1 MODULE`, once
natively and once as `umld run --tracer=T -- PYTHON -m test ...`, with the
same interpreter, environment and scratch directory.  The verbose unittest
lines (`test_x (module.Class.test_x) ... ok|FAIL|ERROR|skipped '...'`) are
parsed into one status per test case; the per-module and total
passed/failed/skipped counts are printed side by side, and every test case
whose outcome differs is listed with the failure message.

Exit status: 0 when the counts under umld equal the native counts for every
module (with --strict: when every test case has the same outcome), apart
from the KNOWN_DIFFERENCES that umld's design implies (listed, with the
reason, in the report), 1 when
they differ, 2 when the run could not be set up (no interpreter with the
`test` package, umld not runnable).

--root-assembled runs the guest in a root assembled from an empty directory
(`umld run --root DIR` with read-only binds of /usr, /etc and the
interpreter's prefix, the same symlinks /bin, /lib, ... as the host, a
ramdisk on /tmp and the scratch directory bound read-write at its host
path), so the file system tests run through the machine's own mount table.
`--suite issue3` is the file system modules (test_os, test_shutil,
test_tempfile, test_pathlib, test_glob, test_posixpath, test_stat) in such
a root.

--nested runs the guest in a umld inside a umld (`umld run --nest -- umld
run -- PYTHON ...`), the seed's test of a kernel that runs itself.  Run by
root, the inner guest's root is the outer's nobody, so the interpreter
chosen is one every user may run.

--under strace|proot runs the same comparison under another tracer, which
validates this harness independently of umld (PRoot 5.1 is known to differ
from native in one test case, see /work/shared/anchors.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

CONF_DIR: Final = Path(__file__).resolve().parent
HOME: Final = os.environ.get("HOME", "/root")  # the modules' $HOME, natively and in the guest
REPO_DIR: Final = CONF_DIR.parent
LOG_DIR: Final = CONF_DIR / "out"

DEFAULT_TESTS: Final = (
    "test_os",
    "test_posix",
    "test_subprocess",
    "test_signal",
    "test_threading",
    "test_select",
    "test_fcntl",
)

# The file system modules of the issue "guest filesystems and identity", run
# in an assembled root.
ISSUE3_TESTS: Final = (
    "test_os",
    "test_shutil",
    "test_tempfile",
    "test_pathlib",
    "test_glob",
    "test_posixpath",
    "test_stat",
)
SUITES: Final = {"default": DEFAULT_TESTS, "issue3": ISSUE3_TESTS}
# Suites whose guest runs in an assembled root.
ROOT_SUITES: Final = ("issue3",)

# Test cases whose outcome under umld differs from native by design, not by
# a defect: test id -> (the guest's status, why).  They are listed in the
# report with the reason and do not make the run differ.
_XATTR_WHY: Final = (
    "trusted.* extended attributes need CAP_SYS_ADMIN in the initial user namespace "
    "(xattr(7)); the guest's root is root of its own user namespace, so "
    "support.can_xattr() sees no xattr support (user.* xattrs work: test_os's pass)"
)
_IDS_WHY: Final = (
    "run by root, a machine's guest has 65536 ids of its own (a subordinate range, like a "
    "rootless container's; umld/core/ids.py), so chown(2) to 2**31 gets EINVAL as for any "
    "id its user namespace does not map (user_namespaces(7))"
)
_SETGID_WHY: Final = (
    "a machine run by host root leaves no set-group-ID program on the host: chmod to a "
    "mode with S_ISGID and group execute fails with EPERM, for a directory too (the "
    "seccomp filter cannot tell one from a file), so the test skips (as root only)"
)
KNOWN_DIFFERENCES: Final = {
    **{
        f"test.test_shutil.TestCopy.{name}": ("skipped", _XATTR_WHY)
        for name in ("test_copy2_xattr", "test_copyxattr", "test_copyxattr_symlinks")
    },
    **{
        f"test.test_posix.PosixTester.{name}": ("ERROR", _IDS_WHY)
        for name in ("test_chown", "test_fchown", "test_lchown")
    },
    "test.test_subprocess.POSIXProcessTestCase.test_preexec_fork_failure": (
        "ok",
        "run by root, the guest's root is an unprivileged host id (umld/core/ids.py), so "
        "RLIMIT_NPROC applies to it (natively the test skips: 'probably superuser')",
    ),
    "test.test_os.MakedirTests.test_exist_ok_s_isgid_directory": ("skipped", _SETGID_WHY),
}

# Outcome categories.  "expected failure" is a pass and "unexpected success"
# a failure, as unittest itself counts them.
PASSED: Final = "passed"
FAILED: Final = "failed"
SKIPPED: Final = "skipped"
UNKNOWN: Final = "unknown"  # started but no status line (crash, timeout)
CATEGORIES: Final = (PASSED, FAILED, SKIPPED)

_STATUS_WORDS: Final = {
    "ok": PASSED,
    "expected failure": PASSED,
    "FAIL": FAILED,
    "ERROR": FAILED,
    "unexpected success": FAILED,
}

# `name (dotted.id)` optionally followed by a subtest's parameters and
# ` ... STATUS`.  Since 3.11 the id ends with the method name; older
# versions print only module.Class, which is handled by _test_key.
_START_RE: Final = re.compile(r"^(?P<indent>\s*)(?P<name>\w+) \((?P<id>[\w.]+)\)(?P<rest>.*)$")
_STATUS_RE: Final = re.compile(
    r"(?:^|\.\.\. )(?P<status>ok|FAIL|ERROR|expected failure|unexpected success|skipped.*)$"
)
_BLOCK_RE: Final = re.compile(r"^(?P<kind>FAIL|ERROR|UNEXPECTED SUCCESS): (?P<desc>.*)$")
_RAN_RE: Final = re.compile(r"^Ran (?P<n>\d+) tests? in ")
_CLASS_FIXTURES: Final = ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule")


@dataclasses.dataclass
class CaseResult:
    status: str  # the raw status text: ok, FAIL, skipped 'reason', ...
    category: str
    detail: str = ""  # last line of the traceback for failures


@dataclasses.dataclass
class ModuleRun:
    module: str
    runner: str
    seconds: float = 0.0
    exit_status: int | None = None  # None: timed out
    cases: dict[str, CaseResult] = dataclasses.field(default_factory=dict)
    ran: int | None = None  # unittest's own "Ran N tests"
    summary: str = ""  # unittest's "OK (skipped=3)" / "FAILED (...)" line
    log: Path | None = None
    stderr_tail: str = ""

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys((*CATEGORIES, UNKNOWN), 0)
        for case in self.cases.values():
            c[case.category] += 1
        return c

    @property
    def complete(self) -> bool:
        """True when unittest got as far as its summary line."""
        return self.ran is not None

    def state(self) -> str:
        if self.exit_status is None:
            return "TIMEOUT"
        if not self.complete:
            return f"CRASHED ({describe_status(self.exit_status)})"
        return ""


def describe_status(status: int | None) -> str:
    if status is None:
        return "timed out"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


# --------------------------------------------------------------------------
# Parsing `python -m test -v` output


def _test_key(name: str, test_id: str) -> str:
    # 3.11+: "test_x (pkg.mod.Class.test_x)"; up to 3.10: "test_x (pkg.mod.Class)";
    # class fixtures: "setUpClass (pkg.mod.Class)".
    if test_id.endswith("." + name):
        return test_id
    return f"{test_id}.{name}"


def _category(status: str) -> str:
    if status.startswith("skipped"):
        return SKIPPED
    return _STATUS_WORDS.get(status, UNKNOWN)


def _exception_line(block: list[str]) -> str:
    """The exception line of the first traceback in a failure block.

    Frames are indented, so the first unindented line after a "Traceback"
    header is `SomeError: message`.  The first traceback is the test's own
    (later ones are usually a child process's stderr quoted in the message,
    or the chained outer exception); the block's last line is often just the
    tail of captured output.
    """
    after_header = False
    for line in block:
        if line.startswith("Traceback (most recent call last):"):
            after_header = True
        elif after_header and line.strip() and not line[0].isspace():
            return line.strip()
    text = [ln.strip() for ln in block if ln.strip() and not re.fullmatch(r"[-=]+", ln.strip())]
    return text[-1] if text else ""


def parse_verbose(lines: Iterable[str], result: ModuleRun) -> None:
    """Fill result.cases, .ran and .summary from unittest -v output.

    The output is a stream, not a table: a test's own prints can sit between
    its `name (id) ... ` and its status, a docstring puts the status on the
    next line, and failing subtests print indented lines of their own.  So
    a small state machine keeps the test whose status is still pending.
    """
    pending: str | None = None
    subtest_failed: dict[str, str] = {}
    block_key: str | None = None
    block_lines: list[str] = []

    def record(key: str, status: str) -> None:
        cat = _category(status)
        old = result.cases.get(key)
        # A test can be reported twice (a skipped subtest, then the test);
        # a failure anywhere is the test's outcome.
        if old is not None and old.category == FAILED:
            return
        result.cases[key] = CaseResult(status, cat)

    def settle() -> None:
        nonlocal pending
        if pending is not None and pending not in result.cases:
            if pending in subtest_failed:
                record(pending, subtest_failed[pending])
            else:
                result.cases[pending] = CaseResult("(no status)", UNKNOWN)
        pending = None

    def close_block() -> None:
        nonlocal block_key, block_lines
        if block_key is not None and block_key in result.cases:
            result.cases[block_key].detail = _exception_line(block_lines)[:200]
        block_key, block_lines = None, []

    in_tracebacks = False
    for raw in lines:
        line = raw.rstrip("\n")
        ran = _RAN_RE.match(line)
        if ran is not None:
            close_block()
            settle()
            result.ran = int(ran.group("n"))
            in_tracebacks = False
            continue
        if result.ran is not None and re.match(r"^(OK|FAILED)\b", line) and not result.summary:
            result.summary = line.strip()
            continue
        # After the last test unittest prints one block per failure:
        # "=====", "FAIL: test_x (id)", "-----", traceback.
        blk = _BLOCK_RE.match(line)
        if blk is not None and (in_tracebacks or pending is None or line.startswith("ERROR: ")):
            start = _START_RE.match(blk.group("desc"))
            if start is not None:
                close_block()
                settle()
                in_tracebacks = True
                block_key = _test_key(start.group("name"), start.group("id"))
                continue
        if in_tracebacks:
            if line.startswith("=" * 20):
                close_block()
            elif block_key is not None:
                block_lines.append(line)
            continue

        m = _START_RE.match(line)
        if m is not None and (
            m.group("id").endswith("." + m.group("name"))
            or m.group("name") in _CLASS_FIXTURES
            or m.group("name").startswith("test")
        ):
            key = _test_key(m.group("name"), m.group("id"))
            rest = m.group("rest")
            status = None
            if " ... " in rest or rest.endswith(" ..."):
                tail = rest.rsplit(" ...", 1)[1].strip()
                sm = _STATUS_RE.search(" ... " + tail) if tail else None
                status = sm.group("status") if sm else None
            if rest.startswith((" [", " (")):
                # A subtest's own line: it never settles the test itself.
                if status is not None and _category(status) == FAILED:
                    subtest_failed[key] = status
                continue
            if key != pending:
                settle()
            pending = key
            if status is not None:
                record(key, status)
                pending = None
            continue
        if pending is not None:
            sm = _STATUS_RE.search(line.strip())
            if sm is not None and (line.strip() == sm.group("status") or " ... " in line):
                record(pending, sm.group("status"))
                pending = None
    close_block()
    settle()


# --------------------------------------------------------------------------
# Choosing the interpreter


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    version: str
    missing: tuple[str, ...]  # test modules (or libregrtest) it lacks
    prefixes: tuple[str, ...] = ()  # sys.base_prefix, sys.base_exec_prefix


_PROBE: Final = r"""
import importlib.util, json, sys
mods = sys.argv[1:]
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
missing = [m for m in ["test.libregrtest", *("test." + m for m in mods)] if not has(m)]
print(json.dumps({"exe": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3],
                  "missing": missing, "prefixes": [sys.base_prefix, sys.base_exec_prefix]}))
"""


def probe_interpreter(path: str, modules: Sequence[str]) -> Interpreter | None:
    try:
        done = subprocess.run(
            [path, "-I", "-c", _PROBE, *modules],
            capture_output=True,
            text=True,
            timeout=60,
        )
        info = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    # sys.executable resolves pyenv-style shims to the real binary, which is
    # what must run under umld (a shim is a bash script that re-execs).
    prefixes = tuple(dict.fromkeys(str(p) for p in info.get("prefixes", [])))
    return Interpreter(str(info["exe"]), str(info["version"]), tuple(info["missing"]), prefixes)


def candidate_interpreters() -> list[str]:
    found: list[str] = []
    on_path = shutil.which("python3")
    if on_path is not None:
        found.append(on_path)
    found.append("/usr/bin/python3")
    pyenv = Path.home() / ".pyenv" / "versions"
    if pyenv.is_dir():
        found += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"), reverse=True)]
    return list(dict.fromkeys(p for p in found if os.access(p, os.X_OK)))


def testsuite_hint(interp: Interpreter) -> str:
    major_minor = ".".join(interp.version.split(".")[:2])
    if interp.path.startswith("/usr/bin/") and Path("/etc/debian_version").exists():
        return (
            f"Debian ships the test modules separately: "
            f"apt-get install libpython{major_minor}-testsuite"
        )
    return "this build has no `test` package (some distributions strip it)"


def reachable_by_all(path: str) -> bool:
    """Whether every user may run PATH: each directory above it searchable
    by others (a nested guest's root is its host's nobody, and pyenv keeps
    its interpreters in a 0700 $HOME)."""
    real = Path(os.path.realpath(path))
    return all(os.stat(d).st_mode & 0o001 for d in real.parents) and bool(
        os.stat(real).st_mode & 0o001
    )


def choose_interpreter(
    explicit: str | None, modules: Sequence[str], *, for_all: bool = False
) -> Interpreter:
    paths = [explicit] if explicit else candidate_interpreters()
    rejected: list[str] = []
    for path in paths:
        if for_all and not reachable_by_all(path):
            rejected.append(f"  {path}: not every user may run it (needed by --nested)")
            continue
        interp = probe_interpreter(path, modules)
        if interp is None:
            rejected.append(f"  {path}: does not run")
            continue
        if not interp.missing:
            return interp
        rejected.append(
            f"  {interp.path} (Python {interp.version}) lacks {', '.join(interp.missing)}; "
            + testsuite_hint(interp)
        )
    print("conformance: no interpreter with CPython's regression tests found:", file=sys.stderr)
    for line in rejected:
        print(line, file=sys.stderr)
    print("  (pass one with --python PATH)", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------
# An assembled root


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def assemble_root(root: Path, interp: Interpreter, scratch: Path) -> list[str]:
    """Prepare the empty directory root as a guest's /; return the umld
    options that complete it.

    /usr and /etc are bound read-only; /bin, /lib, ... become the same
    symlinks into usr/ as on the host (merged /usr, Debian 12) or read-only
    binds where the host has real directories.  The interpreter's prefix is
    bound read-only at its own path unless it is below /usr; /tmp is a
    ramdisk and the scratch directory (TMPDIR and working directory of
    every module) is bound read-write at its host path, as natively.
    """
    options = ["--root", str(root), "--bind=/usr:/usr:ro", "--bind=/etc:/etc:ro"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", name)
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            options.append(f"--bind=/{name}:/{name}:ro")
    for prefix in interp.prefixes:
        real = os.path.realpath(prefix)
        if not any(_under(real, top) for top in ("/usr", "/etc")):
            options.append(f"--bind={real}:{real}:ro")
    options += ["--tmpfs=/tmp", f"--bind={scratch}:{scratch}"]
    return options


def default_layout_options() -> list[str]:
    """The umld options of a guest of the default layout: none.  The guest
    sees the host's tree copy-on-write, its interpreter wherever it lives
    (pyenv keeps it in $HOME), and starts in the scratch directory, the
    working directory it was given (its writes stay in the machine's upper
    layer, like every other write of the guest)."""
    return []


def remove_root(root: Path) -> None:
    """Remove an assembled root: a few directories and symlinks on the
    host (the binds exist only in the machines' mount namespaces).  A mount
    point below it on the host would mean a bind leaked out: then nothing
    is removed rather than recursing into, say, /usr."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            if os.path.ismount(os.path.join(dirpath, name)):
                print(
                    f"conformance: {dirpath}/{name} is a mount point; kept {root}", file=sys.stderr
                )
                return
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------
# Running


def runner_prefix(
    under: str, tracer: str, umld: Path, machine: Sequence[str] = (), *, nested: bool = False
) -> list[str]:
    if under == "umld":
        guest = [str(umld), "run", f"--tracer={tracer}", *machine, "--"]
        # Nested: umld inside umld (the seed's test of a kernel that runs
        # itself); the outer machine is given what nesting needs, the
        # inner one the same options as a single machine.
        return [str(umld), "run", f"--tracer={tracer}", "--nest", "--", *guest] if nested else guest
    if under == "strace":
        return [shutil.which("strace") or "strace", "-f", "-o", "/dev/null"]
    if under == "proot":
        return [shutil.which("proot") or "proot", "-r", "/"]
    raise ValueError(under)


def check_runner(prefix: list[str], under: str) -> str | None:
    """Return why the runner cannot run programs, or None if it can."""
    exe = prefix[0]
    if os.sep in exe and not os.access(exe, os.X_OK):
        return f"{exe} missing (umld not built: run `make install`)"
    if os.sep not in exe and shutil.which(exe) is None:
        return f"{exe} not installed (apt-get install {exe})"
    try:
        done = subprocess.run([*prefix, "/bin/true"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(prefix)} /bin/true` did not finish in 120 s"
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        return f"`{' '.join(prefix)} /bin/true` {describe_status(done.returncode)}: {tail}"
    return None


def run_module(
    module: str,
    runner: str,
    prefix: list[str],
    python: str,
    scratch: Path,
    timeout: float,
) -> ModuleRun:
    result = ModuleRun(module, runner)
    logdir = LOG_DIR / runner
    logdir.mkdir(parents=True, exist_ok=True)
    out_path = logdir / f"{module}.out"
    err_path = logdir / f"{module}.err"
    # The same scratch path for the native and the guest run: regrtest
    # creates its work directory in TMPDIR, and some tests depend on path
    # lengths.  A fresh directory per module keeps parallel modules apart.
    tmp = scratch / module
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Writable to all, as the scratch directory (main): a nested guest's
    # root is its host's nobody (the README, "Nesting").
    tmp.chmod(0o777)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
    }
    # --randseed: regrtest seeds `random` in the test process; a fixed seed
    # makes both runs draw the same values.
    cmd = [*prefix, python, "-m", "test", "-v", "--randseed", "1", module]
    print(f"[{runner}] {module} started", file=sys.stderr, flush=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
        try:
            result.exit_status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Only our own child's session: the tests and, under a tracer,
            # the tracer with every tracee.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            result.exit_status = None
        result.seconds = time.monotonic() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    result.log = out_path
    with open(out_path, encoding="utf-8", errors="replace") as f:
        parse_verbose(f, result)
    errs = err_path.read_text(errors="replace").strip().splitlines()
    result.stderr_tail = " | ".join(errs[-2:])[:300]
    return result


def run_phase(
    runner: str,
    prefix: list[str],
    modules: Sequence[str],
    python: str,
    scratch: Path,
    jobs: int,
    timeout: float,
) -> tuple[dict[str, ModuleRun], float]:
    t0 = time.monotonic()
    results: dict[str, ModuleRun] = {}
    done_count = 0
    print(f"[{runner}] {len(modules)} modules, {jobs} at a time", file=sys.stderr, flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(run_module, m, runner, prefix, python, scratch, timeout): m for m in modules
        }
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results[r.module] = r
            done_count += 1
            c = r.counts()
            state = r.state()
            print(
                f"[{runner} {done_count}/{len(modules)}] {r.module}: {r.seconds:.1f} s, "
                f"{c[PASSED]} passed, {c[FAILED]} failed, {c[SKIPPED]} skipped"
                + (f", {c[UNKNOWN]} without status" if c[UNKNOWN] else "")
                + (f"  {state}" if state else ""),
                file=sys.stderr,
                flush=True,
            )
    # Report in the order asked for, not completion order.
    return {m: results[m] for m in modules}, time.monotonic() - t0


# --------------------------------------------------------------------------
# Reporting


def fmt_counts(r: ModuleRun | None) -> str:
    if r is None:
        return "-"
    c = r.counts()
    text = f"{c[PASSED]:4d} / {c[FAILED]:3d} / {c[SKIPPED]:3d}"
    if c[UNKNOWN]:
        text += f" / {c[UNKNOWN]}?"
    state = r.state()
    return f"{text}  {state}" if state else text


def same_counts(a: ModuleRun, b: ModuleRun, excused: Iterable[str] = ()) -> bool:
    """Equal counts, the excused cases of b counted with a's outcome."""
    counts = b.counts()
    for key in excused:
        counts[b.cases[key].category] -= 1
        counts[a.cases[key].category] += 1
    return a.counts() == counts and a.complete == b.complete


def known_differences(
    a: ModuleRun, b: ModuleRun, known: Mapping[str, tuple[str, str]]
) -> list[str]:
    """The cases of b that differ from a as KNOWN_DIFFERENCES says."""
    out = []
    for key, (status, _) in known.items():
        ca, cb = a.cases.get(key), b.cases.get(key)
        if ca and cb and ca.category != cb.category and cb.status.startswith(status):
            out.append(key)
    return out


def case_differences(
    a: ModuleRun, b: ModuleRun, known: Mapping[str, tuple[str, str]] | None = None
) -> list[str]:
    lines = []
    for key in sorted(set(a.cases) | set(b.cases)):
        ca, cb = a.cases.get(key), b.cases.get(key)
        cat_a = ca.category if ca else "absent"
        cat_b = cb.category if cb else "absent"
        if cat_a == cat_b:
            continue
        sa = ca.status if ca else "absent"
        sb = cb.status if cb else "absent"
        detail = cb.detail if cb and cb.detail else (ca.detail if ca else "")
        line = f"    {key}: native {sa}, {b.runner} {sb}"
        if detail:
            line += f"\n        {detail}"
        if known and key in known:
            line += f"\n        known difference: {known[key][1]}"
        lines.append(line)
    return lines


def render(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    # Durations are right-aligned so their decimal points line up.
    right = [h == "time" for h in rows[0]]
    out = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def total_of(runs: Iterable[ModuleRun]) -> dict[str, int]:
    t = dict.fromkeys((*CATEGORIES, UNKNOWN), 0)
    for r in runs:
        for k, v in r.counts().items():
            t[k] += v
    return t


def fmt_total(t: dict[str, int]) -> str:
    text = f"{t[PASSED]:4d} / {t[FAILED]:3d} / {t[SKIPPED]:3d}"
    return text + (f" / {t[UNKNOWN]}?" if t[UNKNOWN] else "")


def report(
    native: dict[str, ModuleRun],
    native_s: float,
    guest: dict[str, ModuleRun] | None,
    guest_s: float,
    guest_label: str,
    strict: bool,
    known: Mapping[str, tuple[str, str]] | None = None,
) -> bool:
    """Print the comparison; return True when the guest run conforms.

    known: KNOWN_DIFFERENCES when the guest is umld: such cases are listed
    with their reason and count as conforming."""
    header = ["module", "native pass / fail / skip", "time"]
    if guest is not None:
        header += [f"{guest_label} pass / fail / skip", "time", ""]
    rows = [header]
    ok = True
    diffs: list[str] = []
    for m, nat in native.items():
        row = [m, fmt_counts(nat), f"{nat.seconds:.1f} s"]
        if guest is not None:
            g = guest[m]
            excused = known_differences(nat, g, known or {})
            counts_equal = same_counts(nat, g, excused)
            case_diff = case_differences(nat, g, known)
            verdict = "same" if counts_equal else "DIFFERENT"
            if counts_equal and excused:
                verdict = f"same but {len(excused)} known"
            elif counts_equal and case_diff:
                verdict = "same counts, cases differ"
            if not counts_equal or (strict and len(case_diff) > len(excused)):
                ok = False
            row += [fmt_counts(g), f"{g.seconds:.1f} s", verdict]
            if case_diff or g.state():
                diffs.append(f"  {m}: {len(case_diff)} test case(s) differ")
                if g.state():
                    diffs.append(f"    {guest_label} run {g.state()}: {g.stderr_tail}")
                diffs += case_diff
                diffs.append(f"    logs: {LOG_DIR / 'native' / (m + '.out')}, {g.log}")
        rows.append(row)
    total_row = ["total", fmt_total(total_of(native.values())), f"{native_s:.1f} s"]
    if guest is not None:
        total_row += [fmt_total(total_of(guest.values())), f"{guest_s:.1f} s", ""]
    rows.append(total_row)
    print()
    print("CPython regression tests (counts of test cases: passed / failed / skipped)")
    print()
    for line in render(rows):
        print(line)
    notes = []
    for runs in (native, guest or {}):
        for r in runs.values():
            parsed = len(r.cases) - sum(1 for k in r.cases if k.endswith(_CLASS_FIXTURES))
            if r.ran is not None and parsed != r.ran:
                notes.append(
                    f"  {r.runner} {r.module}: parsed {parsed} results, unittest ran {r.ran}"
                )
    if notes:
        print("\nparser cross-check (unittest's own count differs; see the logs):")
        print("\n".join(notes))
    if guest is not None:
        print()
        if diffs:
            print(f"differences, native vs {guest_label}:")
            print("\n".join(diffs))
        else:
            print(f"no differences: every test case has the same outcome under {guest_label}")
    return ok


def to_json(runs: dict[str, ModuleRun], seconds: float) -> dict[str, object]:
    return {
        "seconds": seconds,
        "modules": {
            m: {
                "seconds": r.seconds,
                "exit_status": r.exit_status,
                "counts": r.counts(),
                "unittest_ran": r.ran,
                "summary": r.summary,
                "cases": {k: dataclasses.asdict(c) for k, c in r.cases.items()},
            }
            for m, r in runs.items()
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run CPython's regression tests natively and under umld; compare.",
    )
    p.add_argument("--tracer", choices=("c", "python"), default="c", help="umld tracer backend")
    p.add_argument(
        "--suite",
        choices=tuple(SUITES),
        default="default",
        help="module set: default (process and I/O modules) or issue3 (file system modules "
        "in an assembled root, i.e. with --root-assembled)",
    )
    p.add_argument("--tests", help="comma-separated modules (default: those of --suite)")
    p.add_argument(
        "--root-assembled",
        action="store_true",
        help="run the guest with --root: an empty directory with read-only binds of /usr, "
        "/etc and the interpreter, a ramdisk on /tmp",
    )
    p.add_argument("--jobs", type=int, default=1, help="modules run in parallel (default 1)")
    p.add_argument("--python", help="interpreter (default: first python3 with the test package)")
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per module and run (default 1800)"
    )
    p.add_argument(
        "--under",
        choices=("umld", "strace", "proot"),
        default="umld",
        help="what to compare native against (strace/proot: to check this harness)",
    )
    p.add_argument(
        "--nested",
        action="store_true",
        help="run the guest in a umld inside a umld (`umld run --nest -- umld run -- ...`)",
    )
    p.add_argument("--native-only", action="store_true", help="only the native run")
    p.add_argument("--strict", action="store_true", help="require identical outcomes per test case")
    p.add_argument(
        "--umld", type=Path, default=REPO_DIR / ".venv" / "bin" / "umld", help="umld executable"
    )
    p.add_argument("--json", type=Path, help="write all per-case results as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tests = args.tests if args.tests is not None else ",".join(SUITES[args.suite])
    modules = [m.strip() for m in tests.split(",") if m.strip()]
    root_assembled = args.root_assembled or args.suite in ROOT_SUITES
    if (root_assembled or args.nested) and args.under != "umld":
        sys.exit("conformance: --root-assembled and --nested need --under umld")
    if not modules:
        sys.exit("conformance: no test modules given")
    if args.jobs < 1:
        sys.exit("conformance: --jobs must be at least 1")
    interp = choose_interpreter(args.python, modules, for_all=args.nested and os.geteuid() == 0)
    print(f"interpreter: {interp.path} (Python {interp.version})", file=sys.stderr)

    guest_label = f"umld --tracer={args.tracer}" if args.under == "umld" else args.under
    if root_assembled:
        guest_label += " --root"
    if args.nested:
        guest_label += " nested"
    prefix: list[str] = []
    unavailable: str | None = None
    runner = args.under
    scratch = Path(tempfile.mkdtemp(prefix="umld-conformance-", dir="/tmp"))
    scratch.chmod(0o755)
    root: Path | None = None
    if root_assembled and not args.native_only:
        # Not below scratch: the guest is given scratch, not its own root.
        root = Path(tempfile.mkdtemp(prefix="umld-conformance-root-", dir="/tmp"))
        machine = assemble_root(root, interp, scratch)
    elif args.under == "umld":
        machine = default_layout_options()
    else:
        machine = []
    if not args.native_only:
        prefix = runner_prefix(
            args.under, args.tracer, args.umld.absolute(), machine, nested=args.nested
        )
        print(f"guest: {' '.join(prefix)} PYTHON -m test ...", file=sys.stderr)
        unavailable = check_runner(prefix, args.under)
        if args.under == "umld":
            # Logs go to conformance/out/<runner>/: keep the backends apart.
            runner = f"umld-{args.tracer}" + ("-root" if root_assembled else "")
            runner += "-nested" if args.nested else ""
        if unavailable is not None:
            # Still worth running natively: the native counts are the
            # reference and their duration is part of the report.
            print(f"conformance: {guest_label} cannot run: {unavailable}", file=sys.stderr)
            print("conformance: running natively only", file=sys.stderr)

    try:
        native, native_s = run_phase(
            "native", [], modules, interp.path, scratch, args.jobs, args.timeout
        )
        guest: dict[str, ModuleRun] | None = None
        guest_s = 0.0
        if not args.native_only and unavailable is None:
            guest, guest_s = run_phase(
                runner, prefix, modules, interp.path, scratch, args.jobs, args.timeout
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if root is not None:
            remove_root(root)

    known = KNOWN_DIFFERENCES if args.under == "umld" else None
    ok = report(native, native_s, guest, guest_s, guest_label, args.strict, known)
    print(
        f"\nnative run: {native_s:.1f} s wall for {len(modules)} modules "
        f"with --jobs {args.jobs} (Python {interp.version}, {interp.path})"
    )
    if guest is not None:
        print(f"{guest_label} run: {guest_s:.1f} s wall ({guest_s / native_s:.2f}x native)")
    if args.json is not None:
        doc: dict[str, object] = {
            "interpreter": dataclasses.asdict(interp),
            "modules": modules,
            "jobs": args.jobs,
            "umld_options": machine,
            "native": to_json(native, native_s),
        }
        if guest is not None:
            doc[runner] = to_json(guest, guest_s)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if guest is None:
        if unavailable is None:
            return 0  # --native-only: nothing to compare
        print(f"\nRESULT: not compared, {guest_label} cannot run: {unavailable}")
        return 2
    print(
        "\nRESULT: "
        + (
            f"{guest_label} matches native"
            if ok
            else f"{guest_label} differs from native (see above)"
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
