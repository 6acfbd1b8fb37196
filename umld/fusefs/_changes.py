"""changes/ and diff: what a guest with a copy-on-write root changed.

The guest's writes over the host's tree land in the upper layers of the
overlays that make up its root (:mod:`umld.core.changes`), one per
"unit" (a guest path).  changes/ shows them as one tree by guest path:
each unit's upper layer is a read-only :class:`HostTree` placed at its
guest path, with overlayfs's whiteouts hidden; the directories that lead
to a unit, and a unit below another (a host mount inside the host's /),
are placed by :class:`_UnitDir`, which lays them over whatever the outer
upper layer has at that name.  changes/.deleted lists the host paths the
guest deleted or replaced, one per line; the machine's ``diff`` file, the
whole list as ``umld diff`` prints it.

The units are known once the sandbox has built the machine, which may be
after the export is mounted: the tree is laid out at its first use.
A host process reading changes/ resolves every name beneath an upper
layer, never through a symlink of the guest's (the HostTree's rules).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from umld.core import MachineControl, Unit, is_whiteout
from umld.fusefs._errors import ExportError
from umld.fusefs._hosttree import HostTree
from umld.fusefs._node import Attrs, DirNode, Node
from umld.fusefs._synthetic import SnapshotFile


class _UnitDir(DirNode):
    """A directory of changes/ that leads to a unit, or is one's root.

    ``inner`` gives what the upper layers hold at this path (a unit's
    HostTree at its root; below one, the outer unit's directory of this
    name, if the guest made one); ``children`` are the units and the
    directories leading to them, laid over ``inner``'s entries."""

    def __init__(self, inner: Callable[[], DirNode | None]) -> None:
        super().__init__()
        self._inner = inner
        self.children: dict[bytes, _UnitDir] = {}
        self.extra: dict[bytes, Node] = {}

    def _attrs(self) -> Attrs:
        inner = self._inner()
        return inner._attrs() if inner is not None else super()._attrs()

    def _child(self, name: bytes) -> Node | None:
        if name in self.extra:
            return self.extra[name]
        if name in self.children:
            return self.children[name]
        inner = self._inner()
        return inner._child(name) if inner is not None else None

    def _inner_listing(self) -> Sequence[tuple[bytes, Node | None]]:
        inner = self._inner()
        if inner is None:
            return []
        try:
            return inner._listing()
        except ExportError:
            return []

    def _empty(self) -> bool:
        """Nothing changed here: no entry of the upper layers, none below."""
        if any(n not in self.children for n, _ in self._inner_listing()):
            return False
        return all(c._empty() for c in self.children.values())

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        # The directories that only lead to units where nothing changed
        # are not listed (they may still be looked up).
        own: dict[bytes, Node] = {n: c for n, c in self.children.items() if not c._empty()}
        own.update(self.extra)
        rest = [(n, x) for n, x in self._inner_listing() if n not in own and n not in self.children]
        return [*rest, *own.items()]


def _below(parent: _UnitDir, name: bytes) -> Callable[[], DirNode | None]:
    """What the upper layers hold at ``name`` below ``parent``."""

    def inner() -> DirNode | None:
        outer = parent._inner()
        if outer is None:
            return None
        try:
            found = outer._child(name)
        except ExportError:
            return None
        return found if isinstance(found, DirNode) else None

    return inner


class ChangesRoot(DirNode):
    """changes/ of one machine, laid out from its units at first use."""

    def __init__(self, control: MachineControl) -> None:
        super().__init__()
        self._control = control
        self._root: _UnitDir | None = None
        self._deleted = SnapshotFile(self._deleted_list)

    def _deleted_list(self) -> bytes:
        paths = [c.deleted for c in self._control.changes()]
        return "".join(f"{p}\n" for p in paths if p is not None).encode()

    def _layout(self) -> _UnitDir:
        if self._root is not None:
            return self._root
        units = self._control.upper_units()
        root = _UnitDir(lambda: None)
        root.extra[b".deleted"] = self._deleted
        for unit in units:
            node = root
            for part in [p for p in os.fsencode(unit.guest).split(b"/") if p]:
                nxt = node.children.get(part)
                if nxt is None:
                    nxt = node.children[part] = _UnitDir(_below(node, part))
                node = nxt
            tree = HostTree(self._opener(unit), read_only=True, hide=is_whiteout)
            node._inner = lambda t=tree: t  # type: ignore[misc]
        if units:
            # Laid out for good once the machine has its units.
            self._root = root
        return root

    def _opener(self, unit: Unit) -> Callable[[], int]:
        return lambda: self._control.open_upper(unit)

    def _attrs(self) -> Attrs:
        return self._layout()._attrs()

    def _child(self, name: bytes) -> Node | None:
        return self._layout()._child(name)

    def _listing(self) -> Sequence[tuple[bytes, Node | None]]:
        return self._layout()._listing()
