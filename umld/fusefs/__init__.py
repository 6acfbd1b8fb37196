"""A live export of a running guest through one FUSE mount (pyfuse3, trio).

A generic library: a tree of nodes, one pyfuse3.Operations class serving
it, and :func:`serve` to mount it.  It knows nothing of umld's guest
kernel; the integration builds a tree of these nodes over it.

Node kinds (kernfs style, content from callables):

* :class:`Directory`: fixed children; :class:`DynamicDirectory`: entries
  from a callable, that appear and vanish (ENOENT once gone).
* :class:`SnapshotFile`: read-only, content built once per open().
* :class:`WritableFile`: a setting; a written value is applied, or refused
  with EINVAL by the write(2) or close(2) that carried it.
* :class:`ControlFile`: write-only, one command per line.
* :class:`StreamFile` over an :class:`EventLog`: follow it with cat or
  ``tail -f``, each reader from where it opened.
* :class:`Symlink`: target from a callable.
* :class:`HostTree`: read/write passthrough of a directory descriptor
  (a guest's /proc/<pid>/root) that nothing can escape.

Errors: nodes and their callables raise :class:`ExportError(errno)
<ExportError>` and the syscall on the mount fails with that errno.  Any
other exception is a bug: logged with its traceback, answered with EIO;
the daemon carries on.

Callables run in the trio thread of :func:`serve`, inside a request:
they must be quick and must not block.  Only :meth:`EventLog.append` is
meant to be called from other threads.

Importing this package imports trio and pyfuse3 (umld's ``export`` extra).
"""

from __future__ import annotations

from umld.fusefs._errors import ExportError as ExportError
from umld.fusefs._hosttree import HostTree as HostTree
from umld.fusefs._machine import (
    ExportThread as ExportThread,
    build_tree as build_tree,
)
from umld.fusefs._node import Node as Node
from umld.fusefs._serve import clean_stale_mount as clean_stale_mount, serve as serve
from umld.fusefs._stream import EventLog as EventLog, StreamFile as StreamFile
from umld.fusefs._synthetic import (
    ControlFile as ControlFile,
    Directory as Directory,
    DynamicDirectory as DynamicDirectory,
    SnapshotFile as SnapshotFile,
    Symlink as Symlink,
    WritableFile as WritableFile,
)

__all__ = [
    "ControlFile",
    "Directory",
    "DynamicDirectory",
    "EventLog",
    "ExportError",
    "ExportThread",
    "HostTree",
    "Node",
    "SnapshotFile",
    "StreamFile",
    "Symlink",
    "WritableFile",
    "build_tree",
    "clean_stale_mount",
    "serve",
]
