#!/usr/bin/env python3
"""What the UI export (umld run --tty) costs, against tmux natively.

Usage (from the repository root):

    .venv/bin/python bench/tty.py [--quick] [--mb MB] [--keys N]
        [--seconds S] [--json FILE]

(a) Output: a guest writing MB megabytes of text (50; `seq 1 N`) to its
    terminal, natively as the program of a detached tmux session of 80x24
    (tmux parses every byte into its screen, as umld's emulator does) and
    as `umld run --tty` without a terminal of its own; wall time from
    start to the program's end (tmux: the pane is dead), paired rounds,
    medians.  Target: umld no slower than tmux (ratio <= 1.0).
(b) Key latency: `cat` on the guest's terminal; the host writes a fresh
    word to ui/keys and polls ui/screen until the echo is there; median
    and p90 over N words.  Target: median < 20 ms.
(c) Screen reads: the guest redraws its screen continuously (a Python
    loop drawing a clock at the top left every millisecond, and a shell
    loop spawning date(1) for every frame); one host process reads
    ui/screen as fast as it can for S seconds.  Target: >= 1,000 reads/s.

Every machine runs with the C tracer; this process only reads and writes
the mount, and always ends umld and removes a mount left behind.
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
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from export import mounted  # bench/export.py: is a path a mount point

REPO_DIR: Final = Path(__file__).resolve().parent.parent
TMUX: Final = shutil.which("tmux")
ENV: Final = {
    "TERM": "xterm-256color",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/",
    "LANG": "C.UTF-8",
}
# Two programs that redraw: one that only draws (a clock at the top left,
# a thousand times a second), and a shell loop that spawns date(1) for
# every frame (its forks and execs are the tracer's work too).
REDRAWS: Final = {
    "a drawing loop": [
        "python3", "-c",
        "import sys, time\nwhile True:\n"
        "    sys.stdout.write('\\033[H%.6f' % time.time()); sys.stdout.flush(); time.sleep(0.001)",
    ],
    "a shell loop spawning date": [
        "sh", "-c", "while :; do printf '\\033[H%s' \"$(date +%s.%N)\"; done",
    ],
}  # fmt: skip


def seq_count(megabytes: float) -> int:
    """The N for which `seq 1 N` writes at least ``megabytes`` MB."""
    total, n, digits = 0, 0, 1
    while True:
        width = digits + 1  # the digits and a newline
        block = 9 * 10 ** (digits - 1)
        if total + block * width >= megabytes * 1e6:
            return n + int((megabytes * 1e6 - total) // width) + 1
        total += block * width
        n += block
        digits += 1


class Machine:
    """`umld run --tracer=c --tty --mount=MNT -- CMD`, ended on exit."""

    def __init__(self, cmd: Sequence[str], mnt: Path) -> None:
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "umld", "run", "--tracer=c", "--tty", f"--mount={mnt}",
                "-C", "/", "--", *cmd]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            cwd="/",
            env={**ENV, "PYTHONPATH": str(REPO_DIR)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Machine:
        deadline = time.monotonic() + 20
        while not (self.mnt / "ui" / "screen").exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise SystemExit(f"umld ended with status {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the export at {self.mnt} never came up")
            time.sleep(0.01)
        return self

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

    def screen(self) -> str:
        with open(self.mnt / "ui" / "screen") as f:
            return f.read()

    def keys(self, text: str) -> None:
        with open(self.mnt / "ui" / "keys", "w") as f:
            f.write(text)


# -- (a) output ----------------------------------------------------------------


def tmux_run(work: Path, cmd: Sequence[str]) -> float:
    """Wall time of ``cmd`` as a detached tmux session's program, until its
    pane is dead."""
    sock = work / "bench-tmux.sock"
    tmux = [TMUX or "tmux", "-S", str(sock), "-f", "/dev/null"]

    def query() -> str:
        r = subprocess.run(
            [*tmux, "display-message", "-p", "-t", "b", "#{pane_dead}"],
            capture_output=True,
            text=True,
            env=ENV,
        )
        return r.stdout.strip()

    t0 = time.monotonic()
    subprocess.run(
        [*tmux, "start-server", ";", "set-option", "-g", "remain-on-exit", "on", ";",
         "new-session", "-d", "-s", "b", "-x", "80", "-y", "24", "--", *cmd],
        check=True, env=ENV, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    while query() != "1":
        time.sleep(0.002)
    elapsed = time.monotonic() - t0
    subprocess.run([*tmux, "kill-server"], env=ENV, check=False)
    return elapsed


def umld_run(work: Path, cmd: Sequence[str]) -> float:
    mnt = work / "out-mnt"
    t0 = time.monotonic()
    m = Machine(cmd, mnt)
    status = m.proc.wait()
    elapsed = time.monotonic() - t0
    m.stop()
    if status != 0:
        raise SystemExit(f"umld --tty {' '.join(cmd)}: status {status}")
    return elapsed


def output(work: Path, megabytes: float, rounds: int) -> dict[str, Any]:
    n = seq_count(megabytes)
    cmd = ["seq", "1", str(n)]
    tmux_s, umld_s = [], []
    for i in range(rounds):
        tmux_s.append(tmux_run(work, cmd))
        umld_s.append(umld_run(work, cmd))
        print(
            f"  (a) round {i + 1}/{rounds}: tmux {tmux_s[-1]:.2f} s, umld --tty {umld_s[-1]:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    t, u = statistics.median(tmux_s), statistics.median(umld_s)
    return {"megabytes": megabytes, "seq_n": n, "tmux_s": t, "umld_s": u, "ratio": u / t}


# -- (b) key latency -------------------------------------------------------------


def key_latency(work: Path, count: int) -> dict[str, float]:
    samples = []
    with Machine(["cat"], work / "keys-mnt") as m:
        for i in range(count):
            word = f"w{i:04d}x{os.getpid()}"
            t0 = time.monotonic()
            m.keys(word + " Enter\n")
            deadline = t0 + 5
            while word not in m.screen():
                if time.monotonic() > deadline:
                    raise SystemExit(f"(b) the echo of {word} never reached ui/screen")
            samples.append(time.monotonic() - t0)
    samples.sort()
    return {
        "count": count,
        "median_ms": statistics.median(samples) * 1e3,
        "p90_ms": samples[int(0.9 * (len(samples) - 1))] * 1e3,
    }


# -- (c) screen reads ------------------------------------------------------------


def screen_reads(work: Path, seconds: float) -> dict[str, dict[str, float]]:
    out = {}
    for i, (name, cmd) in enumerate(REDRAWS.items()):
        with Machine(cmd, work / f"reads-mnt-{i}") as m:
            path = m.mnt / "ui" / "screen"
            changed, last, reads = 0, "", 0
            end = time.monotonic() + seconds
            start = time.monotonic()
            while time.monotonic() < end:
                with open(path) as f:
                    text = f.read()
                reads += 1
                if text != last:
                    changed += 1
                    last = text
            elapsed = time.monotonic() - start
        out[name] = {"reads_per_s": reads / elapsed, "distinct_screens": changed}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/tty.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 MB, 1 round, 20 keys, 2 s")
    p.add_argument("--mb", type=float, help="megabytes for (a) (default 50)")
    p.add_argument("--rounds", type=int, help="paired rounds of (a) (default 3)")
    p.add_argument("--keys", type=int, help="words typed for (b) (default 100)")
    p.add_argument("--seconds", type=float, help="duration of (c) (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if TMUX is None:
        print("bench/tty.py: tmux is not installed (make install)", file=sys.stderr)
        return 2
    mb = args.mb or (10 if args.quick else 50)
    rounds = args.rounds or (1 if args.quick else 3)
    keys = args.keys or (20 if args.quick else 100)
    seconds = args.seconds or (2 if args.quick else 5)
    work = Path(tempfile.mkdtemp(prefix="umld-bench-tty-"))
    try:
        print(f"(a) {mb:g} MB of seq output, tmux vs umld --tty ...", file=sys.stderr)
        a = output(work, mb, rounds)
        print(f"(b) {keys} words through ui/keys ...", file=sys.stderr)
        b = key_latency(work, keys)
        print(f"(c) ui/screen reads for {seconds:g} s ...", file=sys.stderr)
        c = screen_reads(work, seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\numld UI export (umld run --tty), C tracer")
    print(
        f"(a) {a['megabytes']:g} MB to the terminal (seq 1 {a['seq_n']}): tmux {a['tmux_s']:.2f} s,"
        f" umld {a['umld_s']:.2f} s, ratio {a['ratio']:.2f}"
        f"  (target <= 1.00: {'MET' if a['ratio'] <= 1.0 else 'MISSED'})"
    )
    print(
        f"(b) ui/keys -> ui/screen echo: median {b['median_ms']:.1f} ms, p90 {b['p90_ms']:.1f} ms"
        f" over {b['count']}  (target median < 20 ms: "
        f"{'MET' if b['median_ms'] < 20 else 'MISSED'})"
    )
    for name, r in c.items():
        print(
            f"(c) ui/screen reads while {name} redraws: {r['reads_per_s']:,.0f}/s,"
            f" {r['distinct_screens']:.0f} distinct screens seen  (target >= 1,000/s: "
            f"{'MET' if r['reads_per_s'] >= 1000 else 'MISSED'})"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"output": a, "keys": b, "reads": c}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
