"""Throughput of a HostTree: a 256 MiB file written and read through the
mount, against the same directly on the host directory.

    .venv/bin/python -m tests.fuse.bench_hosttree [--mib 256] [--chunk-kib 1024]

Everything stays in the page cache (nothing is synced or dropped), which is
the hardest comparison for FUSE: the host side is a plain memory copy,
while every request through the mount is two copies (host file to the
daemon, daemon to the reader) and a round trip between two processes.
Writes overwrite an existing file, so that block allocation (whose cost
varies a lot from run to run) is not measured; the cp rows do create
their files.  Each figure is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.fuse.conftest import mounted, start_server, stop_server


def _write(path: Path, total: int, chunk: int) -> None:
    block = os.urandom(chunk)
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(total // chunk):
            os.write(fd, block)
    finally:
        os.close(fd)


def _read(path: Path, total: int, chunk: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    got = 0
    try:
        while n := len(os.read(fd, chunk)):
            got += n
    finally:
        os.close(fd)
    if got != total:
        raise SystemExit(f"read {got} bytes of {path}, expected {total}")


def _best(fn: Callable[[], None], total: int, repeat: int) -> float:
    """The best of ``repeat`` runs of ``fn``, in MB/s (10^6 bytes)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return total / best / 1e6


def _tool(*argv: str | Path) -> Callable[[], None]:
    def run() -> None:
        subprocess.run([str(a) for a in argv], stdout=subprocess.DEVNULL, check=True)

    return run


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    total, chunk, repeat = args.mib << 20, args.chunk_kib << 10, args.repeat

    work = Path(tempfile.mkdtemp(prefix="umld-bench-"))
    host, mnt, outside = work / "host", work / "mnt", work / "outside"
    for path in (host, mnt, outside):
        path.mkdir()
    source = outside / "source.bin"
    source.write_bytes(os.urandom(1 << 20) * (total >> 20))
    (host / "file.bin").write_bytes(source.read_bytes())
    server = start_server(mnt, host)
    direct, exported = host, mnt / "host"

    def cases(top: Path) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("write", lambda: _write(top / "file.bin", total, chunk)),
            ("read", lambda: _read(top / "file.bin", total, chunk)),
            ("cat >/dev/null", _tool("cat", top / "file.bin")),
            ("cp into the tree", _tool("cp", source, top / "copy.bin")),
            ("cp out of it", _tool("cp", top / "file.bin", outside / "out.bin")),
        ]

    rows: list[tuple[str, float, float]] = []
    try:
        for (what, on_host), (_, through) in zip(cases(direct), cases(exported), strict=True):
            rows.append((what, _best(on_host, total, repeat), _best(through, total, repeat)))
    finally:
        stop_server(server, mnt)
        if not mounted(mnt):  # never walk into a mount that is still there
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.mib} MiB, {args.chunk_kib} KiB per read/write call, best of {repeat}, "
        f"{os.cpu_count()} CPUs, MB/s:"
    )
    print(f"{'':18} {'direct':>8} {'via FUSE':>9} {'ratio':>6}")
    for what, d, f in rows:
        print(f"{what:18} {d:8.0f} {f:9.0f} {f / d:6.0%}")


if __name__ == "__main__":
    main(sys.argv[1:])
