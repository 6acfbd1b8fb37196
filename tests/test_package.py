"""The installable package: a wheel built from the project carries both C
parts (the cffi tracer module and umld-sandbox, executable, beside
sandbox.py), and the checkout's own build is the same one.

The full check -- the wheel installed into a fresh venv outside the
checkout and tested there -- is scripts/test-wheel.sh (CI runs it).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_the_c_tracer_and_the_sandbox(tmp_path: Path) -> None:
    # A copy of the project, so that the build leaves the checkout alone.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "umld-sandbox"
        ),
    )
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    [wheel] = tmp_path.glob("umld-*.whl")
    # Compiled parts make it a wheel of this interpreter and platform.
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    [so] = [n for n in modes if n.startswith("umld/tracer/_c_tracer.") and n.endswith(".so")]
    sandbox = "umld/core/umld-sandbox"
    assert sandbox in modes, sorted(modes)
    assert modes[sandbox] & stat.S_IXUSR and modes[so] & stat.S_IRUSR
    assert "umld/core/sandbox.py" in modes


def test_the_checkout_runs_its_own_build() -> None:
    """`make install` is an editable install of the same build: the C parts
    sit in the tree, where the modules find them."""
    from umld.core import sandbox
    from umld.tracer import _c_tracer  # type: ignore[attr-defined]

    assert Path(sandbox.SANDBOX).parent == ROOT / "umld" / "core"
    assert Path(sandbox.SANDBOX).stat().st_mode & stat.S_IXUSR
    assert Path(_c_tracer.__file__).parent == ROOT / "umld" / "tracer"
