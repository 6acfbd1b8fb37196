"""Explanations for a kernel that refuses to trace (shared by backends),
and the probe that finds out whether it does."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time

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


#: exit_group(2) on x86-64: every program ends with it.
_NR_EXIT_GROUP = 231
_PROBE_TIMEOUT = 20.0


@functools.cache
def probe(name: str) -> str | None:
    """Run true(1) under backend ``name`` with a seccomp filter that stops
    its exit_group(2); None when that stop comes and the program ends,
    else why not (the backend's own explanation when ptrace is refused).

    It runs in a thread of its own, which owns the tracer and ends with it,
    so the caller's signal mask and children are left alone (the tracer
    reaps only its own thread's children: ``__WNOTHREAD``)."""
    result: list[str | None] = []

    def run() -> None:
        try:
            result.append(_probe(name))
        except Exception as exc:  # the answer is the reason, whatever it is
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name=f"umld-probe-{name}", daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT + 5)
    if not result:
        return f"the probe of the {name!r} tracer did not finish"
    return result[0]


def _probe(name: str) -> str | None:
    from umld.tracer import SpawnSpec, TracerError, open_tracer
    from umld.tracer.events import Exited, SignalStop, SyscallExit, SyscallStop
    from umld.tracer.seccomp import build_filter

    true = os.fsencode(shutil.which("true") or "/bin/true")
    spec = SpawnSpec(
        true, [b"true"], seccomp_filter=build_filter({_NR_EXIT_GROUP}), new_session=True
    )
    try:
        tracer = open_tracer(name)
    except TracerError as exc:
        return str(exc)
    try:
        try:
            pid = tracer.spawn(spec)
        except TracerError as exc:
            return str(exc)
        trapped = False
        deadline = time.monotonic() + _PROBE_TIMEOUT
        while time.monotonic() < deadline:
            # Short waits: a SIGCHLD taken by another thread of the caller
            # (one that does not block it) costs one of them, not a hang.
            ev = tracer.wait(0.05)
            if isinstance(ev, SyscallStop | SyscallExit):
                trapped = True
                tracer.resume(ev.tid)
            elif isinstance(ev, SignalStop):
                tracer.resume(ev.tid, ev.signo)
            elif isinstance(ev, Exited) and ev.tid == pid:
                if ev.spawn_error is not None:
                    stage, err = ev.spawn_error
                    what = "installing the seccomp filter" if stage == "seccomp" else stage
                    return f"{what} failed in the probe's child: {os.strerror(err)}"
                if not trapped:
                    return "the seccomp filter did not stop the probe's exit_group(2)"
                return None
        return f"the probe (true under ptrace) did not end within {_PROBE_TIMEOUT:.0f} s"
    finally:
        tracer.close()
