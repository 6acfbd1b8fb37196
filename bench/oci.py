#!/usr/bin/env python3
"""What umld costs as an OCI runtime, against runc.

Usage (from the repository root, as root):

    .venv/bin/python bench/oci.py [--rounds N] [--json FILE]

(a) Start: `RUNTIME run` of one bundle whose program is busybox's `true`
    (a read-only root of busybox and its libraries, the export off), from
    the runtime's start to its exit with the program's status; runc and
    `umld oci` in paired rounds, medians.  This is what an engine pays per
    container on top of its own work.
(b) The seccomp profile: podman's default (taken from a container podman
    creates here, with a store of this script's own) parsed and compiled
    by umld/oci/_seccomp.py: its rules, the program's instructions, and
    the time to compile it (each `create` pays it once).

Nothing is left behind: each round's container is deleted by `run`, and
the work directory is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

REPO_DIR: Final = Path(__file__).resolve().parent.parent
UMLD_OCI: Final = [sys.executable, "-m", "umld", "oci"]
CONF: Final = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
"""


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [w for line in out.splitlines() for w in line.split() if w.startswith("/")]


def make_rootfs(root: Path) -> None:
    """busybox, its applets `sh` and `true`, its libraries."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("bench/oci.py: busybox is not installed (make install installs it)")
    for d in ("bin", "proc", "dev", "sys", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for app in ("sh", "true"):
        (root / "bin" / app).symlink_to("busybox")
    for lib in _libraries(busybox):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)


def write_bundle(bundle: Path, rootfs: Path) -> None:
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": True},
        "process": {"args": ["true"], "env": ["PATH=/bin"], "cwd": "/",
                    "user": {"uid": 0, "gid": 0}},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts")]},
        "annotations": {"umld.mount": "none"},
    }  # fmt: skip
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))


def one_run(argv: Sequence[str], state: Path, bundle: Path, cid: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    t0 = time.perf_counter()
    p = subprocess.run([*argv, "--root", str(state), "run", "--bundle", str(bundle), cid],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench/oci.py: {argv[0]} run failed: {p.stderr.strip()[-300:]}")
    return elapsed


def start_figures(work: Path, rounds: int) -> dict[str, Any]:
    rootfs = work / "rootfs"
    make_rootfs(rootfs)
    bundle = work / "bundle"
    write_bundle(bundle, rootfs)
    runc = shutil.which("runc")
    times: dict[str, list[float]] = {"runc": [], "umld": []}
    for k in range(rounds):
        if runc is not None:
            times["runc"].append(one_run([runc], work / "runc-state", bundle, f"r{k}"))
        times["umld"].append(one_run(UMLD_OCI, work / "umld-state", bundle, f"u{k}"))
        print(f"\r(a) round {k + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out: dict[str, Any] = {k: statistics.median(v) * 1000 for k, v in times.items() if v}
    if "runc" in out:
        out["ratio"] = out["umld"] / out["runc"]
    return out


def podman_profile(work: Path) -> dict[str, Any] | None:
    """podman's default linux.seccomp, from a container it creates here."""
    if shutil.which("podman") is None:
        return None
    (work / "containers.conf").write_text(CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
    base = ["podman", "--storage-driver", "vfs", "--root", str(work / "storage"),
            "--runroot", str(work / "runroot")]  # fmt: skip
    tar = work / "rootfs.tar"
    subprocess.run(["tar", "-C", str(work / "rootfs"), "-cf", str(tar), "."], check=True)

    def podman(*args: str) -> str:
        p = subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=120)
        if p.returncode != 0:
            raise SystemExit(f"bench/oci.py: podman {args[0]}: {p.stderr.strip()[-300:]}")
        return p.stdout.strip()

    podman("import", str(tar), "localhost/umld-bench:1")
    cid = podman("create", "--network", "none", "localhost/umld-bench:1", "true")
    try:
        podman("init", cid)
        found = next((work / "storage").rglob("config.json"), None)
        if found is None:
            return None
        seccomp: dict[str, Any] | None = json.loads(found.read_text())["linux"].get("seccomp")
        return seccomp
    finally:
        subprocess.run([*base, "rm", "-f", cid], capture_output=True, env=env)
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, env=env)


def seccomp_figures(profile: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_DIR))
    from umld.oci import _seccomp

    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        parsed = _seccomp.parse(profile)
        program = _seccomp.compile_profile(parsed)
    return {
        "entries": len(profile.get("syscalls") or []),
        "names": sum(len(s.get("names") or []) for s in profile.get("syscalls") or []),
        "x86_64_numbers": len(parsed.rules["x86_64"]),
        "instructions": len(program) // 8,
        "compile_ms": (time.perf_counter() - t0) / n * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/oci.py", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="paired rounds of (a)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/oci.py: run as root (runc and podman as root are the reference)")
    work = Path(tempfile.mkdtemp(prefix="umld-bench-oci-"))
    os.chmod(work, 0o755)  # runc's container reaches its root by path
    try:
        start = start_figures(work, args.rounds)
        profile = podman_profile(work)
        seccomp = seccomp_figures(profile) if profile else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(a) run of `true`, median of {args.rounds}: umld oci {start['umld']:.1f} ms", end="")
    if "runc" in start:
        print(f", runc {start['runc']:.1f} ms ({start['ratio']:.2f}x)")
    else:
        print(" (runc is not installed)")
    if seccomp:
        print(f"(b) podman's default seccomp profile: {seccomp['entries']} rules, "
              f"{seccomp['names']} names ({seccomp['x86_64_numbers']} x86_64 calls): "
              f"{seccomp['instructions']} BPF instructions, compiled in "
              f"{seccomp['compile_ms']:.1f} ms")  # fmt: skip
    else:
        print("(b) podman is not installed: no default profile to compile")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"start": start, "seccomp": seccomp}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
