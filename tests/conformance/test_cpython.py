"""CPython's own regression tests give the same outcome under umld as
natively (the `make conformance` run, for the default backend)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.uses_ptrace, pytest.mark.slow]


def test_cpython_regression_tests_match_native() -> None:
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "conformance" / "run.py"),
            "--tracer",
            "c",
            "--jobs",
            "2",
            "--strict",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if p.returncode == 2:
        pytest.skip(f"conformance run cannot be set up here: {p.stdout[-500:]}{p.stderr[-500:]}")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "RESULT: umld --tracer=c matches native" in p.stdout
