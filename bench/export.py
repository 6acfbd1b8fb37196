#!/usr/bin/env python3
"""What the live export (umld run --mount) costs, measured on real machines.

Usage (from the repository root):

    .venv/bin/python bench/export.py [--quick] [--size MIB] [--changes N]
        [--seconds S] [--readers N] [--json FILE] [--check]

(a) Throughput: a SIZE MiB file (256 by default) written then read in 1 MiB
    blocks directly on the host, and through <mnt>/fs/<bound dir>/ of a
    running machine (the same host directory, bound into the guest), in
    interleaved rounds; the best round of each.  Both go through the host's
    page cache (nothing is dropped: that would disturb everyone else), so
    the ratio is the export's own overhead; a first round warms the cache
    up and is not counted.  Target: >= 50% of direct.
(b) Host name latency: a guest program calls uname(2) in a tight loop and
    prints CLOCK_REALTIME (not namespaced, unlike CLOCK_MONOTONIC) when the
    node name changes; the host writes config/hostname N times.  Latency =
    the guest's timestamp - the host's just before its write(2); median and
    p90.  Target: median < 10 ms.
(c) proc/*/status reads per second, sustained over S seconds (10) by reader
    processes (listdir(proc) then read every status, again and again) while
    the guest spawns /bin/true 300 times from sh, again and again (as W3).
    Also the guest's spawn rate with and without the readers.  Target:
    >= 2,000 reads/s.

Every machine runs with the C tracer; this process only reads and writes
the mount (umld serves it), and always ends umld and removes a mount left
behind (fusermount3 -u -z).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

REPO_DIR: Final = Path(__file__).resolve().parent.parent
BLOCK: Final = 1 << 20
MB: Final = 1e6

# The guest sees the host's / read-only but a ramdisk on $HOME: the system
# python, not the venv's.
GUEST_PYTHON: Final = "/usr/bin/python3"

UNAME_LOOP_C: Final = r"""
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

int main(void)
{
    struct utsname u;
    char last[sizeof u.nodename] = "";
    for (;;) {
        if (uname(&u) != 0)
            return 1;
        if (strcmp(u.nodename, last) != 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            printf("%s %lld\n", u.nodename, (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
            fflush(stdout);
            strcpy(last, u.nodename);
        }
    }
}
"""

UNAME_LOOP_PY: Final = """
import os, sys, time
last = ""
while True:
    name = os.uname().nodename
    if name != last:
        print(name, time.time_ns(), flush=True)
        last = name
"""

SPAWN_LOOP: Final = "while :; do i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done; done"

STATUS_READER: Final = r"""
import json, os, sys, time
proc, seconds = sys.argv[1], float(sys.argv[2])
ok = gone = 0
end = time.monotonic() + seconds
start = time.monotonic()
while time.monotonic() < end:
    for name in os.listdir(proc):
        try:
            with open(f"{proc}/{name}/status", "rb") as f:
                f.read()
            ok += 1
        except FileNotFoundError:
            gone += 1
print(json.dumps({"ok": ok, "gone": gone, "seconds": time.monotonic() - start}))
"""


def mounted(path: Path) -> bool:
    target = os.path.realpath(path.parent) + "/" + path.name
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == target:
                return True
    return False


class Machine:
    """`umld run --tracer=c --mount=MNT --bind=BIND -- CMD`, ended on exit."""

    def __init__(self, cmd: Sequence[str], mnt: Path, bind: Path, *, stdout: Any = None) -> None:
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "umld", "run", "--tracer=c",
            f"--mount={mnt}", f"--bind={bind}", "--", *cmd,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Machine:
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"umld ended with status {self.proc.returncode} before its mount")
            # Up, and the guest's first process runs.
            try:
                if os.listdir(self.mnt / "proc"):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the export at {self.mnt} never came up")
            time.sleep(0.02)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)

    def path(self, rel: str) -> Path:
        return self.mnt / rel


# -- (a) throughput --------------------------------------------------------


def write_file(path: Path, size: int, block: bytes) -> float:
    view = memoryview(block)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, view[: min(left, len(view))])
    finally:
        os.close(fd)
    return time.perf_counter() - t


def read_file(path: Path) -> tuple[float, int]:
    buf = bytearray(BLOCK)
    total = 0
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return time.perf_counter() - t, total


def throughput(work: Path, size_mib: int, rounds: int) -> dict[str, float]:
    data = work / "data"
    data.mkdir()
    size = size_mib << 20
    block = os.urandom(BLOCK)
    best = {"direct_write": 0.0, "direct_read": 0.0, "export_write": 0.0, "export_read": 0.0}
    with Machine(["sleep", "3600"], work / "mnt-a", data) as m:
        via = m.path("fs" + str(data))
        deadline = time.monotonic() + 10  # fs/ is there once the guest is
        while not via.is_dir():
            if time.monotonic() > deadline:
                raise SystemExit(f"{via} never showed the bound directory")
            time.sleep(0.02)
        # Round 0 warms up and is not counted: the first SIZE MiB written
        # on a fresh host take page cache pages from free memory and run
        # at a tenth of the speed of the later ones.  Files are new each
        # time (truncating a big file with cached pages costs as much).
        for n in range(rounds + 1):
            for where, directory in (("direct", data), ("export", via)):
                target = directory / f"file-{where}"
                wrote = size / write_file(target, size, block) / MB
                took, got = read_file(target)
                if got != size:
                    raise SystemExit(f"read {got} bytes of {size} from {target}")
                (data / f"file-{where}").unlink()
                if n > 0:
                    best[f"{where}_write"] = max(best[f"{where}_write"], wrote)
                    best[f"{where}_read"] = max(best[f"{where}_read"], size / took / MB)
    return best


# -- (b) host name latency -------------------------------------------------


def uname_loop(work: Path) -> list[str]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is not None:
        src, exe = work / "uname_loop.c", work / "uname_loop"
        src.write_text(UNAME_LOOP_C)
        subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
        return [str(exe)]
    script = work / "uname_loop.py"
    script.write_text(UNAME_LOOP_PY)
    return [GUEST_PYTHON, str(script)]


def hostname_latency(work: Path, changes: int) -> dict[str, float]:
    seen: dict[str, int] = {}
    cond = threading.Condition()
    latencies, writes = [], []
    with Machine(uname_loop(work), work / "mnt-b", work, stdout=subprocess.PIPE) as m:
        assert m.proc.stdout is not None
        out = m.proc.stdout

        def follow() -> None:
            for line in out:
                name, _, stamp = line.decode().strip().rpartition(" ")
                with cond:
                    seen[name] = int(stamp)
                    cond.notify_all()

        threading.Thread(target=follow, daemon=True).start()
        for i in range(changes):
            name = f"bench-{os.getpid()}-{i}"
            time.sleep(0.02)
            fd = os.open(m.path("config/hostname"), os.O_WRONLY | os.O_TRUNC)
            t0 = time.time_ns()
            os.write(fd, f"{name}\n".encode())
            t1 = time.time_ns()
            os.close(fd)
            with cond:
                if not cond.wait_for(lambda name=name: name in seen, timeout=5):  # type: ignore[misc]
                    raise SystemExit(f"the guest never saw host name {name}")
                latencies.append((seen[name] - t0) / 1e6)
            writes.append((t1 - t0) / 1e6)
    q = statistics.quantiles(latencies, n=10)
    return {
        "median_ms": statistics.median(latencies),
        "p90_ms": q[-1],
        "min_ms": min(latencies),
        "write_median_ms": statistics.median(writes),
    }


# -- (c) status reads under a spawn loop -----------------------------------


def execs(m: Machine) -> int:
    text = (m.path("metrics.prom")).read_text()
    found = re.search(r"^umld_execs_total\{[^}]*\} (\d+)$", text, re.M)
    return int(found.group(1)) if found else 0


def read_statuses(m: Machine, seconds: float, readers: int) -> tuple[float, int]:
    """(status reads per second, reads that found the process gone)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STATUS_READER, str(m.path("proc")), str(seconds)],
            stdout=subprocess.PIPE,
        )
        for _ in range(readers)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        if p.returncode != 0:
            raise SystemExit("a status reader failed")
        results.append(json.loads(out))
    span = max(r["seconds"] for r in results)
    return sum(r["ok"] for r in results) / span, sum(r["gone"] for r in results)


def status_reads(work: Path, seconds: float, readers: int) -> dict[str, float]:
    # The same reads of an idle machine of three processes first: what the
    # export costs when the tracer does not compete with it.
    with Machine(["/bin/sh", "-c", "sleep 3600 & exec sleep 3600"], work / "mnt-i", work) as m:
        time.sleep(0.5)
        idle, _ = read_statuses(m, min(3.0, seconds), readers)
    with Machine(["/bin/sh", "-c", SPAWN_LOOP], work / "mnt-c", work) as m:
        time.sleep(0.5)
        base = min(3.0, seconds)
        e0, t0 = execs(m), time.monotonic()
        time.sleep(base)
        alone = (execs(m) - e0) / (time.monotonic() - t0)
        e0, t0 = execs(m), time.monotonic()
        rate, gone = read_statuses(m, seconds, readers)
        monitored = (execs(m) - e0) / (time.monotonic() - t0)
    return {
        "reads_per_s": rate,
        "gone": gone,
        "reads_per_s_idle": idle,
        "spawns_per_s_alone": alone,
        "spawns_per_s_monitored": monitored,
    }


# -- report ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="64 MiB, 20 changes, 3 s")
    p.add_argument("--size", type=int, help="MiB for (a) (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (a) (default 3)")
    p.add_argument("--changes", type=int, help="host name changes for (b) (default 50)")
    p.add_argument("--seconds", type=float, help="duration of (c) (default 10)")
    p.add_argument("--readers", type=int, default=1, help="reader processes for (c)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = p.parse_args(argv)
    size = args.size or (64 if args.quick else 256)
    changes = args.changes or (20 if args.quick else 50)
    seconds = args.seconds or (3.0 if args.quick else 10.0)

    work = Path(tempfile.mkdtemp(prefix="umld-bench-export-"))
    try:
        a = throughput(work, size, args.rounds)
        b = hostname_latency(work, changes)
        c = status_reads(work, seconds, args.readers)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    write_ratio = a["export_write"] / a["direct_write"]
    read_ratio = a["export_read"] / a["direct_read"]
    rows = [
        ("(a) write, direct", f"{a['direct_write']:.0f} MB/s", "", ""),
        ("(a) write, export fs/", f"{a['export_write']:.0f} MB/s", f"{write_ratio:.0%}", ">= 50%"),
        ("(a) read, direct", f"{a['direct_read']:.0f} MB/s", "", ""),
        ("(a) read, export fs/", f"{a['export_read']:.0f} MB/s", f"{read_ratio:.0%}", ">= 50%"),
        ("(b) hostname -> guest, median", f"{b['median_ms']:.2f} ms", "", "< 10 ms"),
        ("(b) hostname -> guest, p90", f"{b['p90_ms']:.2f} ms", "", ""),
        ("(b) the write(2) itself, median", f"{b['write_median_ms']:.2f} ms", "", ""),
        ("(c) proc/*/status reads", f"{c['reads_per_s']:.0f} /s", "", ">= 2000 /s"),
        ("(c) the same, idle 3-process guest", f"{c['reads_per_s_idle']:.0f} /s", "", ""),
        ("(c) guest spawns, unobserved", f"{c['spawns_per_s_alone']:.0f} /s", "", ""),
        ("(c) guest spawns, while read", f"{c['spawns_per_s_monitored']:.0f} /s", "", ""),
    ]
    met = {
        "(a) write, export fs/": write_ratio >= 0.5,
        "(a) read, export fs/": read_ratio >= 0.5,
        "(b) hostname -> guest, median": b["median_ms"] < 10,
        "(c) proc/*/status reads": c["reads_per_s"] >= 2000,
    }
    print(
        f"umld export bench: {size} MiB file (best of {args.rounds}), {changes} host name "
        f"changes, {seconds:g} s of status reads by {args.readers} reader(s)"
    )
    print(f"{'measure':34} {'result':>12} {'ratio':>6}  {'target':11} ")
    for label, value, ratio, target in rows:
        mark = "" if label not in met else ("ok" if met[label] else "MISSED")
        print(f"{label:34} {value:>12} {ratio:>6}  {target:11} {mark}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"throughput": a, "hostname": b, "status": c}, indent=2) + "\n"
        )
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
