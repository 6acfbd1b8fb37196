"""The layers import only what they may (trio's test_exports style):
the tracer knows nothing of the guest kernel; the export uses only
umld.core's public API."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "umld"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_tracer_knows_nothing_of_core() -> None:
    files = _files("tracer")
    assert files
    for f in files:
        bad = {m for m in _imports(f) if m.startswith(("umld.core", "umld.fusefs"))}
        assert not bad, f"{f} imports {bad}"


def test_core_uses_only_the_tracer_interface() -> None:
    allowed = {"umld.tracer", "umld.tracer.platform", "umld.tracer.events", "umld.tracer.seccomp"}
    for f in _files("core"):
        bad = {m for m in _imports(f) if m.startswith("umld.tracer") and m not in allowed}
        assert not bad, f"{f} imports {bad}"
        assert not {m for m in _imports(f) if m.startswith("umld.fusefs")}


def test_fusefs_uses_only_the_public_core_api() -> None:
    for f in _files("fusefs"):
        bad = {
            m for m in _imports(f) if (m.startswith("umld.core.") or m.startswith("umld.tracer"))
        }
        assert not bad, f"{f} imports {bad}"


def test_only_the_cffi_modules_import_cffi() -> None:
    for f in PKG.rglob("*.py"):
        if f.name in ("ptrace_c.py", "_cffi.py"):
            continue
        assert not {m for m in _imports(f) if m.startswith("cffi") or m.endswith("_c_tracer")}, f
