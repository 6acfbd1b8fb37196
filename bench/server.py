#!/usr/bin/env python3
"""The server case: apache2 serving a static page, requests per second
measured with ab(1), natively and under umld.

Usage (from the repository root):

    .venv/bin/python bench/server.py [--quick] [--requests N]
        [--concurrency C] [--rounds R] [--keepalive] [--json FILE]

Cases, each the same apache2 (Debian's, event MPM) with the same
configuration written by this script, listening on the host's loopback:

- ``native``: apache2 run directly.
- ``umld``:   ``umld run --net host -- apache2 ...``: only the tracer and
              the guest kernel differ (``--net host``, so that no network
              path is measured as well; bench/net.py measures those).
- ``umld-mount``: the same with ``--mount DIR``: the machine exported
              live, whose connection views make accept(2) stop in the
              tracer.

ab opens a new connection per request unless ``--keepalive``: every
request is an accept(2) in the server, the worst case for a tracer.
Rounds are paired (every case once per round) and the medians reported
with their ratio to native.  Every process started is stopped, whatever
happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
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
ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LANG": "C"}
APACHE: Final = "/usr/sbin/apache2"
MODULES: Final = Path("/usr/lib/apache2/modules")
PORT: Final = 47491
CASES: Final = ("native", "umld", "umld-mount")
PAGE: Final = b"<html><body>" + b"umld bench page " * 64 + b"</body></html>\n"


def config(work: Path, port: int) -> Path:
    """An apache2.conf of our own: every path in ``work``, no Debian
    envvars, the event MPM with its defaults."""
    docs = work / "htdocs"
    docs.mkdir(exist_ok=True)
    (docs / "index.html").write_bytes(PAGE)
    user = "" if os.geteuid() else "User www-data\nGroup www-data\n"
    conf = work / f"apache2-{port}.conf"
    conf.write_text(
        f"ServerRoot {work}\n"
        f"ServerName 127.0.0.1\n"
        f"Listen 127.0.0.1:{port}\n"
        f"PidFile {work}/apache2-{port}.pid\n"
        f"DefaultRuntimeDir {work}\n"
        f"Mutex file:{work} default\n"
        f"ErrorLog {work}/error-{port}.log\n"
        f"LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n"
        f"LoadModule authz_core_module {MODULES}/mod_authz_core.so\n"
        f"LoadModule dir_module {MODULES}/mod_dir.so\n"
        f"LoadModule mime_module {MODULES}/mod_mime.so\n"
        f"{user}"
        f"DocumentRoot {docs}\n"
        f"<Directory {docs}>\n  Require all granted\n</Directory>\n"
        f"DirectoryIndex index.html\n"
        f"TypesConfig /etc/mime.types\n"
        f"KeepAlive On\n"
    )
    return conf


def umld(*options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "umld",
        "run",
        "--tracer=c",
        "-C",
        "/",
        "--net",
        "host",
        *options,
        "--",
    ]


@contextmanager
def started(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, ended (SIGTERM, then SIGKILL) however we leave."""
    proc = subprocess.Popen(
        list(argv),
        cwd="/",
        env={**ENV, "PYTHONPATH": str(REPO_DIR)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_serving(
    proc: subprocess.Popen[bytes], port: int, log: Path, what: str, timeout: float = 30
) -> None:
    """Until the page comes back over a connection (apache2 listens before
    its children accept)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if log.exists():
                err += log.read_text(errors="replace")
            last = err.strip().splitlines()[-1] if err.strip() else f"status {proc.returncode}"
            raise SystemExit(f"{what} exited: {last}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                if b"200 OK" in c.recv(4096):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} never served 127.0.0.1:{port}")
        time.sleep(0.05)


def ab(port: int, requests: int, concurrency: int, keepalive: bool) -> float:
    argv = ["ab", "-q", "-n", str(requests), "-c", str(concurrency)]
    if keepalive:
        argv.append("-k")
    r = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/index.html"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    failed = re.search(r"^Failed requests:\s+(\d+)", r.stdout, re.M)
    rate = re.search(r"^Requests per second:\s+([\d.]+)", r.stdout, re.M)
    if r.returncode != 0 or rate is None or (failed and int(failed.group(1))):
        why = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:]
        raise SystemExit(f"ab failed: {why}")
    return float(rate.group(1))


def case(name: str, work: Path, port: int, args: argparse.Namespace) -> float:
    conf = config(work, port)
    server = [APACHE, "-f", str(conf), "-DFOREGROUND"]
    if name == "native":
        argv = server
    elif name == "umld":
        argv = [*umld(), *server]
    else:
        mnt = work / f"mnt-{port}"
        mnt.mkdir(exist_ok=True)
        argv = [*umld("--mount", str(mnt)), *server]
    with started(argv) as proc:
        wait_serving(proc, port, work / f"error-{port}.log", f"apache2 ({name})")
        ab(port, min(200, args.requests), args.concurrency, args.keepalive)  # warm-up
        return ab(port, args.requests, args.concurrency, args.keepalive)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, one round")
    ap.add_argument("--requests", type=int, default=20000, help="requests per measure (20000)")
    ap.add_argument("--concurrency", type=int, default=8, help="ab's -c (8)")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (3)")
    ap.add_argument("--keepalive", action="store_true", help="ab -k: connections reused")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 3000, 1
    for tool in (APACHE, "ab"):
        if shutil.which(tool) is None:
            raise SystemExit(f"server.py: {tool} is not installed (make .stamp-bench installs it)")
    results: dict[str, list[float]] = {c: [] for c in CASES}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="umld-serverbench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apache2's children (www-data) read the page
        for r in range(args.rounds):
            for i, name in enumerate(CASES):
                if name in failed:
                    continue
                print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                # A port per case and round: no TIME_WAIT of the last one in the way.
                port = PORT + r * len(CASES) + i
                try:
                    results[name].append(case(name, work, port, args))
                except SystemExit as exc:
                    failed[name] = str(exc)
                    print(f"server.py: {name}: {failed[name]}", file=sys.stderr)
    if "native" in failed:
        raise SystemExit(f"server.py: the native case failed: {failed['native']}")
    medians = {c: statistics.median(v) for c, v in results.items() if v}
    base = medians["native"]
    mode = "keep-alive" if args.keepalive else "a connection per request"
    print(f"apache2, ab -n {args.requests} -c {args.concurrency}, {mode}")
    print(f"{'case':11} {'req/s':>9} {'ratio':>6}")
    for name, rate in medians.items():
        print(f"{name:11} {rate:9.0f} {rate / base:6.2f}")
    for name, why in failed.items():
        print(f"{name:11} failed: {why}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rounds": results, "medians": medians, "failed": failed}, indent=1)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
