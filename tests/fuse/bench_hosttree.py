"""Throughput of a HostTree: a 256 MiB file written and read through the
mount, against the same directly on the host directory.

    .venv/bin/python -m tests.fuse.bench_hosttree [--mib 256] [--chunk-kib 1024]

Both sides go to the page cache (nothing is synced or dropped), which is
the hardest comparison for FUSE: the host side is a plain memory copy.
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

from tests.fuse.conftest import start_server, stop_server


def _write(path: Path, total: int, chunk: int) -> None:
    block = os.urandom(chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def _rate(fn: Callable[[], None], total: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, in MB/s (10^6 bytes)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return total / best / 1e6


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    args = parser.parse_args(argv)
    total, chunk = args.mib << 20, args.chunk_kib << 10

    work = Path(tempfile.mkdtemp(prefix="umld-bench-"))
    host, mnt = work / "host", work / "mnt"
    host.mkdir()
    mnt.mkdir()
    server = start_server(mnt, host)
    try:
        direct, exported = host / "direct.bin", mnt / "host" / "exported.bin"
        rows = []
        for what, fn in (("write", _write), ("read", _read)):
            d = _rate(lambda: fn(direct, total, chunk), total)  # noqa: B023
            f = _rate(lambda: fn(exported, total, chunk), total)  # noqa: B023
            rows.append((what, d, f))
        for tool, argv_ in (
            ("cat >/dev/null", ["cat", str(exported)]),
            ("cp to the host", ["cp", str(exported), str(host / "copy.bin")]),
        ):
            t0 = time.perf_counter()
            subprocess.run(argv_, stdout=subprocess.DEVNULL, check=True)
            rows.append((tool, float("nan"), total / (time.perf_counter() - t0) / 1e6))
    finally:
        stop_server(server, mnt)
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.mib} MiB file, {args.chunk_kib} KiB per read/write call (best of 3), MB/s:")
    print(f"{'':16} {'direct':>10} {'via FUSE':>10} {'ratio':>7}")
    for what, d, f in rows:
        ratio = f"{f / d:6.0%}" if d == d else ""
        direct_s = f"{d:10.0f}" if d == d else f"{'':10}"
        print(f"{what:16} {direct_s} {f:10.0f} {ratio:>7}")


if __name__ == "__main__":
    main(sys.argv[1:])
