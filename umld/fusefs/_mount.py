"""Where this process's one mount is, for the nodes that must know.

pyfuse3 serves one mount per process, so this is process state: serve()
fills it in once the mount exists and clears it when the mount is gone.
The host tree needs the device number to refuse to step into the mount
(its own request would deadlock it); stream files need the mount id to
find their reader's descriptor in /proc/<pid>/fdinfo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MountState:
    dev: int | None = None
    mnt_id: int | None = None
    #: Files open for writing, until their release: see serve's drain().
    writers: int = 0


CURRENT = MountState()
