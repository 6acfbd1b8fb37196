#!/usr/bin/env python3
"""umld benchmark: eight workloads, natively and under strace, PRoot and umld.

Usage (from the repository root):

    .venv/bin/python bench/run.py [--quick] [--only W1,W2]
        [--tools native,strace,proot,umld,umld-ro,umld-py,proot-root,umld-root]
        [--repeat N]
        [--json out.json] [--plot out.png] [--pin CPU]

Method.  Every workload is run natively and under each tool *in one run*, in
rounds: in each round every tool gets one pair of runs, native first, then the
tool.  Machine noise on this 2-core VM drifts over seconds, so interleaving
makes it hit native and tool alike, and a tool's ratio is computed against the
native runs paired with it: ratio = median(tool) / median(its native runs).
Wall time is measured end to end (spawn to exit as seen by a pidfd), which
is what a user waits for and what the W0 start-up target is about.

The number of rounds is adaptive unless --repeat is given: one probe round
times every cell, then each cell gets as many rounds as fit in its share of
the remaining time budget (at least 3, at most 21; --quick: 1 and 5).  Fast
cells thus get many samples and stable medians, while a 25 s strace run is
timed 3 times instead of blowing the 10 minute budget.

An assembled root.  W2, W4 and W7 are also run in a guest root assembled
from an empty directory: `umld run --root ROOT` (C backend) and
`proot -r ROOT` with the same binds (/usr, /etc read-only for umld; the
symlinks /bin, /lib, ... into usr/ as on the host; bench/out and the
scratch directory at their host paths; /dev, /sys and /proc as umld's
--root gives them).  These two columns are measured only for those
workloads, paired with native runs like every other cell.

The copy-on-write root.  `umld` and `umld-py` run umld's default layout:
the host's tree as an overlay, so W2, W5 and W7 write their scratch files
into the machine's upper layer (a ramdisk), as a user's guest would.
`umld-ro` runs the old default, `--read-only-root` with the scratch
directory bound read-write at its host path; the report divides the two
ratios per workload (the overlay's cost; the issue bounds it at 3% on W2
and W7).

Correctness before speed: a tool run whose exit status or stdout differs
from the native reference is not timed but flagged FAILED (with the tool's
stderr), and a missing tool is reported as n/a with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import w7_source

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_DIR: Final = BENCH_DIR.parent
SRC_DIR: Final = BENCH_DIR / "src"
OUT_DIR: Final = BENCH_DIR / "out"

# The anchors are shared between the teams; bench/anchors.md is a verbatim
# copy so the bench still prints the reference on a machine without /work.
ANCHOR_PATHS: Final = (Path("/work/shared/anchors.md"), BENCH_DIR / "anchors.md")

ALL_TOOLS: Final = (
    "native",
    "strace",
    "proot",
    "proot54",
    "bwrap",
    "umld",
    "umld-cold",
    "umld-ro",
    "umld-py",
    "proot-root",
    "umld-root",
)
# The copy-on-write root's cost: umld's default against --read-only-root,
# per workload, with the bound where it names one.
OVERLAY_BOUND: Final = {"W2": 1.03, "W7": 1.03}
# The workloads the assembled-root tools run.
ROOT_WORKLOADS: Final = ("W2", "W4", "W7")
ALL_WORKLOADS: Final = ("W0", "W1", "W2", "W3", "W4", "W5", "W6", "W7")

W1_CALLS: Final = 200_000
W2_ITERATIONS: Final = 20_000
W3_SPAWNS: Final = 300
W5_MIB: Final = 64
W5_BLOCK: Final = 4096
W6_SECONDS: Final = 0.5


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal from the issue: a ratio bound, or for W0 an absolute bound."""

    workload: str
    limit: float
    absolute: bool  # True: median seconds must be < limit; else ratio <= limit

    def describe(self) -> str:
        return f"< {self.limit:.3f} s" if self.absolute else f"<= {self.limit:.2f}x"

    def met(self, median_s: float, ratio: float) -> bool:
        return median_s < self.limit if self.absolute else ratio <= self.limit


# The speed issue's targets: W0 an absolute end-to-end bound for `umld run
# -- /bin/true` (PRoot 5.4's start, ahead of bubblewrap's); W1, W4..W7 at
# most 1.05x native, W3 1.15x; W2 accelerated PRoot 5.4's ratio.
TARGETS: Final = (
    Target("W0", 0.005, absolute=True),
    Target("W1", 1.05, absolute=False),
    Target("W2", 19.4, absolute=False),
    Target("W3", 1.15, absolute=False),
    Target("W4", 1.05, absolute=False),
    Target("W5", 1.05, absolute=False),
    Target("W6", 1.05, absolute=False),
    Target("W7", 1.05, absolute=False),
)
# bubblewrap's options: every namespace of its own but the network (umld's
# own starts at its first use), the host's tree as it is.
BWRAP: Final = ("--dev-bind", "/", "/", "--proc", "/proc", "--unshare-all", "--share-net",
                "--die-with-parent", "--")  # fmt: skip
# PRoot 5.4 with its seccomp accelerator, built by `make bench` from the
# shared anchors (../shared/anchors/build-proot.sh).
PROOT54: Final = OUT_DIR / "peers" / "proot"


@dataclasses.dataclass(frozen=True)
class Tool:
    key: str
    label: str
    prefix: tuple[str, ...]  # prepended to the workload's argv
    only: tuple[str, ...] = ()  # the workloads it runs (empty: all)

    def runs(self, workload: str) -> bool:
        return not self.only or workload in self.only


@dataclasses.dataclass
class ToolState:
    tool: Tool
    available: bool
    reason: str = ""  # why it is n/a
    probe_s: float = math.nan  # wall time of the availability probe


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    argv: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float
    status: int | None  # exit status (negative: killed by signal); None: timed out
    stdout: bytes
    stderr_tail: str


@dataclasses.dataclass
class Cell:
    """All runs of one workload under one tool, with their paired natives."""

    tool: str
    times: list[float] = dataclasses.field(default_factory=list)
    native_times: list[float] = dataclasses.field(default_factory=list)
    state: str = "ok"  # ok | failed | timeout | n/a | skip (the tool does not run it)
    reason: str = ""
    rounds: int = 0  # planned number of pairs

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def ratio(self) -> float:
        if not self.times or not self.native_times:
            return math.nan
        return statistics.median(self.times) / statistics.median(self.native_times)


@dataclasses.dataclass
class Options:
    quick: bool
    repeat: int | None
    timeout: float
    budget: float
    min_rounds: int
    max_rounds: int
    pin: str | None


class Progress:
    """Progress on stderr; stdout is kept for the result tables."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, msg: str) -> None:
        e = int(self.elapsed())
        print(f"[{e // 60:2d}:{e % 60:02d}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Running one command


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The child was started in its own session, so its process group holds
    # the tool and every tracee it spawned (unless a tracee called setsid).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_once(argv: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float) -> Sample:
    """Run argv once and return its wall time, exit status and output.

    Popen.wait(timeout=...) polls with sleeps of up to 50 ms, which would
    swamp W0 (about 1 ms).  Instead, poll(2) on a pidfd wakes up exactly when
    the child exits, and only then is it reaped.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        pidfd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            ready = poller.poll(int(timeout * 1000))
            t1 = time.perf_counter()
        finally:
            os.close(pidfd)
        status: int | None
        if ready:
            status = proc.wait()
        else:
            _kill_group(proc)
            proc.wait()
            status = None
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        errtext = err.read().decode(errors="replace").strip().splitlines()
    return Sample(t1 - t0, status, stdout, " | ".join(errtext[-3:]))


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
# Preparation: compile the C workloads, calibrate W6, generate W7's input


def compile_programs(progress: Progress) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench: gcc is required (apt-get install gcc)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for src in sorted(SRC_DIR.glob("*.c")):
        exe = OUT_DIR / src.stem
        # -O2 like any release build; warnings are errors so a sloppy edit
        # of a workload cannot silently change what it measures.
        cmd = [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src)]
        subprocess.run(cmd, check=True)
        built[src.stem] = exe
    progress.say(f"compiled {', '.join(sorted(built))} into {OUT_DIR}")
    return built


def calibrate_w6(
    exe: Path, env: dict[str, str], cwd: Path, pin: list[str], progress: Progress
) -> int:
    """Find the iteration count that takes about W6_SECONDS natively.

    Best of three at a fixed count gives the per-iteration cost without the
    noise of a single run; the count is then scaled and fixed for all tools.
    """
    probe_n = 50_000_000
    best = min(
        run_once([*pin, str(exe), str(probe_n)], env=env, cwd=cwd, timeout=60).seconds
        for _ in range(3)
    )
    n = max(1_000_000, int(probe_n * W6_SECONDS / best))
    check = run_once([*pin, str(exe), str(n)], env=env, cwd=cwd, timeout=60).seconds
    progress.say(f"W6 calibrated to {n:,} iterations ({check:.3f} s natively)")
    return n


def python_for_w4() -> str:
    # The system interpreter is the common case on a Debian machine; any
    # other python3 works as long as every tool runs the same one.
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    found = shutil.which("python3")
    if found is None:
        sys.exit("bench: no python3 found for W4")
    return os.path.realpath(found)


def build_workloads(
    exes: dict[str, Path], scratch: Path, w6_iterations: int
) -> dict[str, Workload]:
    w2_file = scratch / "w2-target.txt"
    w2_file.write_text("a file for W2 to open and stat\n")
    w7_src = OUT_DIR / "w7_input.c"
    w7_src.write_text(w7_source.generate())
    gcc = shutil.which("gcc") or "gcc"
    loop = f"i=0; while [ $i -lt {W3_SPAWNS} ]; do /bin/true; i=$((i+1)); done"
    wl = [
        Workload("W0", "/bin/true", ("/bin/true",)),
        Workload(
            "W1",
            f"{W1_CALLS // 1000}k getppid()",
            (str(exes["w1_getppid"]), str(W1_CALLS)),
        ),
        Workload(
            "W2",
            f"{W2_ITERATIONS // 1000}k open/fstat/close/stat",
            (str(exes["w2_fileops"]), str(w2_file), str(W2_ITERATIONS)),
        ),
        Workload("W3", f"{W3_SPAWNS} spawns of /bin/true from sh", ("/bin/sh", "-c", loop)),
        Workload(
            "W4",
            "python3 -I -c 'import json, ...'",
            (python_for_w4(), "-I", "-c", "import json, email.parser, http.client, sqlite3"),
        ),
        Workload(
            "W5",
            f"write+read {W5_MIB} MiB in {W5_BLOCK // 1024} KiB blocks",
            (str(exes["w5_io"]), str(scratch / "w5-data.bin"), str(W5_MIB), str(W5_BLOCK)),
        ),
        Workload(
            "W6",
            f"{W6_SECONDS} s CPU loop",
            (str(exes["w6_cpu"]), str(w6_iterations)),
        ),
        Workload(
            "W7",
            "gcc -O2 -c of 500 lines",
            (gcc, "-O2", "-c", str(w7_src), "-o", str(scratch / "w7.o")),
        ),
    ]
    return {w.key: w for w in wl}


# --------------------------------------------------------------------------
# Tools


def assemble_root(root: Path, shared: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Prepare the empty directory root as a guest's /; return the options
    that complete it for `umld run` and for `proot`.

    Both get /usr and /etc (read-only under umld; PRoot has no read-only
    binds), the same symlinks /bin, /lib, ... into usr/ as on the host
    (merged /usr, Debian 12; binds where the host has directories), and
    the shared directories (the compiled workloads, the scratch directory)
    at their host paths.  PRoot also gets the /dev, /sys and /proc that
    umld's --root provides by itself.
    """
    umld = ["--root", str(root), "--bind=/usr:/usr:ro", "--bind=/etc:/etc:ro"]
    proot = ["-r", str(root), "-b", "/usr:/usr", "-b", "/etc:/etc"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", name)
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            umld.append(f"--bind=/{name}:/{name}:ro")
            proot += ["-b", f"/{name}:/{name}"]
    for name in ("dev", "sys", "proc"):
        proot += ["-b", f"/{name}:/{name}"]
    for path in shared:
        umld.append(f"--bind={path}:{path}")
        proot += ["-b", f"{path}:{path}"]
    return umld, proot


def remove_root(root: Path) -> None:
    """Remove an assembled root (directories and symlinks; the binds live
    only in the guests' mount namespaces).  Never recurse into a mount."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            if os.path.ismount(os.path.join(dirpath, name)):
                print(f"bench: {dirpath}/{name} is a mount point; kept {root}", file=sys.stderr)
                return
    shutil.rmtree(root, ignore_errors=True)


def make_tools(
    umld: Path,
    root_umld: Sequence[str] = (),
    root_proot: Sequence[str] = (),
    shared: Sequence[Path] = (),
) -> dict[str, Tool]:
    """The tools; shared: host directories the workloads write to, bound
    under --read-only-root (whose /tmp is a ramdisk of its own); the
    default layout writes them copy-on-write."""
    strace = shutil.which("strace") or "strace"
    proot = shutil.which("proot") or "proot"
    binds = [f"--bind={p}:{p}" for p in shared]
    return {
        "native": Tool("native", "native", ()),
        "strace": Tool("strace", "strace -f", (strace, "-f", "-o", "/dev/null")),
        "proot": Tool("proot", "proot -r / (Debian's 5.1)", (proot, "-r", "/")),
        "proot54": Tool("proot54", "PRoot 5.4 seccomp -r /", (str(PROOT54), "-r", "/")),
        "bwrap": Tool("bwrap", "bubblewrap", (shutil.which("bwrap") or "bwrap", *BWRAP)),
        "umld": Tool("umld", "umld (C)", (str(umld), "run", "--tracer=c", "--")),
        # Every run started cold (no warm umld: Python's start and imports).
        "umld-cold": Tool(
            "umld-cold",
            "umld (C), cold start",
            ("env", "UMLD_WARM=0", str(umld), "run", "--tracer=c", "--"),
        ),
        "umld-ro": Tool(
            "umld-ro",
            "umld (C) --read-only-root",
            (str(umld), "run", "--tracer=c", "--read-only-root", *binds, "--"),
        ),
        "umld-py": Tool("umld-py", "umld (python)", (str(umld), "run", "--tracer=python", "--")),
        "proot-root": Tool(
            "proot-root", "proot -r ROOT", (proot, *root_proot), only=ROOT_WORKLOADS
        ),
        "umld-root": Tool(
            "umld-root",
            "umld (C) --root ROOT",
            (str(umld), "run", "--tracer=c", *root_umld, "--"),
            only=ROOT_WORKLOADS,
        ),
    }


def probe_tool(
    tool: Tool, env: dict[str, str], cwd: Path, pin: list[str], timeout: float
) -> ToolState:
    """Decide whether a tool can run at all, and say why not if it can't.

    A missing binary, an unbuilt umld or a missing C backend all show up
    here, so the bench reports n/a for that column and carries on.
    """
    if not tool.prefix:
        return ToolState(tool, True)
    exe = tool.prefix[0]
    if os.sep in exe:
        if not os.access(exe, os.X_OK):
            what = "umld not built" if tool.key.startswith("umld") else "not installed"
            return ToolState(tool, False, f"{what}: {exe} missing")
    elif shutil.which(exe) is None:
        return ToolState(tool, False, f"{exe} not installed (apt-get install {exe})")
    # Twice: the first run also pays for cold caches (.pyc files, page cache),
    # which is not what the availability probe should report.
    sample = None
    for _ in range(2):
        sample = run_once([*pin, *tool.prefix, "/bin/true"], env=env, cwd=cwd, timeout=timeout)
        if sample.status != 0:
            cmd = " ".join([*tool.prefix, "/bin/true"])
            detail = f": {sample.stderr_tail}" if sample.stderr_tail else ""
            return ToolState(tool, False, f"`{cmd}` {describe_status(sample.status)}{detail}"[:300])
    assert sample is not None
    return ToolState(tool, True, probe_s=sample.seconds)


# --------------------------------------------------------------------------
# The measurement loop


def check_sample(sample: Sample, ref: Sample, timeout: float) -> tuple[str, str] | None:
    """Return (state, reason) when sample must not be timed, else None."""
    if sample.status is None:
        return "timeout", f"no exit within {timeout:.0f} s"
    if sample.status != ref.status:
        tail = f" ({sample.stderr_tail})" if sample.stderr_tail else ""
        return "failed", (
            f"{describe_status(sample.status)}, native {describe_status(ref.status)}{tail}"
        )
    if sample.stdout != ref.stdout:
        got = sample.stdout.decode(errors="replace").strip()[:80]
        want = ref.stdout.decode(errors="replace").strip()[:80]
        return "failed", f"stdout differs from native: {got!r} vs {want!r}"
    return None


def fmt_time(s: float) -> str:
    if math.isnan(s):
        return "-"
    if s < 1.0:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    if math.isnan(r):
        return "-"
    if r < 10:
        return f"{r:.2f}x"
    if r < 100:
        return f"{r:.1f}x"
    return f"{r:.0f}x"


def measure_workload(
    wl: Workload,
    tools: list[ToolState],
    opts: Options,
    env: dict[str, str],
    cwd: Path,
    progress: Progress,
    label: str,
    cells_left_after: int,
) -> tuple[dict[str, Cell], list[float]]:
    """Measure one workload under every available tool.

    Returns the cells (keyed by tool) and all native samples.
    """
    pin = ["taskset", "-c", opts.pin] if opts.pin else []
    cells = {t.tool.key: Cell(t.tool.key) for t in tools if t.tool.key != "native"}
    natives: list[float] = []

    # Untimed native reference run: warms the page cache and fixes the exit
    # status and stdout every other run is compared against.
    ref = run_once([*pin, *wl.argv], env=env, cwd=cwd, timeout=opts.timeout)
    if ref.status != 0:
        reason = f"native run: {describe_status(ref.status)} {ref.stderr_tail}"
        for cell in cells.values():
            cell.state, cell.reason = "failed", reason
        progress.say(f"{label} NATIVE FAILED: {reason}")
        return cells, natives

    for t in tools:
        if t.tool.key != "native" and not t.tool.runs(wl.key):
            cells[t.tool.key].state = "skip"
            cells[t.tool.key].reason = f"runs only {', '.join(t.tool.only)}"
        elif t.tool.key != "native" and not t.available:
            cells[t.tool.key].state = "n/a"
            cells[t.tool.key].reason = t.reason
    active = [
        t.tool for t in tools if t.tool.key != "native" and t.available and t.tool.runs(wl.key)
    ]

    def pair(tool: Tool, round_no: int) -> None:
        cell = cells[tool.key]
        nat = run_once([*pin, *wl.argv], env=env, cwd=cwd, timeout=opts.timeout)
        bad = check_sample(nat, ref, opts.timeout)
        if bad is not None:
            # The workload itself is unstable: do not pretend a ratio exists.
            cell.state, cell.reason = "failed", f"paired native run: {bad[1]}"
            return
        # A good native run counts for the native column even if the tool's
        # run then fails.
        natives.append(nat.seconds)
        got = run_once([*pin, *tool.prefix, *wl.argv], env=env, cwd=cwd, timeout=opts.timeout)
        bad = check_sample(got, ref, opts.timeout)
        if bad is not None:
            cell.state, cell.reason = bad
            progress.say(f"{label} {tool.key}: {bad[0].upper()}: {bad[1]}")
            return
        cell.native_times.append(nat.seconds)
        cell.times.append(got.seconds)
        planned = f"/{cell.rounds}" if cell.rounds else ""
        progress.say(
            f"{label} {tool.key:<7} {round_no}{planned}: "
            f"{fmt_time(got.seconds)} (native {fmt_time(nat.seconds)})"
        )

    # Probe round: one pair per tool, which also tells how long a pair takes.
    for tool in active:
        pair(tool, 1)

    # Plan rounds: spread what is left of the budget evenly over the cells
    # not measured yet (this workload's included); a cell that overran (a
    # slow tool at its minimum rounds) thereby shrinks the later ones.
    remaining = max(0.0, opts.budget - progress.elapsed())
    share = remaining / max(1, len(active) + cells_left_after)
    for tool in active:
        cell = cells[tool.key]
        if cell.state != "ok":
            continue
        if opts.repeat is not None:
            cell.rounds = opts.repeat
        else:
            pair_s = cell.times[0] + cell.native_times[0]
            cell.rounds = max(opts.min_rounds, min(opts.max_rounds, int(share / pair_s)))

    round_no = 2
    while True:
        todo = [t for t in active if cells[t.key].state == "ok" and cells[t.key].rounds >= round_no]
        if not todo:
            break
        for tool in todo:
            pair(tool, round_no)
        round_no += 1

    for cell in cells.values():
        if cell.state != "ok":
            continue
        progress.say(
            f"{label} {cell.tool:<7} median {fmt_time(cell.median)} "
            f"= {fmt_ratio(cell.ratio)} native over {len(cell.times)} pairs"
        )
    return cells, natives


# --------------------------------------------------------------------------
# Reporting


def render_table(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        parts = [
            cell.rjust(w) if right[i] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def cell_text(cell: Cell, notes: list[str], key: str) -> str:
    if cell.state == "ok":
        return f"{fmt_time(cell.median):>8} {fmt_ratio(cell.ratio):>7}"
    if cell.state == "n/a":
        return "n/a"
    if cell.state == "skip":
        return "-"
    notes.append(f"{key} {cell.tool}: {cell.reason}")
    word = "TIMEOUT" if cell.state == "timeout" else "FAILED"
    return f"{word} [{len(notes)}]"


def print_results(
    workloads: list[Workload],
    tools: list[ToolState],
    results: dict[str, dict[str, Cell]],
    natives: dict[str, list[float]],
    opts: Options,
) -> None:
    columns = [t for t in tools if t.tool.key != "native"]
    header = ["workload", "native"] + [t.tool.label for t in columns]
    rows = [header]
    notes: list[str] = []
    for wl in workloads:
        row = [
            f"{wl.key} {wl.title}",
            fmt_time(statistics.median(natives[wl.key])) if natives[wl.key] else "-",
        ]
        for t in columns:
            row.append(cell_text(results[wl.key][t.tool.key], notes, wl.key))
        rows.append(row)
    pin = f"pinned to CPU {opts.pin}" if opts.pin else "unpinned"
    print()
    print(f"umld bench: median wall time and ratio to native ({pin})")
    print("ratio = median under the tool / median of the native runs paired with it")
    print()
    for line in render_table(rows, [False] + [True] * (len(header) - 1)):
        print(line)
    print()
    for t in columns:
        if t.available:
            print(f"  {t.tool.label}: `{' '.join(t.tool.prefix)} CMD`")
        else:
            print(f"  {t.tool.label}: n/a ({t.reason})")
    for i, note in enumerate(notes, 1):
        print(f"  [{i}] {note}")


def target_rows(
    results: dict[str, dict[str, Cell]], tools: list[ToolState]
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    umld_cols = [t for t in tools if t.tool.key in ("umld", "umld-py")]
    rows = [["workload", "target"] + [t.tool.label for t in umld_cols]]
    records: list[dict[str, Any]] = []
    for tgt in TARGETS:
        if tgt.workload not in results:
            continue
        row = [tgt.workload, tgt.describe()]
        for t in umld_cols:
            cell = results[tgt.workload][t.tool.key]
            met: bool | None = None
            if cell.state == "ok":
                value = fmt_time(cell.median) if tgt.absolute else fmt_ratio(cell.ratio)
                met = tgt.met(cell.median, cell.ratio)
                row.append(f"{value:>8}  {'MET' if met else 'MISSED':<6}")
            elif cell.state == "n/a":
                row.append("n/a")
            else:
                row.append(cell.state.upper())
            records.append(
                {
                    "workload": tgt.workload,
                    "tool": t.tool.key,
                    "target": tgt.describe(),
                    "state": cell.state,
                    "met": met,
                }
            )
        rows.append(row)
    return rows, records


def overlay_rows(
    results: dict[str, dict[str, Cell]],
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Per workload: both ratios to native and their quotient, the overlay's
    cost (each ratio is against its own paired native runs, so drift
    between the two cells cancels)."""
    rows = [["workload", "cow", "read-only", "cow/ro", "bound"]]
    records: list[dict[str, Any]] = []
    for workload, cells in results.items():
        cow, ro = cells.get("umld"), cells.get("umld-ro")
        if cow is None or ro is None or cow.state != "ok" or ro.state != "ok":
            continue
        quotient = cow.ratio / ro.ratio
        bound = OVERLAY_BOUND.get(workload)
        verdict = (
            "" if bound is None else f"<= {bound:.2f} {'MET' if quotient <= bound else 'MISSED'}"
        )
        rows.append(
            [workload, fmt_ratio(cow.ratio), fmt_ratio(ro.ratio), f"{quotient:.3f}", verdict]
        )
        records.append({"workload": workload, "cow_over_ro": quotient, "bound": bound})
    return rows, records


def read_anchors(path: Path | None) -> tuple[Path | None, list[list[str]]]:
    """Parse the first markdown table of anchors.md into rows of cells."""
    for candidate in [path] if path is not None else list(ANCHOR_PATHS):
        if candidate is None or not candidate.is_file():
            continue
        rows = []
        for line in candidate.read_text().splitlines():
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if all(re.fullmatch(r":?-+:?", c) for c in cells):
                    continue  # the separator row
                rows.append(cells)
            elif rows:
                break  # only the first table
        return candidate, rows
    return None, []


def maybe_plot(
    path: Path,
    workloads: list[Workload],
    tools: list[ToolState],
    results: dict[str, dict[str, Cell]],
    opts: Options,
) -> None:
    # matplotlib is optional: the bench must run on a bare venv, so it is
    # imported by name (also keeping mypy independent of its presence).
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(
            f"\nplot skipped: matplotlib is not installed in {sys.prefix} (pip install matplotlib)",
            file=sys.stderr,
        )
        return
    columns = [t for t in tools if t.tool.key != "native" and t.available]
    if not columns:
        print("\nplot skipped: no tool was measured", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(workloads)), 5))
    width = 0.8 / len(columns)
    for i, t in enumerate(columns):
        xs, ys = [], []
        for j, wl in enumerate(workloads):
            cell = results[wl.key][t.tool.key]
            if cell.state == "ok":
                xs.append(j + (i - (len(columns) - 1) / 2) * width)
                ys.append(cell.ratio)
        bars = ax.bar(xs, ys, width, label=t.tool.label)
        ax.bar_label(bars, labels=[fmt_ratio(y) for y in ys], fontsize=6, rotation=90, padding=2)
    # The umld targets as short black ticks over each workload's group.
    for j, wl in enumerate(workloads):
        tgt = next((x for x in TARGETS if x.workload == wl.key and not x.absolute), None)
        if tgt is not None:
            ax.hlines(tgt.limit, j - 0.45, j + 0.45, colors="black", linestyles="dashed")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([f"{w.key}\n{w.title}" for w in workloads], fontsize=7)
    ax.set_ylabel("median wall time / native (log)")
    pin = f"pinned to CPU {opts.pin}" if opts.pin else "unpinned"
    ax.set_title(f"umld bench, {platform.node()}, {pin} (dashed: umld targets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}", file=sys.stderr)


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = done.stdout + done.stderr
    m = re.search(r"\d+\.\d+(\.\d+)?", text)
    return m.group(0) if m else "unknown"


def git_head() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


# --------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time workloads natively and under strace, PRoot and umld (paired runs).",
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds (about 2 minutes)")
    p.add_argument("--only", default=",".join(ALL_WORKLOADS), help="workloads, e.g. W0,W1")
    p.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help="tools to compare (proot-root and umld-root: W2, W4 and W7 in an assembled root)",
    )
    p.add_argument(
        "--repeat", type=int, help="pairs per cell (default: adaptive within the budget)"
    )
    p.add_argument("--timeout", type=float, help="per-run timeout in seconds")
    p.add_argument(
        "--budget",
        type=float,
        help="seconds of measurement the adaptive rounds aim for "
        "(default 480, --quick 75; slow tools may overrun it at their minimum rounds)",
    )
    p.add_argument("--pin", metavar="CPU", help="run every command under `taskset -c CPU`")
    p.add_argument("--json", type=Path, help="write all samples and results as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG bar chart of ratios (needs matplotlib)")
    p.add_argument(
        "--umld", type=Path, default=REPO_DIR / ".venv" / "bin" / "umld", help="umld executable"
    )
    p.add_argument("--anchors", type=Path, help="anchors.md to print as reference")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()

    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in ALL_WORKLOADS]
    if unknown:
        sys.exit(f"bench: unknown workload(s) {', '.join(unknown)}; known: {ALL_WORKLOADS}")
    wanted_tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad_tools = [t for t in wanted_tools if t not in ALL_TOOLS]
    if bad_tools:
        sys.exit(f"bench: unknown tool(s) {', '.join(bad_tools)}; known: {ALL_TOOLS}")
    if args.repeat is not None and args.repeat < 1:
        sys.exit("bench: --repeat must be at least 1")
    if args.pin is not None and shutil.which("taskset") is None:
        sys.exit("bench: --pin needs taskset (apt-get install util-linux)")

    opts = Options(
        quick=args.quick,
        repeat=args.repeat,
        timeout=args.timeout or (90.0 if args.quick else 180.0),
        budget=args.budget or (75.0 if args.quick else 480.0),
        min_rounds=1 if args.quick else 3,
        max_rounds=5 if args.quick else 21,
        pin=args.pin,
    )
    pin = ["taskset", "-c", opts.pin] if opts.pin else []

    scratch = Path(tempfile.mkdtemp(prefix="umld-bench-", dir="/tmp"))
    # The assembled root is not below scratch: the guest is given scratch.
    root = Path(tempfile.mkdtemp(prefix="umld-bench-root-", dir="/tmp"))
    root_umld, root_proot = assemble_root(root, [OUT_DIR, scratch])
    # A fixed, minimal environment: identical for every tool and free of the
    # caller's venv, locale quirks and PYTHON* variables.
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(scratch),
    }
    try:
        exes = compile_programs(progress)
        w6_n = calibrate_w6(exes["w6_cpu"], env, scratch, pin, progress) if "W6" in only else 0
        all_wl = build_workloads(exes, scratch, w6_n)
        workloads = [all_wl[k] for k in ALL_WORKLOADS if k in only]

        catalogue = make_tools(args.umld.absolute(), root_umld, root_proot, [scratch])
        # native is always measured: every ratio is relative to it.
        keys = ["native"] + [k for k in ALL_TOOLS if k in wanted_tools and k != "native"]
        tools = []
        for k in keys:
            state = probe_tool(catalogue[k], env, scratch, pin, opts.timeout)
            if state.tool.key != "native":
                shown = fmt_time(state.probe_s) if state.available else f"n/a ({state.reason})"
                progress.say(f"tool {k}: {shown}")
            tools.append(state)

        meta: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "pin": opts.pin,
            "quick": opts.quick,
            "repeat": opts.repeat,
            "budget_s": opts.budget,
            "timeout_s": opts.timeout,
            "git_head": git_head(),
            "gcc": tool_version(["gcc", "--version"]),
            "strace": tool_version(["strace", "-V"]),
            "proot": tool_version(["proot", "--version"]),
            "w4_python": all_wl["W4"].argv[0],
            "w6_iterations": w6_n,
            "root": str(root),
        }

        results: dict[str, dict[str, Cell]] = {}
        natives: dict[str, list[float]] = {}

        def cells_of(wl: Workload) -> int:
            return sum(
                1 for t in tools if t.available and t.tool.key != "native" and t.tool.runs(wl.key)
            )

        for i, wl in enumerate(workloads):
            label = f"[{wl.key} {i + 1}/{len(workloads)}]"
            progress.say(f"{label} {wl.title}: {' '.join(wl.argv)[:100]}")
            cells, nat = measure_workload(
                wl,
                tools,
                opts,
                env,
                scratch,
                progress,
                label,
                cells_left_after=sum(cells_of(w) for w in workloads[i + 1 :]),
            )
            results[wl.key] = cells
            natives[wl.key] = nat
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        remove_root(root)

    print_results(workloads, tools, results, natives, opts)
    print(
        f"  machine: {meta['host']}, Linux {meta['kernel']} {meta['machine']}, "
        f"{meta['cpus']} CPUs; umld at {meta['git_head']}; gcc {meta['gcc']}, "
        f"strace {meta['strace']}, proot {meta['proot']}"
    )
    keys = [w.key for w in workloads]
    if "W4" in keys:
        print(f"  W4 runs {meta['w4_python']} -I")
    if "W6" in keys:
        print(f"  W6 runs {w6_n:,} iterations (calibrated natively to {W6_SECONDS} s)")

    trows, trecords = target_rows(results, tools)
    if len(trows) > 1:
        print()
        print("umld targets (the issue: accelerated PRoot 5.4's ratios; W0 absolute):")
        for line in render_table(trows, [False, False] + [True] * (len(trows[0]) - 2)):
            print(f"  {line}")

    orows, orecords = overlay_rows(results)
    if len(orows) > 1:
        print()
        print("Copy-on-write root: umld (C) against umld (C) --read-only-root, same run:")
        for line in render_table(orows, [False, True, True, True, False]):
            print(f"  {line}")

    anchor_path, anchor_rows = read_anchors(args.anchors)
    print()
    if anchor_rows:
        print(f"Reference ratios, measured elsewhere, NOT in this run ({anchor_path}):")
        for line in render_table(anchor_rows, [False] + [True] * (len(anchor_rows[0]) - 1)):
            print(f"  {line}")
    else:
        print("Reference ratios: anchors.md not found")

    total = progress.elapsed()
    print(f"\nbench finished in {int(total) // 60}m{int(total) % 60:02d}s", file=sys.stderr)

    if args.json is not None:
        doc = {
            "meta": {**meta, "duration_s": total},
            "tools": {
                t.tool.key: {
                    "label": t.tool.label,
                    "prefix": list(t.tool.prefix),
                    "available": t.available,
                    "reason": t.reason,
                    "probe_s": None if math.isnan(t.probe_s) else t.probe_s,
                }
                for t in tools
            },
            "workloads": {
                wl.key: {
                    "title": wl.title,
                    "argv": list(wl.argv),
                    "native_median_s": statistics.median(natives[wl.key])
                    if natives[wl.key]
                    else None,
                    "cells": {
                        k: {
                            "state": c.state,
                            "reason": c.reason,
                            "median_s": None if math.isnan(c.median) else c.median,
                            "ratio": None if math.isnan(c.ratio) else c.ratio,
                            "samples_s": c.times,
                            "native_samples_s": c.native_times,
                        }
                        for k, c in results[wl.key].items()
                    },
                }
                for wl in workloads
            },
            "targets": trecords,
            "overlay": orecords,
            "anchors": {"source": str(anchor_path), "rows": anchor_rows},
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    if args.plot is not None:
        maybe_plot(args.plot, workloads, tools, results, opts)
    # The bench measures; it does not gate.  Failures are in the table.
    return 0


if __name__ == "__main__":
    sys.exit(main())
