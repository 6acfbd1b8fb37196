#!/usr/bin/env python3
"""Conformance: Linux Test Project tests, natively and under umld.

Usage (from the repository root):

    .venv/bin/python conformance/ltp.py [--tests ptrace01,ptrace02,...]
        [--tracers c,python] [--prefix DIR]

LTP (release 20260529, ../shared/anchors/ltp-20260529.tar.xz) is built
once into PREFIX (default conformance/out/ltp) with the anchors' own
script (about 3 minutes on 2 cores).  Each test runs natively and as
`umld run --uid 0 --tracer=T -- TEST` from its own directory; LTP's exit
status says the outcome (lib/tst_test.c): 0 passed, 32 only not
applicable (TCONF), bits 1 TFAIL, 2 TBROK, 4 TWARN.  A table shows both
statuses per test and the lines of each TFAIL/TBROK/TWARN that umld alone
printed.

Exit status: 0 when every test has the native status under every tracer,
apart from KNOWN_DIFFERENCES (listed with their reason), 1 otherwise, 2 when
LTP could not be built or umld not run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

CONF_DIR: Final = Path(__file__).resolve().parent
REPO_DIR: Final = CONF_DIR.parent
ANCHORS: Final = REPO_DIR.parent / "shared" / "anchors"
DEFAULT_TESTS: Final = [f"ptrace{n:02d}" for n in range(1, 12)]
#: What umld's design makes differ, by the status bit it sets.
KNOWN_DIFFERENCES: Final = {
    4: "TWARN from LTP's OOM protection: writing a negative oom_score_adj needs "
    "CAP_SYS_RESOURCE of the host's first user namespace, which a guest's root lacks",
}
_BAD = re.compile(r"\b(TFAIL|TBROK|TWARN)\b")


def build(prefix: Path) -> Path:
    """The directory of the built tests (built first when missing)."""
    bindir = prefix / "testcases" / "bin"
    if not (bindir / "ptrace01").exists():
        script = ANCHORS / "build-ltp.sh"
        if not script.exists():
            sys.exit(f"ltp: {script} is missing (the LTP anchor)")
        print(f"ltp: building LTP into {prefix} (about 3 minutes)", flush=True)
        r = subprocess.run(["bash", str(script), str(prefix)], capture_output=True, text=True)
        if r.returncode != 0 or not (bindir / "ptrace01").exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            print("ltp: building LTP failed: " + " | ".join(tail), file=sys.stderr)
            sys.exit(2)
    return bindir


def run(argv: Sequence[str], cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, LTPROOT=str(cwd.parent.parent), TMPDIR="/tmp")
    try:
        p = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=300, env=env
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out after 300 s"
    return p.returncode, p.stdout + p.stderr


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", default=",".join(DEFAULT_TESTS))
    p.add_argument("--tracers", default="c,python")
    p.add_argument("--prefix", default=str(CONF_DIR / "out" / "ltp"))
    args = p.parse_args(argv)
    bindir = build(Path(args.prefix))
    umld = [sys.executable, "-m", "umld", "run", "--uid", "0"]
    tracers = [t for t in args.tracers.split(",") if t]
    rows: list[list[str]] = []
    differ = 0
    excused: set[int] = set()
    for test in [t for t in args.tests.split(",") if t]:
        native, _ = run([str(bindir / test)], bindir)
        row = [test, str(native)]
        for tracer in tracers:
            status, out = run([*umld, f"--tracer={tracer}", "--", str(bindir / test)], bindir)
            row.append(str(status))
            extra = status & ~native if status >= 0 and native >= 0 else -1
            if status != native:
                if extra > 0 and all(bit in KNOWN_DIFFERENCES for bit in _bits(extra)):
                    excused |= set(_bits(extra))
                else:
                    differ += 1
                    for line in out.splitlines():
                        if _BAD.search(line):
                            print(f"  {test} [{tracer}]: {line.strip()}")
        rows.append(row)
    header = ["test", "native", *[f"umld-{t}" for t in tracers]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for bit in sorted(excused):
        print(f"known difference (status bit {bit}): {KNOWN_DIFFERENCES[bit]}")
    print(f"ltp: {len(rows)} tests, {differ} differ from native")
    return 1 if differ else 0


def _bits(value: int) -> list[int]:
    return [1 << i for i in range(8) if value & (1 << i)]


if __name__ == "__main__":
    sys.exit(main())
