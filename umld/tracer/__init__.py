"""The tracer platform (see :mod:`umld.tracer.platform`).

Backends register here by name; ``open_tracer(name)`` creates one.  The
default is the C core ("c"); "python" is the pure-Python backend built on
python-ptrace.
"""

from __future__ import annotations

from umld.tracer.platform import (
    ORPHAN_DELAY as ORPHAN_DELAY,
    Regs as Regs,
    SigInfo as SigInfo,
    SpawnSpec as SpawnSpec,
    TracerError as TracerError,
    TracerPlatform as TracerPlatform,
    TracerUnavailable as TracerUnavailable,
)

BACKENDS = ("c", "python")
DEFAULT_BACKEND = "c"


def open_tracer(
    name: str = DEFAULT_BACKEND, *, orphan_delay: float = ORPHAN_DELAY
) -> TracerPlatform:
    """A new tracer of backend ``name``, owned by the calling thread.
    ``orphan_delay``: see "Orphans" in :mod:`umld.tracer.platform`."""
    if name == "c":
        from umld.tracer.ptrace_c import CTracer

        tracer: TracerPlatform = CTracer(orphan_delay=orphan_delay)
        return tracer
    if name == "python":
        from umld.tracer.ptrace_py import PythonTracer

        tracer = PythonTracer(orphan_delay=orphan_delay)
        return tracer
    raise ValueError(f"unknown tracer backend {name!r} (choose from {', '.join(BACKENDS)})")


def available(name: str, *, probe: bool = False) -> str | None:
    """None when backend ``name`` can be used here, else why not.

    Without ``probe`` it only checks that the backend loads (cheap: what a
    start of umld checks).  With ``probe`` it also runs a program under it
    once, trapping a call through seccomp, so that a host that refuses
    ptrace(2) or seccomp(2) (Yama, a container's seccomp profile, an LSM,
    umld being traced itself) is told apart; the answer is cached for the
    process (see :func:`umld.tracer.diagnostics.probe`)."""
    try:
        if name == "c":
            import umld.tracer.ptrace_c
        elif name == "python":
            import umld.tracer.ptrace_py  # noqa: F401
        else:
            return f"unknown backend {name!r}"
    except ImportError as exc:
        return str(exc)
    if probe:
        from umld.tracer.diagnostics import probe as run_probe

        return run_probe(name)
    return None


def host_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The host CPU's CPUID for ``leaf``/``subleaf`` (eax, ebx, ecx, edx),
    from the C module whichever backend traces (umld_cpuid)."""
    from umld.tracer.ptrace_c import host_cpuid as c_cpuid

    return c_cpuid(leaf, subleaf)
