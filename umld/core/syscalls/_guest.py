"""Calls umld makes for the guest with host privileges it lacks, in the
guest's own tree: ``umld-sandbox guestmount TID OP ...`` (c_tracer/sandbox.c)
joins the guest thread's mount namespace, root and working directory, so
every path resolves as the guest's would, and acts there as the host's
root (mounts of the machine's loop devices, loopdev.py; device nodes,
sys_file.py).

The helper runs on a thread of its own, never the tracer's (the tracer
reaps only its own thread's children, and a mount may take a while); the
guest's thread waits in its call meanwhile (Offloaded) and gets the
helper's answer: 0 or an errno.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Offloaded, Outcome
from umld.errors import get_logger

log = get_logger("umld.guestmount")


def by_helper(
    ctx: SyscallContext, words: list[bytes], then: Callable[[int], None] | None = None
) -> Outcome:
    """Complete the guest's call with ``guestmount TID *words``'s answer;
    ``then`` gets it first, on the tracer thread."""
    from umld.core.sandbox import SANDBOX

    argv = [os.fsencode(SANDBOX), b"guestmount", str(ctx.task.tid).encode(), *words]
    kernel, tid, hold = ctx.kernel, ctx.task.tid, Offloaded()

    def main() -> None:
        result = run(argv)

        def complete() -> None:
            if then is not None:
                then(result)
            kernel.finish(tid, hold, result)

        kernel.post(complete)

    threading.Thread(target=main, name="umld-guestmount", daemon=True).start()
    raise hold


def run(argv: list[bytes]) -> int:
    """Run the helper: 0, or a negative errno for the guest's call."""
    import subprocess  # rare; the import would cost every start

    what = argv[3].decode(errors="replace")
    try:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the guest's %s failed: %s", what, exc)
        return -errno.EIO
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0 or not out.isdigit():
        why = proc.stderr.decode(errors="replace").strip() or f"status {proc.returncode}"
        log.warning("the guest's %s failed: %s", what, why)
        return -errno.EIO
    return -int(out)
