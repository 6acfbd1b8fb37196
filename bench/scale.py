#!/usr/bin/env python3
"""How `umld daemon` scales, and whether it holds up over time.

Usage (from the repository root; run as the daemon's user, root here):

    .venv/bin/python bench/scale.py [--only a,b,c] [--machines 20] [--procs 50]
        [--idle 30] [--samples 30] [--forks 1000] [--threads 200]
        [--soak SECONDS] [--json FILE] [--plot FILE] [--check]

(a) Many machines: one daemon with MACHINES (20) machines defined in
    TOML files, each running PROCS (50) guest processes (sh starting
    PROCS-1 `sleep 3600` and waiting).  Once every machine counts its
    processes in DIR/machines: the daemon's CPU use over IDLE (30) idle
    seconds (utime+stime of all its threads, /proc/PID/stat), its resident
    memory (VmRSS of /proc/PID/status: the threads share it; the guests
    are processes of their own and not counted), and the latency of
    `sh -c 'cat DIR/*/status >/dev/null'` run as a subprocess, SAMPLES
    (30) times: median and p90, beside the same shell running `cat
    /dev/null` (the process start-up the figure includes).
    Targets: RSS < 200 MiB, status read median < 20 ms.
(b) Big guests: a machine's guest program forks FORKS (1000) children that
    all live at once, then exit with status i % 256; the parent checks
    every status.  A second program runs THREADS (200) threads in one
    process and checks every thread's result.  Both must exit 0 (through
    `umld exec`); the peak process / thread count the daemon's export
    showed meanwhile is reported.
(c) Soak: a daemon with 5 machines whose guests start and kill processes
    without pause (sleep started, /bin/true run, the sleep killed, reaped),
    while this script also runs `umld exec` and reads DIR/*/status once a
    sample.  Every 5 s: the daemon's open descriptors (/proc/PID/fd), its
    VmRSS, and the zombie processes on the whole host.  For SECONDS (300
    by default; `make bench` runs 60 to keep the whole bench short, and
    `make bench SCALE_ARGS="--soak 300"` the full one).  The three series
    are printed and drawn to bench/out/soak.png when matplotlib is
    importable.

Machine names are this run's own (scale<pid>-...): a named machine keeps a
home disk image in the state directory (/var/lib/umld/machines as root),
which is removed afterwards.  Daemons are always stopped and their mounts
removed (fusermount3 -u -z), even on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

REPO_DIR: Final = Path(__file__).resolve().parent.parent
PREFIX: Final = f"scale{os.getpid()}-"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
MIB: Final = 1 << 20

FORKER_C: Final = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* forker N HOLD: N children alive at once (each blocked on a pipe), HOLD
 * seconds to be looked at, then child i exits with i % 256; every status
 * is checked.  Exit 0 when all are right. */
int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    int hold = argc > 2 ? atoi(argv[2]) : 1;
    int p[2];
    if (pipe(p) < 0)
        return perror("pipe"), 2;
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c < 0)
            return fprintf(stderr, "fork %d: %s\n", i, strerror(errno)), 2;
        if (c == 0) {
            char b;
            close(p[1]);
            while (read(p[0], &b, 1) < 0 && errno == EINTR)
                ;
            _exit(i % 256);
        }
        pids[i] = c;
    }
    printf("forked %d\n", n);
    fflush(stdout);
    sleep((unsigned)hold);
    close(p[1]);
    int wrong = 0;
    for (int i = 0; i < n; i++) {
        int st;
        pid_t r;
        while ((r = waitpid(pids[i], &st, 0)) < 0 && errno == EINTR)
            ;
        if (r != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != i % 256)
            wrong++;
    }
    printf("%d children, %d wrong statuses\n", n, wrong);
    return wrong ? 1 : 0;
}
"""

THREADS_C: Final = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* threads N HOLD: N threads alive at once (a barrier), HOLD seconds to be
 * looked at, then each returns 3*i+1; every result is checked. */
static pthread_barrier_t start, stop;

static void *body(void *arg)
{
    pthread_barrier_wait(&start);
    pthread_barrier_wait(&stop);
    return (void *)(3 * (intptr_t)arg + 1);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    int hold = argc > 2 ? atoi(argv[2]) : 1;
    pthread_t *t = calloc((size_t)n, sizeof *t);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    pthread_barrier_init(&stop, NULL, (unsigned)n + 1);
    for (intptr_t i = 0; i < n; i++)
        if (pthread_create(&t[i], &attr, body, (void *)i) != 0)
            return fprintf(stderr, "pthread_create %ld failed\n", (long)i), 2;
    pthread_barrier_wait(&start);
    printf("started %d\n", n);
    fflush(stdout);
    sleep((unsigned)hold);
    pthread_barrier_wait(&stop);
    int wrong = 0;
    for (intptr_t i = 0; i < n; i++) {
        void *r;
        if (pthread_join(t[i], &r) != 0 || (intptr_t)r != 3 * i + 1)
            wrong++;
    }
    printf("%d threads, %d wrong results\n", n, wrong);
    return wrong ? 1 : 0;
}
"""

# (c): start a process, run another, kill the first, reap it; again.  The
# cycle count goes to a host file (bound) every 50 cycles.
CHURN: Final = (
    "i=0; while :; do sleep 30 & p=$!; /bin/true; kill $p; wait $p; i=$((i+1)); "
    'if [ $((i % 50)) -eq 0 ]; then echo $i > "$0"; fi; done'
)


# -- host figures -----------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of ``pid`` (proc(5) fields 14, 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == key:
                return v.strip()
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return int(status_field(pid, "VmRSS").split()[0]) / 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def host_zombies(ancestor: int) -> tuple[int, int]:
    """Zombie processes on the host, and those of them below ``ancestor``."""
    parent: dict[int, int] = {}
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(entry)] = int(fields[1])
        if fields[0] == b"Z":
            zombies.append(int(entry))
    below = 0
    for pid in zombies:
        seen = 0
        while pid > 1 and seen < 64:
            pid = parent.get(pid, 0)
            seen += 1
            if pid == ancestor:
                below += 1
                break
    return len(zombies), below


def mounted(path: Path) -> bool:
    target = str(path).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def state_dir_of(name: str) -> Path | None:
    """Where a named machine keeps its state (see umld.Config.machine_dir)."""
    sys.path.insert(0, str(REPO_DIR))
    import umld

    where = umld.Config(name=name).machine_dir()
    return Path(where) if where else None


# -- the daemon ---------------------------------------------------------------


class Daemon:
    """`umld daemon --mount TMP/d --machines-dir TMP/defs` with the given
    definitions; stopped (and its machines' state removed) on exit."""

    def __init__(self, tmp: Path, definitions: dict[str, str]) -> None:
        self.mount = tmp / "d"
        self.defs = tmp / "defs"
        self.defs.mkdir(parents=True, exist_ok=True)
        self.names = list(definitions)
        for name, text in definitions.items():
            (self.defs / f"{name}.toml").write_text(text)
        self.log_path = tmp / "daemon.log"
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "umld", "daemon", "--mount", str(self.mount),
                 "--machines-dir", str(self.defs)],
                cwd=REPO_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )  # fmt: skip
        self.pid = self.proc.pid

    def __enter__(self) -> Daemon:
        deadline = time.monotonic() + 60
        while not (Path(str(self.mount) + ".sock").exists() and self._table_ok()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the daemon did not come up:\n{self.log()}")
            time.sleep(0.05)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _table_ok(self) -> bool:
        try:
            return (self.mount / "machines").read_text().startswith("NAME")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def table(self) -> dict[str, list[str]]:
        """DIR/machines: name -> [STATE, UPTIME, PROCESSES, CPU, RESTART, COMMAND]."""
        lines = (self.mount / "machines").read_text().splitlines()[1:]
        return {c[0]: c[1:] for c in (line.split("\t") for line in lines)}

    def umld(self, cmd: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "umld", cmd, "--mount", str(self.mount), *args],
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if mounted(self.mount):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False)
        for name in self.names:
            where = state_dir_of(name)
            if where is not None and where.name.startswith(PREFIX):
                shutil.rmtree(where, ignore_errors=True)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


# -- (a) many machines ------------------------------------------------------------


def bench_many(tmp: Path, machines: int, procs: int, idle: float, samples: int) -> dict[str, Any]:
    script = f"i=1; while [ $i -lt {procs} ]; do sleep 3600 & i=$((i+1)); done; wait"
    defs = {
        f"{PREFIX}{i:02d}": f"command = {toml_list(['sh', '-c', script])}\n"
        for i in range(machines)
    }
    print(f"(a) {machines} machines x {procs} guest processes, one daemon", flush=True)
    t0 = time.monotonic()
    with Daemon(tmp / "a", defs) as d:
        deadline = time.monotonic() + 300
        while True:
            table = d.table()
            counts = [int(table[n][2]) if n in table else 0 for n in defs]
            if all(c >= procs for c in counts):
                break
            if time.monotonic() > deadline or d.proc.poll() is not None:
                raise SystemExit(f"machines never reached {procs} processes: {counts}\n{d.log()}")
            time.sleep(0.2)
        up = time.monotonic() - t0
        total = sum(counts)
        print(f"    up: {len(defs)} machines, {total} guest processes in {up:.1f} s", flush=True)
        time.sleep(2)
        c0, t1 = cpu_ticks(d.pid), time.monotonic()
        time.sleep(idle)
        c1, t2 = cpu_ticks(d.pid), time.monotonic()
        cpu = 100.0 * (c1 - c0) / CLK_TCK / (t2 - t1)
        rss = rss_mib(d.pid)
        hwm = int(status_field(d.pid, "VmHWM").split()[0]) / 1024
        threads = int(status_field(d.pid, "Threads"))
        check = subprocess.run(
            ["sh", "-c", f"cat {d.mount}/*/status"], capture_output=True, text=True, check=True
        )
        assert check.stdout.count("\nprocesses: ") == len(defs), check.stdout[:500]
        lat, base, inproc = [], [], []
        for _ in range(samples):
            t = time.perf_counter()
            for status in d.mount.glob("*/status"):
                status.read_bytes()
            inproc.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            subprocess.run(["sh", "-c", f"cat {d.mount}/*/status >/dev/null"], check=True)
            lat.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            subprocess.run(["sh", "-c", "cat /dev/null >/dev/null"], check=True)
            base.append((time.perf_counter() - t) * 1000)
    out = {
        "machines": len(defs),
        "guest_processes": total,
        "start_seconds": round(up, 2),
        "idle_seconds": round(t2 - t1, 1),
        "daemon_cpu_percent": round(cpu, 2),
        "daemon_rss_mib": round(rss, 1),
        "daemon_rss_peak_mib": round(hwm, 1),
        "daemon_threads": threads,
        "status_read_ms_median": round(statistics.median(lat), 2),
        "status_read_ms_p90": round(percentile(lat, 0.9), 2),
        "shell_cat_devnull_ms_median": round(statistics.median(base), 2),
        "status_read_in_process_ms_median": round(statistics.median(inproc), 2),
        "samples": samples,
    }
    print(
        f"    daemon CPU over {out['idle_seconds']} s idle: {cpu:.2f} %   "
        f"RSS {rss:.1f} MiB (peak {hwm:.1f}, {threads} threads)   target RSS < 200 MiB",
        flush=True,
    )
    print(
        f"    `cat DIR/*/status` ({len(defs)} files): median {out['status_read_ms_median']} ms,"
        f" p90 {out['status_read_ms_p90']} ms over {samples} runs (`cat /dev/null` in the same"
        f" shell: {out['shell_cat_devnull_ms_median']} ms)   target median < 20 ms",
        flush=True,
    )
    print(
        f"    the same files read by this process (glob + read, no process start):"
        f" median {out['status_read_in_process_ms_median']} ms",
        flush=True,
    )
    return out


# -- (b) big guests -------------------------------------------------------------


def compile_guests(where: Path) -> tuple[Path, Path]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("(b) needs a C compiler (Debian package gcc)")
    progs = []
    for name, src in (("forker", FORKER_C), ("threads", THREADS_C)):
        (where / f"{name}.c").write_text(src)
        subprocess.run(
            [
                cc,
                "-O2",
                "-Wall",
                "-Werror",
                "-pthread",
                "-o",
                str(where / name),
                str(where / f"{name}.c"),
            ],
            check=True,
        )
        progs.append(where / name)
    return progs[0], progs[1]


class Peak:
    """The highest processes: / threads: of DIR/NAME/status while running."""

    def __init__(self, status: Path) -> None:
        self.status = status
        self.processes = 0
        self.threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = self.status.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(": ")
                if key == "processes":
                    self.processes = max(self.processes, int(value))
                elif key == "threads":
                    self.threads = max(self.threads, int(value))
            self._stop.wait(0.05)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_big(tmp: Path, forks: int, threads: int) -> dict[str, Any]:
    print(f"(b) {forks} processes in one machine; {threads} threads in one process", flush=True)
    progs = tmp / "b-progs"
    progs.mkdir(parents=True)
    forker, threader = compile_guests(progs)
    name = f"{PREFIX}big"
    out: dict[str, Any] = {}
    with Daemon(tmp / "b", {name: f"bind = {toml_list([str(progs)])}\n"}) as d:
        for label, argv, count in (
            ("forks", [str(forker), str(forks), "1"], forks),
            ("threads", [str(threader), str(threads), "1"], threads),
        ):
            with Peak(d.mount / name / "status") as peak:
                t = time.monotonic()
                r = d.umld("exec", name, "--", *argv, timeout=600)
                took = time.monotonic() - t
            ok = r.returncode == 0
            out[label] = {
                "count": count,
                "returncode": r.returncode,
                "ok": ok,
                "seconds": round(took, 2),
                "peak_processes": peak.processes,
                "peak_threads": peak.threads,
                "output": r.stdout.strip().splitlines()[-1:] + r.stderr.strip().splitlines()[-3:],
            }
            print(
                f"    {label}: exit {r.returncode} ({'ok' if ok else 'WRONG'}) in {took:.2f} s;"
                f" the export showed up to {peak.processes} processes, {peak.threads} threads;"
                f" {' | '.join(out[label]['output'])}",
                flush=True,
            )
        out["daemon_alive"] = d.proc.poll() is None
    return out


# -- (c) soak -------------------------------------------------------------------


def bench_soak(tmp: Path, seconds: float, interval: float, plot: Path | None) -> dict[str, Any]:
    print(f"(c) soak: 5 machines spawning and killing processes for {seconds:.0f} s", flush=True)
    counters = tmp / "c-counters"
    counters.mkdir(parents=True)
    defs = {
        f"{PREFIX}soak{i}": f"command = {toml_list(['sh', '-c', CHURN, str(counters / str(i))])}\n"
        f"bind = {toml_list([str(counters)])}\n"
        for i in range(5)
    }
    series: dict[str, list[float]] = {
        "t": [],
        "fds": [],
        "rss_mib": [],
        "zombies": [],
        "daemon_zombies": [],
    }
    execs_failed = 0
    with Daemon(tmp / "c", defs) as d:
        deadline = time.monotonic() + 60
        while not all(d.table().get(n, ["?"])[0] == "running" for n in defs):
            if time.monotonic() > deadline:
                raise SystemExit(f"the soak machines did not start:\n{d.log()}")
            time.sleep(0.1)
        start = time.monotonic()
        first = next(iter(defs))
        step = 0
        while True:
            now = time.monotonic() - start
            series["t"].append(round(now, 1))
            series["fds"].append(fd_count(d.pid))
            series["rss_mib"].append(round(rss_mib(d.pid), 1))
            zombies, below = host_zombies(d.pid)
            series["zombies"].append(zombies)
            series["daemon_zombies"].append(below)
            print(
                f"    t={now:6.1f} s  fds {series['fds'][-1]:4.0f}"
                f"  RSS {series['rss_mib'][-1]:6.1f} MiB"
                f"  host zombies {zombies:3d} ({below} below the daemon)",
                flush=True,
            )
            if now >= seconds:
                break
            # Exercise the control socket and the export between samples.
            if d.umld("exec", first, "--", "true", timeout=60).returncode != 0:
                execs_failed += 1
            subprocess.run(["sh", "-c", f"cat {d.mount}/*/status >/dev/null"], check=False)
            step += 1
            time.sleep(max(0.0, start + step * interval - time.monotonic()))
        elapsed = time.monotonic() - start
        cycles = 0
        for i in range(len(defs)):
            try:
                cycles += int((counters / str(i)).read_text())
            except (OSError, ValueError):
                pass
        states = {n: d.table().get(n, ["gone"])[0] for n in defs}
        alive = d.proc.poll() is None
    out: dict[str, Any] = {
        "seconds": seconds,
        "interval": interval,
        "series": series,
        "fds_first_last_max": [series["fds"][0], series["fds"][-1], max(series["fds"])],
        "rss_first_last_max": [
            series["rss_mib"][0],
            series["rss_mib"][-1],
            max(series["rss_mib"]),
        ],
        "zombies_max": max(series["zombies"]),
        "daemon_zombies_max": max(series["daemon_zombies"]),
        "execs_failed": execs_failed,
        "machine_states": states,
        "guest_cycles": cycles,
        "guest_processes_per_second": round(2 * cycles / elapsed, 1),
        "daemon_alive": alive,
    }
    print(f"    fds:     {series['fds']}")
    print(f"    RSS MiB: {series['rss_mib']}")
    print(f"    zombies: {series['zombies']}")
    print(f"    of them below the daemon: {series['daemon_zombies']}")
    print(
        f"    fds first/last/max {out['fds_first_last_max']}, RSS first/last/max "
        f"{out['rss_first_last_max']} MiB, host zombies max {out['zombies_max']} (below the"
        f" daemon: {out['daemon_zombies_max']}), "
        f"exec failures {execs_failed}, machines {sorted(set(states.values()))}; the guests"
        f" started {out['guest_processes_per_second']} processes/s (2 per cycle, {cycles} cycles)",
        flush=True,
    )
    if plot is not None:
        draw(series, plot)
    return out


def draw(series: dict[str, list[float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"    matplotlib is not importable: no plot ({path} not written)")
        return
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, key, label in zip(
        axes,
        ("fds", "rss_mib", "zombies"),
        ("open descriptors", "VmRSS (MiB)", "host zombies"),
        strict=True,
    ):
        ax.plot(series["t"], series[key], marker=".", label="all" if key == "zombies" else None)
        if key == "zombies":
            ax.plot(series["t"], series["daemon_zombies"], marker=".", label="below the daemon")
            ax.legend(loc="upper right")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("umld daemon soak: 5 machines spawning and killing processes")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"    plot: {path}")


# -- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--only", default="a,b,c", help="parts to run (a,b,c)")
    p.add_argument("--machines", type=int, default=20)
    p.add_argument("--procs", type=int, default=50, help="guest processes per machine in (a)")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    p.add_argument("--samples", type=int, default=30, help="status reads timed in (a)")
    p.add_argument("--forks", type=int, default=1000)
    p.add_argument("--threads", type=int, default=200)
    p.add_argument("--soak", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--interval", type=float, default=5.0, help="soak sample interval")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    p.add_argument(
        "--plot", type=Path, default=REPO_DIR / "bench" / "out" / "soak.png", metavar="FILE"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        print("scale.py needs FUSE (/dev/fuse, fusermount3)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    misses: list[str] = []
    with tempfile.TemporaryDirectory(prefix="umld-scale-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            if "a" in parts:
                a = results["a"] = bench_many(
                    tmp, args.machines, args.procs, args.idle, args.samples
                )
                if a["daemon_rss_mib"] >= 200:
                    misses.append(f"(a) RSS {a['daemon_rss_mib']} MiB >= 200")
                if a["status_read_ms_median"] >= 20:
                    misses.append(f"(a) status read {a['status_read_ms_median']} ms >= 20")
            if "b" in parts:
                b = results["b"] = bench_big(tmp, args.forks, args.threads)
                for label in ("forks", "threads"):
                    if not b[label]["ok"]:
                        misses.append(f"(b) {label}: exit {b[label]['returncode']}")
            if "c" in parts:
                c = results["c"] = bench_soak(tmp, args.soak, args.interval, args.plot)
                if not c["daemon_alive"] or c["execs_failed"]:
                    misses.append("(c) the daemon failed during the soak")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures: {args.json}")
    for miss in misses:
        print(f"MISSED: {miss}")
    return 1 if misses and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
