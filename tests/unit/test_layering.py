"""The layers import only what they may (trio's test_exports style):
the tracer knows nothing of the guest kernel; the export uses only
umld.core's public API."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "umld"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = PKG.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path, module: str | None = None) -> set[str]:
    """The modules ``path`` (module ``module``: by default its name in the
    package) imports, anywhere in it, lazily too: relative imports
    resolved, and ``from PKG import SUBMODULE`` counted as an import of
    PKG.SUBMODULE."""
    out: set[str] = set()
    package = module or _module_of(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            for a in node.names:
                if _is_module(f"{module}.{a.name}"):
                    out.add(f"{module}.{a.name}")
    return out


def _files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def _umld(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "umld" or m.startswith("umld.")}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_tracer_knows_nothing_of_core() -> None:
    files = _files("tracer")
    assert files
    for f in files:
        bad = {m for m in _imports(f) if _within(m, "umld.core") or _within(m, "umld.fusefs")}
        assert not bad, f"{f} imports {bad}"


def test_core_uses_only_the_tracer_interface() -> None:
    allowed = {"umld.tracer", "umld.tracer.platform", "umld.tracer.events", "umld.tracer.seccomp"}
    files = _files("core")
    assert files
    for f in files:
        bad = {m for m in _imports(f) if _within(m, "umld.tracer") and m not in allowed}
        assert not bad, f"{f} imports {bad}"


def test_core_never_imports_the_export() -> None:
    for f in _files("core"):
        bad = {m for m in _imports(f) if _within(m, "umld.fusefs")}
        assert not bad, f"{f} imports {bad}"


def test_fusefs_uses_only_the_public_core_api() -> None:
    """umld.fusefs imports umld.core (the package, not its modules),
    umld.errors and itself: nothing else of umld."""
    files = _files("fusefs")
    assert files
    for f in files:
        bad = {
            m
            for m in _umld(_imports(f))
            if m not in ("umld.core", "umld.errors") and not _within(m, "umld.fusefs")
        }
        assert not bad, f"{f} imports {bad}"


def test_the_import_scan_sees_every_form(tmp_path: Path) -> None:
    """_imports resolves what the rules above depend on."""
    probe = tmp_path / "_probe.py"
    probe.write_text(
        "from __future__ import annotations\n"
        "import umld.daemon\n"
        "from umld import cli\n"
        "from umld.core import host, Config\n"
        "from . import _node\n"
        "from ..tracer import events\n"
        "from .. import _api\n"
        "def lazy():\n"
        "    from umld.core.kernel import GuestKernel\n"
    )
    found = _umld(_imports(probe, "umld.fusefs._probe"))
    assert found == {
        "umld",
        "umld.daemon",
        "umld.cli",
        "umld.core",
        "umld.core.host",
        "umld.fusefs",
        "umld.fusefs._node",
        "umld.tracer",
        "umld.tracer.events",
        "umld._api",
        "umld.core.kernel",
    }, found


def test_only_the_cffi_modules_import_cffi() -> None:
    for f in PKG.rglob("*.py"):
        if f.name in ("ptrace_c.py", "_cffi.py"):
            continue
        assert not {m for m in _imports(f) if m.startswith("cffi") or m.endswith("_c_tracer")}, f


def test_nothing_imports_the_command_line() -> None:
    """umld.cli depends on everything; nothing depends on it (the package's
    __main__ runs it, and the warm umld, which runs it for each run)."""
    for f in PKG.rglob("*.py"):
        if f.name == "__main__.py" or f in (PKG / "cli.py", PKG / "_warm.py"):
            continue
        assert "umld.cli" not in _imports(f), f


def _privates(files: list[Path]) -> set[str]:
    """Private attribute and method names that the classes of ``files`` define."""
    names: set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif (
                        isinstance(item, ast.Attribute)
                        and isinstance(item.value, ast.Name)
                        and item.value.id == "self"
                        and isinstance(item.ctx, ast.Store)
                    ):
                        names.add(item.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _outside_core() -> list[Path]:
    return [f for f in PKG.rglob("*.py") if not _within(_module_of(f), "umld.core")]


def test_no_private_attribute_of_a_core_object_is_reached_from_outside() -> None:
    """Outside umld/core, ``something._x`` where ``_x`` is private to a core
    class appears only on the module's own objects (self, cls)."""
    # A name private to a class outside core too (an EventLog's _ready and
    # the Host's) cannot tell whose it is: those are left out.
    privates = _privates(_files("core")) - _privates(_outside_core())
    assert "_values" in privates and "_spawn_limits" in privates  # the scan sees core's
    for f in _outside_core():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in privates
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                raise AssertionError(f"{f}:{node.lineno} reaches {node.attr}")


def test_the_export_and_the_api_never_reach_through_the_control_to_the_kernel() -> None:
    for f in [*_files("fusefs"), PKG / "_api.py", PKG / "daemon.py", PKG / "top.py"]:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Attribute) and node.attr == "kernel":
                raise AssertionError(f"{f}:{node.lineno} reaches .kernel")
