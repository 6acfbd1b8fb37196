"""The public API (what ``umld`` exports, trio's test_exports style) and
the API end to end: real machines under real ptrace, in this process,
through ``umld.open_machine`` (trio) and ``umld.machine`` (sync).

Machines here are named and keep their state in the test's temporary
directory, so they never meet another process's machines.
"""

from __future__ import annotations

import ast
import itertools
import os
import signal
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

import umld

ROOT = Path(__file__).resolve().parents[2]

#: The public API.  A change to it is a change to this list too.
PUBLIC = [
    "CompletedProcess",
    "Config",
    "GuestError",
    "GuestEvent",
    "LiveConfig",
    "Machine",
    "ProcessInfo",
    "RunResult",
    "RunningMachine",
    "SettingError",
    "SyncMachine",
    "UmldError",
    "UsageError",
    "machine",
    "open_machine",
]

#: Modules that are umld's own business: nothing outside umld/ imports them.
PRIVATE_MODULES = ("umld._api", "umld.core.host")


# -- the exports ----------------------------------------------------------------


def test_all_is_the_public_api() -> None:
    assert umld.__all__ == PUBLIC
    assert len(set(umld.__all__)) == len(umld.__all__)


def test_every_exported_name_resolves() -> None:
    for name in umld.__all__:
        obj = getattr(umld, name)
        assert obj is not None, name
        assert getattr(obj, "__name__", name) == name, (name, obj)
    namespace: dict[str, object] = {}
    exec("from umld import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC)


def test_other_names_do_not_resolve() -> None:
    for name in ("no_such_name", "Host", "HostedMachine", "MachineControl", "GuestKernel"):
        with pytest.raises(AttributeError):
            getattr(umld, name)


def test_nothing_else_is_public() -> None:
    import types

    extra = {
        name
        for name, value in vars(umld).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - set(umld.__all__)
    assert not extra, f"umld has public names outside __all__: {sorted(extra)}"


def test_the_api_module_exports_only_public_names() -> None:
    import umld._api

    assert set(umld._api.__all__) <= set(umld.__all__)
    for name in umld._api.__all__:
        assert getattr(umld, name) is getattr(umld._api, name), name


def test_setting_error_is_a_value_error() -> None:
    assert issubclass(umld.SettingError, ValueError)


# -- nobody outside umld/ reaches into it ------------------------------------------


def _private_uses(path: Path) -> list[str]:
    """Imports of (or attribute paths into) PRIVATE_MODULES in ``path``."""

    def private(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in PRIVATE_MODULES)

    def dotted(node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            return ".".join([node.id, *reversed(parts)])
        return None

    found = []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            if private(node.module) or any(private(n) for n in names):
                found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args:
            arg = node.args[0]
            func = dotted(node.func) or ""
            if (
                func.split(".")[-1] in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and private(arg.value)
            ):
                found.append(f"{where} {func}({arg.value!r})")
        elif isinstance(node, ast.Attribute):
            name = dotted(node)
            if name is not None and private(name):
                found.append(f"{where} {name}")
    return found


def _outside_files() -> Iterator[Path]:
    me = Path(__file__).resolve()
    for top in ("tests", "bench", "conformance"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.resolve() != me and "out" not in path.relative_to(ROOT).parts:
                yield path


def test_no_test_or_bench_script_uses_private_modules() -> None:
    files = list(_outside_files())
    assert any(p.parts[-2] == "bench" for p in files)
    found = [use for path in files for use in _private_uses(path)]
    assert not found, "private umld modules used outside umld/:\n" + "\n".join(found)


def test_the_private_use_check_finds_uses(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import umld._api\n"
        "from umld.core.host import Host\n"
        "from umld.core import host\n"
        "from umld import _api\n"
        "import importlib\n"
        "importlib.import_module('umld.core.host')\n"
        "import umld\n"
        "umld._api.machine\n"
        "from umld import machine, Config\n"
        "import umld.core\n"
    )
    found = sorted(f.split(" ", 1)[1] for f in _private_uses(sample))
    assert found == sorted(
        [
            "import umld._api",
            "from umld.core.host import ...",
            "from umld.core import ...",
            "from umld import ...",
            "importlib.import_module('umld.core.host')",
            "umld._api.machine",
            "umld._api",
        ]
    ), found


# -- end to end ----------------------------------------------------------------


def _tracer_missing() -> str | None:
    from umld.tracer import available

    return available("c")


needs_ptrace = pytest.mark.skipif(
    _tracer_missing() is not None, reason=f"no tracer: {_tracer_missing()}"
)

_serial = itertools.count()


@pytest.fixture
def config(tmp_path: Path) -> umld.Config:
    """A named machine whose home disk lives in the test's directory."""
    return umld.Config(
        name=f"api-{os.getpid()}-{next(_serial)}", hostname="api-box", state_dir=str(tmp_path)
    )


@pytest.fixture(autouse=True)
def _signal_mask() -> Iterator[None]:
    """The API blocks SIGCHLD in the calling thread (the shared tracer
    thread waits for it); other tests' children must not inherit that."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


@pytest.mark.trio
@pytest.mark.uses_ptrace
@needs_ptrace
async def test_open_machine_end_to_end(config: umld.Config) -> None:
    import trio

    async with umld.open_machine(config) as m:
        assert isinstance(m, umld.RunningMachine)
        r = await m.run(["uname", "-n"], capture_output=True)
        assert isinstance(r, umld.CompletedProcess)
        assert r == umld.CompletedProcess(["uname", "-n"], 0, b"api-box\n", b"")
        assert (r.args, r.returncode, r.stdout, r.stderr) == tuple(r)

        r = await m.run(["sh", "-c", "cat; echo err >&2"], input=b"fed\n", capture_output=True)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"fed\n", b"err\n")
        big = os.urandom(1 << 20)
        r = await m.run(["cat"], input=big, capture_output=True)
        assert r.stdout == big

        assert (await m.run(["sh", "-c", "exit 3"])).returncode == 3
        assert (await m.run(["sh", "-c", "kill -KILL $$"])).returncode == -9
        with pytest.raises(umld.UmldError):
            await m.run(["sh", "-c", "exit 3"], check=True)
        r = await m.run(["true"], check=True)
        assert r.stdout is None and r.stderr is None

        # Live settings: the next run sees them; a bad value changes nothing.
        m.config["hostname"] = "changed"
        assert m.config["hostname"] == "changed"
        assert (await m.run(["uname", "-n"], capture_output=True)).stdout == b"changed\n"
        for key, bad in (("hostname", ""), ("hostname", "x" * 65), ("vcpus", "0")):
            before = m.config[key]
            with pytest.raises(ValueError):
                m.config[key] = bad
            assert m.config[key] == before
        assert (await m.run(["uname", "-n"], capture_output=True)).stdout == b"changed\n"
        with pytest.raises(KeyError):
            m.config["no-such-setting"] = "1"

        # A background process shows in processes().
        await m.run(["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 &"])
        with trio.fail_after(10):
            while not any(p.name == "sleep" for p in m.processes()):
                await trio.sleep(0.05)
        sleeper = next(p for p in m.processes() if p.name == "sleep")
        assert isinstance(sleeper, umld.ProcessInfo)
        assert sleeper.pid > 1 and sleeper.host_pid != sleeper.pid

        # events(): the exec of a run (runs again until the iterator,
        # subscribed on its first step, has seen one).
        seen: list[umld.GuestEvent] = []
        found = trio.Event()

        async def watch() -> None:
            async with aclosing(m.events()) as events:
                async for ev in events:
                    seen.append(ev)
                    if ev.kind == "exec" and ev.text == "sh -c sleep 0.2 event-marker":
                        found.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.fail_after(20):
                while not found.is_set():
                    # Lives long enough for its command line to be read (a
                    # process already gone is named by its comm only).
                    await m.run(["sh", "-c", "sleep 0.2", "event-marker"])
                    with trio.move_on_after(0.5):
                        await found.wait()
        ev = next(e for e in seen if e.kind == "exec")
        assert isinstance(ev, umld.GuestEvent) and ev.pid > 1 and ev.time > 0


@pytest.mark.uses_ptrace
@needs_ptrace
def test_sync_machine_end_to_end(config: umld.Config) -> None:
    with umld.machine(config) as m:
        assert isinstance(m, umld.SyncMachine)
        r = m.run(["uname", "-n"], capture_output=True)
        assert r == umld.CompletedProcess(["uname", "-n"], 0, b"api-box\n", b"")
        r = m.run(["sh", "-c", "cat; echo err >&2"], input=b"fed\n", capture_output=True)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"fed\n", b"err\n")
        big = os.urandom(1 << 20)
        assert m.run(["cat"], input=big, capture_output=True).stdout == big
        assert m.run(["sh", "-c", "exit 3"]).returncode == 3
        assert m.run(["sh", "-c", "kill -KILL $$"]).returncode == -9
        with pytest.raises(umld.UmldError):
            m.run(["sh", "-c", "exit 3"], check=True)
        m.config["hostname"] = "changed"
        assert m.run(["uname", "-n"], capture_output=True).stdout == b"changed\n"
        with pytest.raises(ValueError):
            m.config["hostname"] = ""
        assert m.config["hostname"] == "changed"
        with pytest.raises(ValueError):
            m.config["memory"] = "lots"
        # A live setting added as one row and its apply function: the
        # guest's uname(2) and its own UTS namespace (what /proc shows).
        m.config["domainname"] = "corp.example"
        r = m.run(["sh", "-c", "domainname; cat /proc/sys/kernel/domainname"], capture_output=True)
        assert r.stdout == b"corp.example\ncorp.example\n"
        m.run(["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 &"])
        import time

        deadline = time.monotonic() + 10
        while not any(p.name == "sleep" for p in m.processes()):
            assert time.monotonic() < deadline, m.processes()
            time.sleep(0.05)
        with pytest.raises(TimeoutError):
            m.run(["sleep", "5"], timeout=0.2)


@pytest.mark.uses_ptrace
@needs_ptrace
def test_machines_stop_on_exit(config: umld.Config) -> None:
    with umld.machine(config) as m:
        m.run(["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 &"])
        import time

        deadline = time.monotonic() + 10
        while not (hosts := [p.host_pid for p in m.processes() if p.name == "sleep"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    for pid in hosts:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == b"Z", f"guest process {pid} outlived its machine"


@pytest.mark.uses_ptrace
@needs_ptrace
def test_an_unnamed_machine_leaves_no_state(tmp_path: Path) -> None:
    cfg = umld.Config(state_dir=str(tmp_path))
    with umld.machine(cfg) as m:
        assert m.run(["true"]).returncode == 0
    assert cfg.name is None
    assert not list(tmp_path.iterdir())
