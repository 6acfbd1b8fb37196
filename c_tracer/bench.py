"""Micro-benchmarks of a tracer backend (default: the C one).

    .venv/bin/python c_tracer/bench.py [--backend c|python] [--calls N]
                                       [--loops N] [--pin | --no-pin]

1. Trapped-syscall round trip: a guest makes N raw uname(2) calls; uname is
   trapped and every stop is answered from Python with ``complete`` (after
   writing a fake nodename into the guest's struct utsname, as the guest
   kernel's uname does, in the "+write" line).  Cost per call =
   (traced time - native time) / N.
2. Spawn-heavy guest: ``sh -c 'for i in $(seq 300); do /bin/true; done'``
   natively and traced (empty filter, then a filter trapping only uname,
   which that guest never calls): every fork, exec and exit is a ptrace
   stop, the seccomp filter runs on every call.

``--pin`` puts the tracer and the guest on one CPU (sched_setaffinity is
inherited), ``--no-pin`` leaves them to the scheduler; default runs both.
``--c-only`` also times the same uname loop driven from C (linked with
tracer.c and mem.c directly), i.e. without Python in the loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from umld.tracer import SpawnSpec, TracerPlatform, open_tracer
from umld.tracer.events import Exited, SignalStop, SyscallStop
from umld.tracer.seccomp import build_filter

NR_UNAME = 63
GUEST = r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    struct utsname u;
    for (long i = 0; i < n; i++)
        syscall(SYS_uname, &u);
    return 0;
}
"""


C_LOOP = r"""
#include "umld_tracer.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
int main(int argc, char **argv)
{
    (void)argc;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 63, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct umld_tracer *t = umld_tracer_new();
    char *av[] = {argv[1], argv[2], NULL};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int pid;
    if (umld_spawn(t, argv[1], av, NULL, NULL, f, sizeof f, 1, -1, NULL, 0, 0, &pid))
        return 1;
    struct umld_event ev;
    for (;;) {
        int k = umld_wait(t, &ev, -1);
        if (k == UMLD_EV_SYSCALL)
            umld_complete(t, ev.tid, 0);
        else if (k == UMLD_EV_SIGNAL)
            umld_resume(t, ev.tid, ev.signo, 0);
        else if (k == UMLD_EV_EXITED && ev.tid == pid)
            break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%lld.%09lld\n", ns / 1000000000LL, ns % 1000000000LL);
    umld_close(t);
    return 0;
}
"""


def build_c_loop(tmp: Path) -> Path:
    """The C loop linked with the tracer's own sources, compiled here with
    the build's flags (c_tracer/build_ffi.py)."""
    import runpy

    here = Path(__file__).resolve().parent
    build = runpy.run_path(str(here / "build_ffi.py"))
    sources = [here.parent / s for s in build["TRACER_SOURCES"]]
    src = tmp / "c_loop.c"
    src.write_text(C_LOOP)
    exe = tmp / "c_loop"
    cmd = ["gcc", *build["CFLAGS"], f"-I{here}", "-o", str(exe), str(src), *map(str, sources)]
    subprocess.run([*cmd, "-lpthread"], check=True)
    return exe


def build_guest(tmp: Path) -> Path:
    src = tmp / "uname_loop.c"
    src.write_text(GUEST)
    exe = tmp / "uname_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def native(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def traced(backend: str, argv: list[str], flt: bytes, write: bool) -> tuple[float, int]:
    """Run argv under a tracer; return (seconds, trapped stops)."""
    t: TracerPlatform = open_tracer(backend)
    stops = 0
    node = b"umld-guest\0"
    try:
        path = os.fsencode(argv[0])
        t0 = time.perf_counter()
        pid = t.spawn(SpawnSpec(path=path, argv=[os.fsencode(a) for a in argv], seccomp_filter=flt))
        wait, complete, resume = t.wait, t.complete, t.resume
        write_memory = t.write_memory
        while True:
            ev = wait()
            if type(ev) is SyscallStop:
                stops += 1
                if write:
                    write_memory(ev.tid, ev.args[0] + 65, node)
                complete(ev.tid, 0)
            elif type(ev) is SignalStop:
                resume(ev.tid, ev.signo)
            elif type(ev) is Exited and ev.tid == pid:
                break
        return time.perf_counter() - t0, stops
    finally:
        t.close()


def best(fn: Callable[[], float], loops: int) -> float:
    return min(fn() for _ in range(loops))


def run(backend: str, calls: int, loops: int, guest: Path, c_loop: Path | None) -> None:
    flt = build_filter({NR_UNAME})
    argv = [str(guest), str(calls)]
    nat = best(lambda: native(argv), loops)
    print(f"  native {calls} uname:            {nat * 1e3:8.1f} ms")
    if c_loop is not None:
        vals = [
            float(subprocess.run([c_loop, *argv], check=True, capture_output=True).stdout)
            for _ in range(loops)
        ]
        tr = min(vals)
        per = (tr - nat) / calls * 1e6
        print(
            f"  C-only loop (umld_complete):     {tr * 1e3:8.1f} ms  -> {per:6.2f} us/trapped call"
        )
    for write in (False, True):
        times = []
        for _ in range(loops):
            sec, stops = traced(backend, argv, flt, write)
            assert stops == calls, (stops, calls)
            times.append(sec)
        tr = min(times)
        per = (tr - nat) / calls * 1e6
        label = "complete+write" if write else "complete"
        print(
            f"  traced ({label:14s}):      {tr * 1e3:8.1f} ms  -> {per:6.2f} us/trapped call"
            f"  (median {(statistics.median(times) - nat) / calls * 1e6:.2f})"
        )
    sh = ["/bin/sh", "-c", "for i in $(seq 300); do /bin/true; done"]
    # Interleaved, best of several: this workload is short and the VM noisy.
    nat_t: list[float] = []
    tr_t: dict[str, list[float]] = {"no filter": [], "uname filter": []}
    for _ in range(max(loops, 5)):
        nat_t.append(native(sh))
        for name, f in (("no filter", b""), ("uname filter", flt)):
            tr_t[name].append(traced(backend, sh, f, False)[0])
    nat = min(nat_t)
    print(f"  native sh 300x /bin/true:        {nat * 1e3:8.1f} ms")
    for name, vals in tr_t.items():
        tr = min(vals)
        print(
            f"  traced sh ({name:12s}):        {tr * 1e3:8.1f} ms  -> x{tr / nat:.2f},"
            f" +{(tr - nat) / 300 * 1e6:.0f} us per fork+exec+exit"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="c")
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--c-only", action="store_true")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--pin", dest="pin", action="store_const", const=[True])
    g.add_argument("--no-pin", dest="pin", action="store_const", const=[False])
    args = ap.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        guest = build_guest(Path(tmp))
        c_loop = build_c_loop(Path(tmp)) if args.c_only else None
        for pin in args.pin or [True, False]:
            os.sched_setaffinity(0, {cpus[0]} if pin else set(cpus))
            where = f"pinned to CPU {cpus[0]}" if pin else f"unpinned ({len(cpus)} CPUs)"
            print(f"backend {args.backend}, {where}:")
            run(args.backend, args.calls, args.loops, guest, c_loop)
        os.sched_setaffinity(0, set(cpus))


if __name__ == "__main__":
    main()
