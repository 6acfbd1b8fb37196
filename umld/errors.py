"""Exceptions shared by every layer of umld.

Errors are translated once per boundary: a syscall handler raises
:class:`GuestError` and only the kernel's dispatcher turns it into -errno
for the guest; a user mistake raises :class:`UsageError` or
:class:`UmldError` and only the CLI turns it into a message and an exit
status (never a traceback).
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any


class UmldError(Exception):
    """A failure to report to the user as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(UmldError):
    """A wrong option or argument (exit status 2, like argparse)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class GuestError(Exception):
    """A syscall handler's answer of failure: the guest sees -errno."""

    def __init__(self, errno: int, reason: str = "") -> None:
        super().__init__(f"{_errno.errorcode.get(errno, errno)}: {reason or os.strerror(errno)}")
        self.errno = errno


class _LazyLogger:
    """A logger that imports :mod:`logging` only when something is logged:
    logging costs milliseconds of every umld start and is rarely used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging

        root = logging.getLogger()
        if not root.handlers:
            logging.basicConfig(format="umld: %(levelname)s: %(message)s")
        return getattr(logging.getLogger(self._name), attr)


def get_logger(name: str) -> _LazyLogger:
    return _LazyLogger(name)
