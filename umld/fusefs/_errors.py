"""The one exception nodes raise to answer a FUSE request with an error."""

from __future__ import annotations

import errno as _errno
import os


class ExportError(Exception):
    """A node's refusal: the syscall on the mount fails with ``errno``.

    Nodes and the callables they wrap raise this; only the Operations class
    turns it into :class:`pyfuse3.FUSEError`, so that no node depends on
    how the request reached it.  Any other exception escaping a handler is
    a bug: it is logged with its traceback and answered with EIO.
    """

    def __init__(self, errno: int, reason: str = "") -> None:
        super().__init__(f"{_errno.errorcode.get(errno, errno)}: {reason or os.strerror(errno)}")
        self.errno = errno
