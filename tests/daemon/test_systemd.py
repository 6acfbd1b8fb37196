"""The systemd units pass ``systemd-analyze verify``.

The units name /usr/local/bin/umld (the link `make install-systemd`
makes); verify checks that every Exec*= command is executable, so the
copies checked here run this checkout's .venv/bin/umld instead.  A
unit's warnings (an unknown key, a misspelt section) do not change the
exit status of verify, so its output must not mention the unit either.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
UMLD = ROOT / ".venv" / "bin" / "umld"


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip(
            "systemd-analyze is missing (Debian package systemd, in the Makefile's apt list)"
        )
    if not UMLD.exists():
        pytest.skip(f"{UMLD} is missing (run `make install`)")
    return path


def localized(src: Path, dest: Path) -> Path:
    """A copy of unit ``src`` at ``dest`` whose umld commands are this checkout's."""
    text = src.read_text()
    assert "/usr/local/bin/umld " in text, f"{src.name} no longer runs /usr/local/bin/umld"
    dest.write_text(re.sub(r"/usr/local/bin/umld\b", str(UMLD), text))
    return dest


def verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )


def assert_clean(r: subprocess.CompletedProcess[str], unit: Path) -> None:
    assert r.returncode == 0, r.stderr + r.stdout
    about_unit = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if unit.name in line or str(unit.parent) in line or "umld" in line
    ]
    assert not about_unit, "\n".join(about_unit)


def test_daemon_unit_verifies(analyze: str, tmp_path: Path) -> None:
    unit = localized(UNITS / "umld.service", tmp_path / "umld.service")
    assert f"ExecStart={UMLD} daemon" in unit.read_text()
    assert_clean(verify(analyze, unit), unit)


def test_template_unit_verifies_as_an_instance(analyze: str, tmp_path: Path) -> None:
    unit = localized(UNITS / "umld@.service", tmp_path / "umld@test.service")
    assert f"ExecStart={UMLD} run" in unit.read_text()
    assert_clean(verify(analyze, unit), unit)


def test_verify_would_notice_a_broken_unit(analyze: str, tmp_path: Path) -> None:
    """The check above is not vacuous: a command that does not exist and
    an unknown key are both caught."""
    text = (UNITS / "umld.service").read_text()
    missing = tmp_path / "missing" / "umld.service"
    missing.parent.mkdir()
    missing.write_text(text.replace("/usr/local/bin/umld", str(tmp_path / "no-such-umld")))
    r = verify(analyze, missing)
    assert r.returncode != 0 and "no-such-umld" in r.stderr, r
    unknown = localized(UNITS / "umld.service", tmp_path / "umld.service")
    unknown.write_text(unknown.read_text().replace("[Service]", "[Service]\nNoSuchKey=1", 1))
    with pytest.raises(AssertionError, match="NoSuchKey"):
        assert_clean(verify(analyze, unknown), unknown)
