"""Where umld puts things on the host by default."""

from __future__ import annotations

import os


def default_mountpoint(name: str) -> str:
    """/run/umld/NAME as root, $XDG_RUNTIME_DIR/umld/NAME otherwise (or
    /tmp/umld-UID/NAME without a runtime directory)."""
    if os.geteuid() == 0:
        base = "/run/umld"
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(runtime, "umld") if runtime else f"/tmp/umld-{os.geteuid()}"
    return os.path.join(base, name)
