"""Inode numbers of the export and the kernel's references to them.

The FUSE protocol's rule (fuse_lowlevel.h, "lookup count"): every entry we
return from lookup, create, mkdir, mknod, symlink, link or readdirplus is
one more reference the kernel holds, and forget() gives them back.  A
node stays in the table, and so keeps its inode number and whatever it
holds, while the kernel holds any.
"""

from __future__ import annotations

import errno
from collections.abc import Hashable
from dataclasses import dataclass

from umld.errors import get_logger
from umld.fusefs._errors import ExportError
from umld.fusefs._node import Node

_log = get_logger("umld.fusefs")

ROOT_INODE = 1  # FUSE_ROOT_ID


@dataclass(slots=True)
class _Entry:
    node: Node
    lookups: int


class InodeTable:
    """Inode number <-> node, with the kernel's lookup count of each.

    Numbers are never reused (they are 64-bit), so the generation of every
    entry can stay 0.  A node object keeps its number for its lifetime:
    a static node the kernel forgot gets its old number back.
    """

    def __init__(self, root: Node) -> None:
        self._next = ROOT_INODE + 1
        self._by_ino: dict[int, _Entry] = {}
        self._by_key: dict[Hashable, int] = {}
        root._ino = ROOT_INODE
        # The root is never forgotten: one reference that no forget returns.
        self._by_ino[ROOT_INODE] = _Entry(root, 1)
        self._by_key[root._key()] = ROOT_INODE

    def __len__(self) -> int:
        return len(self._by_ino)

    def node(self, ino: int) -> Node:
        entry = self._by_ino.get(ino)
        if entry is None:
            # The kernel only names inodes we gave it and did not forget.
            raise ExportError(errno.ESTALE, f"unknown inode {ino}")
        return entry.node

    def register(self, node: Node) -> tuple[int, Node]:
        """The inode of ``node`` without taking a reference (see :meth:`ref`).

        Returns the node that holds the number: an equal-keyed one already
        in the table wins (refreshed from ``node``, which is let go).  An
        entry left with no reference is dropped by :meth:`unref_unused`.
        """
        key = node._key()
        ino = self._by_key.get(key)
        if ino is not None:
            existing = self._by_ino[ino].node
            if existing is not node:
                existing._refresh(node)
                node._forgotten()
            return ino, existing
        if not node._ino:
            node._ino = self._next
            self._next += 1
        ino = node._ino
        self._by_ino[ino] = _Entry(node, 0)
        self._by_key[key] = ino
        return ino, node

    def ref(self, ino: int) -> None:
        self._by_ino[ino].lookups += 1

    def unref_unused(self, ino: int) -> None:
        entry = self._by_ino.get(ino)
        if entry is not None and entry.lookups == 0:
            self._drop(ino, entry)

    def forget(self, ino: int, count: int) -> None:
        entry = self._by_ino.get(ino)
        if entry is None or ino == ROOT_INODE:
            return
        entry.lookups -= count
        if entry.lookups <= 0:
            self._drop(ino, entry)

    def clear(self) -> None:
        """Drop everything (the mount is gone; no forget will come)."""
        for ino, entry in list(self._by_ino.items()):
            self._drop(ino, entry)

    def _drop(self, ino: int, entry: _Entry) -> None:
        del self._by_ino[ino]
        self._by_key.pop(entry.node._key(), None)
        try:
            entry.node._forgotten()
        except Exception:
            _log.exception("fusefs: releasing inode %d failed", ino)
