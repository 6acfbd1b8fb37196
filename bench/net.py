#!/usr/bin/env python3
"""What the machine's own network costs: TCP throughput, request rate and
connect latency, per ``--net`` mode, against the host's loopback.

Usage (from the repository root):

    .venv/bin/python bench/net.py [--quick] [--mib MIB] [--requests N]
        [--rounds R] [--modes native,host,user,auto,vde] [--json FILE]

One small peer program (PEER below) serves and measures every case, so
that the only difference between two cases is the path between them:

- ``native``: server and client on the host's loopback (the reference).
- ``host``:   the server in ``umld run --net host`` (the host's stack).
- ``user``:   the server in ``umld run --net user --publish P:P``; the
              client on the host's loopback reaches it through pasta's
              port forwarding.
- ``auto``:   the server in ``umld run --net user``; the client reaches it
              through umld's automatic forwarding (umld/core/forwarder.py).
- ``vde``:    server and client in two machines on one VDE switch
              (``vde_switch`` run by this script), ``--net vde:DIR`` with
              addresses of their own: Ethernet frames through the switch.

Per case and round: *stream* sends MIB MiB over one connection and waits
for the server's acknowledgement (MiB/s); *rr* opens N connections, each
sending 64 bytes and reading 64 back (requests/s, and the median connect
time).  Medians over the rounds; ratios are to ``native``.

Every machine runs with the C tracer; the script stops every process it
started, whatever happens.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

REPO_DIR: Final = Path(__file__).resolve().parent.parent
ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
#: The first of the servers' ports: each mode has its own (PORT + its
#: index in MODES), so that one mode's connections in TIME_WAIT, which a
#: forwarder's socket without SO_REUSEADDR leaves for a minute, never stop
#: the next mode's server from binding.
PORT: Final = 47391
MODES: Final = ("native", "host", "user", "auto", "vde")
VDE_NET: Final = ("10.77.0.1", "10.77.0.2")

# The peer: `serve PORT` prints "ready" once it listens, then serves
# connections one at a time: b"S" + 8-byte length, that many bytes, and
# b"ok" back (stream); or b"R" + 63 bytes, and 64 bytes back (rr).
# `stream HOST PORT MIB` and `rr HOST PORT N` print their measurements as
# JSON.
PEER: Final = r"""
import json, socket, statistics, sys, time
def recv_exact(c, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = c.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed early")
        buf += chunk
    return bytes(buf)
def sink(c, n):
    left = n
    while left:
        chunk = c.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("peer closed early")
        left -= len(chunk)
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        # A client that gives up (a probe before the forwarder reached
        # us) must not end or stall the server: each connection has a
        # deadline and its errors end it alone.
        c.settimeout(60)
        with c:
            try:
                kind = recv_exact(c, 1)
                if kind == b"S":
                    sink(c, int.from_bytes(recv_exact(c, 8), "big"))
                    c.sendall(b"ok")
                elif kind == b"R":
                    c.sendall(kind + recv_exact(c, 63))
            except (OSError, EOFError):
                continue
def stream(host, port, mib):
    block = b"x" * (1 << 20)
    t0 = time.perf_counter()
    c = socket.create_connection((host, port))
    c.sendall(b"S" + (mib << 20).to_bytes(8, "big"))
    for _ in range(mib):
        c.sendall(block)
    assert recv_exact(c, 2) == b"ok"
    c.close()
    print(json.dumps({"seconds": time.perf_counter() - t0}))
def rr(host, port, n):
    connects = []
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        c = socket.create_connection((host, port))
        connects.append(time.perf_counter() - a)
        c.sendall(b"R" + b"q" * 63)
        recv_exact(c, 64)
        c.close()
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "connect": statistics.median(connects)}))
cmd = sys.argv[1]
if cmd == "serve":
    serve(int(sys.argv[2]))
elif cmd == "stream":
    stream(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    rr(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


def umld(*options: str) -> list[str]:
    return [sys.executable, "-m", "umld", "run", "--tracer=c", "-C", "/", *options, "--"]


@contextmanager
def started(argv: Sequence[str], *, console: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, ended (SIGTERM, then SIGKILL) however we leave;
    ``console``: its standard input a pipe we hold (vde_switch(1) ends at
    the end of its console)."""
    proc = subprocess.Popen(
        list(argv),
        cwd="/",
        env={**ENV, "PYTHONPATH": str(REPO_DIR)},
        stdin=subprocess.PIPE if console else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_ready(proc: subprocess.Popen[bytes], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"ready\n":
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"net.py: {what} did not start: {err.strip() or line!r}")


def wait_reachable(host: str, port: int, timeout: float = 20.0) -> None:
    """A published port is open on the host before the guest listens (the
    forwarder's listener): wait until a connection gets an answer."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as c:
                c.sendall(b"R" + b"p" * 63)
                if c.recv(64):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"net.py: {host}:{port} never answered")
        time.sleep(0.05)


def measure(
    client: Sequence[str], host: str, port: int, mib: int, requests: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, size in (("stream", mib), ("rr", requests)):
        r = subprocess.run(
            [*client, kind, host, str(port), str(size)],
            cwd="/",
            env={**ENV, "PYTHONPATH": str(REPO_DIR)},
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise SystemExit(f"net.py: the {kind} client failed: {r.stderr.strip()}")
        got = json.loads(r.stdout.strip().splitlines()[-1])
        if kind == "stream":
            out["mib_s"] = mib / got["seconds"]
        else:
            out["req_s"] = requests / got["seconds"]
            out["connect_ms"] = got["connect"] * 1e3
    return out


def case(mode: str, peer: Path, work: Path, mib: int, requests: int) -> dict[str, float]:
    """One round of one mode."""
    py = ["python3", str(peer)]
    port = PORT + MODES.index(mode)
    if mode == "native":
        with started([*py, "serve", str(port)]) as server:
            wait_ready(server, "the native server")
            return measure(py, "127.0.0.1", port, mib, requests)
    if mode in ("host", "user", "auto"):
        options = {
            "host": ["--net", "host"],
            "user": ["--net", "user", "--publish", f"{port}:{port}"],
            "auto": ["--net", "user"],
        }[mode]
        with started([*umld(*options), *py, "serve", str(port)]) as server:
            wait_ready(server, f"the server in --net {mode}")
            wait_reachable("127.0.0.1", port)
            return measure(py, "127.0.0.1", port, mib, requests)
    # vde: a switch of our own, a server machine and a client machine.
    switch = work / "switch"
    with started(["vde_switch", "-s", str(switch)], console=True) as sw:
        deadline = time.monotonic() + 10
        while not (switch / "ctl").exists():
            if sw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("net.py: vde_switch did not start")
            time.sleep(0.02)
        net = ["--net", f"vde:{switch}"]
        address = ["--net-address", f"{VDE_NET[0]}/24"]
        server_argv = [*umld(*net, *address), *py, "serve", str(port)]
        with started(server_argv) as server:
            wait_ready(server, "the server on the switch")
            client = [*umld(*net, "--net-address", f"{VDE_NET[1]}/24"), *py]
            return measure(client, VDE_NET[0], port, mib, requests)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round")
    ap.add_argument("--mib", type=int, default=256, help="MiB per stream (256)")
    ap.add_argument("--requests", type=int, default=2000, help="connections per rr (2000)")
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (5)")
    ap.add_argument("--modes", default=",".join(MODES), help="cases to run")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.mib, args.requests, args.rounds = 32, 200, 1
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode {unknown[0]!r} (modes: {', '.join(MODES)})")
    if "native" not in modes:
        modes.insert(0, "native")
    missing = {"user": "pasta", "vde": "vde_switch"}
    for mode, tool in missing.items():
        if mode in modes and shutil.which(tool) is None:
            print(f"net.py: {tool} is not installed: skipping --net {mode}", file=sys.stderr)
            modes.remove(mode)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="umld-netbench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the guests read the peer program from here
        peer = work / "peer.py"
        peer.write_text(PEER)
        for r in range(args.rounds):
            for mode in modes:  # paired: every mode once per round
                if mode in failed:
                    continue
                print(f"round {r + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
                try:
                    results[mode].append(case(mode, peer, work, args.mib, args.requests))
                except SystemExit as exc:
                    # One mode failing says why and leaves the others' figures.
                    failed[mode] = str(exc).splitlines()[-1] if str(exc) else "failed"
                    print(f"net.py: --net {mode}: {failed[mode]}", file=sys.stderr)
    if "native" in failed:
        raise SystemExit(f"net.py: the native case failed: {failed['native']}")
    summary = {
        mode: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for mode, runs in results.items()
        if mode not in failed
    }
    base = summary["native"]
    print(f"{'mode':8} {'MiB/s':>9} {'ratio':>6} {'req/s':>9} {'ratio':>6} {'connect ms':>10}")
    for mode, fig in summary.items():
        print(
            f"{mode:8} {fig['mib_s']:9.0f} {fig['mib_s'] / base['mib_s']:6.2f}"
            f" {fig['req_s']:9.0f} {fig['req_s'] / base['req_s']:6.2f}"
            f" {fig['connect_ms']:10.3f}"
        )
    for mode, why in failed.items():
        print(f"{mode:8} failed: {why}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rounds": results, "medians": summary, "failed": failed}, indent=1)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
