"""The protocol between the guest kernel and umld-sandbox, declared once in
umld/core/sandbox.py (SandboxOps), checked against the operations
c_tracer/sandbox.c parses, the way the cffi header markers keep the C
tracer and Python in step.  No ptrace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from umld.core.sandbox import Layout, MachineFiles, Mount, SandboxOps, enter_argv, sandbox_argv

SANDBOX_C = Path(__file__).resolve().parents[2] / "c_tracer" / "sandbox.c"


def _body(source: str, signature: str) -> str:
    """The text of a C function, from its signature to its closing brace."""
    start = source.index(signature)
    depth, i = 0, source.index("{", start)
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[i : j + 1]
    raise AssertionError(f"unbalanced {signature}")


def _parsed_ops(body: str) -> dict[str, int]:
    """op name -> argument count, from `strcmp(op, "x") == 0) {` and the
    `need(argc, i, N, op)` that follows it (none: no arguments)."""
    out: dict[str, int] = {}
    comment = r"(?:/\*.*?\*/\s*)*"
    pattern = r'strcmp\(op, "([a-z]+)"\) == 0\) \{\s*' + comment + r"(need\(argc, i, (\d+), op\))?"
    for m in re.finditer(pattern, body, re.S):
        if m.group(1) != "--":
            out[m.group(1)] = int(m.group(3)) if m.group(2) else 0
    return out


def test_new_machine_operations_are_the_ones_sandbox_c_parses() -> None:
    source = SANDBOX_C.read_text()
    assert _parsed_ops(_body(source, "int main(int argc, char **argv)")) == SandboxOps.NEW_MACHINE


def test_enter_operations_are_the_ones_sandbox_c_parses() -> None:
    source = SANDBOX_C.read_text()
    assert _parsed_ops(_body(source, "static int enter_main(int argc")) == SandboxOps.ENTER


def test_the_builder_refuses_what_the_sandbox_would() -> None:
    with pytest.raises(ValueError):
        SandboxOps().op("stdio", 0, 1, 2)  # an enter operation
    with pytest.raises(ValueError):
        SandboxOps().op("bind", "/a", "/b")  # one argument short
    with pytest.raises(ValueError):
        SandboxOps(enter=7).op("bind", "/a", "/b", "ro")


def test_a_machine_and_an_entered_process() -> None:
    files = MachineFiles()
    try:
        layout = Layout(
            root=None,
            root_readonly=True,
            mounts=[
                Mount("bind", "/srv", "/srv", True),
                Mount("tmpfs", "", "/scratch", size=1 << 20),
            ],
            home="/root",
            home_disk=None,
        )
        argv = sandbox_argv(
            layout, files, uid=0, gid=0, cwd="/", cwd_strict=False, argv=["true"], memory=1 << 30
        )
    finally:
        files.close()
    words = [a.decode() for a in argv]
    tail = words[words.index("--") :]
    assert tail == ["--", "true"]
    assert words[words.index("root") + 1 : words.index("root") + 3] == ["/", "ro"]
    assert "size=1048576" in words[words.index("/scratch") + 1]
    entered = [
        a.decode() for a in enter_argv(42, ["sh"], uid=0, gid=0, cwd="/tmp", stdio=[5, 6, 7])
    ]
    assert entered[1:] == [
        "enter",
        "42",
        "stdio",
        "5",
        "6",
        "7",
        "ids",
        "0",
        "0",
        "cwd",
        "/tmp",
        "--",
        "sh",
    ]


def test_enter_reports_on_the_callers_stderr(tmp_path: Path) -> None:
    """What goes wrong while entering a machine is written to the stderr
    umld exec passed (``stdio IN OUT ERR``), not to the daemon's own
    stderr, its log: the caller gets the line with the exit status 125."""
    import os
    import subprocess

    from umld.core.sandbox import SANDBOX

    if not os.access(SANDBOX, os.X_OK):
        pytest.skip("umld-sandbox is not built (make install)")
    caller = tmp_path / "caller-stderr"
    with open(caller, "wb") as f:
        fd = f.fileno()
        r = subprocess.run(
            [SANDBOX, "enter", "2147483647", "stdio", "0", "1", str(fd), "--", "true"],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
    assert r.returncode == 125, r
    assert r.stderr == b"", r
    assert caller.read_text().splitlines() == [
        "umld: the machine's process 2147483647 is gone: No such file or directory"
    ]
