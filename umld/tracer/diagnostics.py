"""Explanations for a kernel that refuses to trace (shared by backends)."""

from __future__ import annotations

import os

_YAMA_SCOPES = {
    "0": "classic ptrace permissions",
    "1": "restricted to descendants",
    "2": "admin-only attach: needs CAP_SYS_PTRACE",
    "3": "no attach at all until reboot",
}


def ptrace_refused_reason(err: int) -> str:
    """Why PTRACE_SEIZE of our own child was refused, as far as we can
    tell: Yama's ptrace_scope, a seccomp profile around umld itself, or
    else an LSM / container runtime."""
    why = [f"ptrace(PTRACE_SEIZE) of a child was refused: {os.strerror(err)}"]
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
        meaning = _YAMA_SCOPES.get(scope, "unknown value")
        why.append(f"Yama: /proc/sys/kernel/yama/ptrace_scope is {scope} ({meaning})")
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            status = dict(ln.split(":", 1) for ln in f if ":" in ln)
    except OSError:
        status = {}
    mode = status.get("Seccomp", "0").strip()
    tracer = status.get("TracerPid", "0").strip()
    if tracer != "0":
        # A tracer with PTRACE_O_TRACEFORK (strace -f, gdb) attaches our
        # children before we can, and a thread has one tracer (ptrace(2)).
        why.append(f"umld is itself being traced by pid {tracer}; a traced program cannot trace")
    if mode != "0":
        why.append(
            f"umld runs under a seccomp filter (Seccomp: {mode}); a container's "
            "seccomp profile commonly denies ptrace(2) (docker/podman: "
            "--security-opt seccomp=unconfined or --cap-add SYS_PTRACE)"
        )
    if len(why) == 1:
        why.append("an LSM (AppArmor, SELinux) or the container runtime may forbid ptrace")
    return "; ".join(why)
