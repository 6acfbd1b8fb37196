"""What a machine with a copy-on-write root changed on the host's tree.

The default root is the host's tree made copy-on-write by overlays that
the sandbox stage mounts (sandbox.c, ``cow_tree``): one per host mount when
root runs the machine, a few cut around the directories an ordinary
user's guest writes otherwise.  Each overlay (a "unit") writes into its own
upper directory; the stage keeps every unit's directory read-only at
``/changes/NAME`` (``u`` the upper layer) and lists them in ``/upper-map``
as ``GUEST<TAB>NAME<TAB>LOWER`` lines, GUEST the unit's guest path and
LOWER its lower layer as the stage sees it.  Both are read here through
``/proc/STAGE/root``, the stage being the machine's first, untraced process.

An upper layer says what changed in overlayfs's own terms (overlayfs(7),
"whiteouts and opaque directories"):

- a character device 0/0 is a *whiteout*: the lower entry of that name
  was deleted;
- a directory with the xattr ``trusted.overlay.opaque`` (``user.`` for an
  ordinary user's overlay, mounted with ``userxattr``) set to ``y`` hides
  the lower directory's entries: each is deleted unless the upper one
  has its name;
- any other entry was created (nothing of its name below), modified
  (copied up from the lower layer, content or metadata), or replaced (a
  file over a lower directory, a directory over a lower file).

Directories copied up only to hold a changed entry are not changes of
their own: a directory is reported modified when its mode differs.

Every walk opens one name at a time with ``O_NOFOLLOW`` below a directory
descriptor: the upper layers hold whatever the guest wrote, symlinks
included, and nothing here may follow one to a host file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from typing import NamedTuple

#: The opaque-directory xattrs: a root-run machine's overlays, an
#: ordinary user's (userxattr).
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


class Unit(NamedTuple):
    """One overlay of a copy-on-write root."""

    guest: str  # its guest path ("/", "/home", "/var/tmp/project")
    name: str  # its directory in the stage's /changes
    lower: str  # its lower layer, a path of the stage


class Change(NamedTuple):
    """One line of ``umld diff``: A (created), M (modified or replaced) or
    D (deleted), and the guest path, a directory's ending in /."""

    kind: str
    path: str
    replaced: bool = False  # M over a host entry of another type

    def line(self) -> str:
        return f"{self.kind} {self.path}"

    @property
    def deleted(self) -> str | None:
        """The host path this change deletes or replaces (a line of
        ``changes/.deleted``), None for one it leaves."""
        return self.path.rstrip("/") if self.kind == "D" or self.replaced else None


def _open_beneath(dirfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` (relative, or absolute as relative) beneath ``dirfd``
    one component at a time, following no symlink (ELOOP on one)."""
    fd = os.dup(dirfd)
    try:
        for part in [p for p in path.split("/") if p not in ("", ".")]:
            if part == "..":
                raise OSError(errno.EXDEV, "no .. here")
            nxt = os.open(
                part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
        if flags != os.O_PATH:
            nxt = os.open(".", flags | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def units(stage_root: int) -> list[Unit]:
    """The units of a copy-on-write root, in the order they were mounted
    (a unit below another comes after it); empty for another root."""
    try:
        fd = _open_beneath(stage_root, "", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        with open(os.open("upper-map", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd),
                  "rb") as f:  # fmt: skip
            text = f.read(1 << 20)
    except OSError:
        return []
    finally:
        os.close(fd)
    out = []
    for line in text.decode(errors="surrogateescape").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].startswith("/") and "/" not in parts[1]:
            out.append(Unit(*parts))
    return out


def open_upper(stage_root: int, unit: Unit) -> int:
    """An O_PATH descriptor of the unit's upper layer (read-only mount)."""
    return _open_beneath(stage_root, f"changes/{unit.name}/u")


def _lower_lstat(lower: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` in a lower layer, None if it has no such entry
    (or a symlink stands on the way: then the overlay had none either)."""
    parent, _, leaf = rel.rpartition("/")
    try:
        fd = _open_beneath(lower, parent)
    except OSError:
        return None
    try:
        return os.lstat(leaf, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _lower_names(lower: int, rel: str) -> list[str]:
    try:
        fd = _open_beneath(lower, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _opaque(dirfd: int) -> bool:
    for name in _OPAQUE:
        try:
            if os.getxattr(dirfd, name) == b"y":
                return True
        except OSError:
            continue
    return False


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an upper layer's entry is a whiteout (overlayfs(7))."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    return base.rstrip("/") + "/" + rel


def _scan_unit(
    upper: int, lower: int, unit: Unit, covered: list[str] | set[str]
) -> Iterator[Change]:
    walk = os.fwalk(".", dir_fd=upper, follow_symlinks=False)
    for top, dirs, files, topfd in walk:
        rel = "" if top == "." else top[2:]
        guest_dir = _join(unit.guest, rel)
        for name in list(dirs):
            if _join(guest_dir, name) in covered:
                dirs.remove(name)  # another unit's or mount's, mounted over it
        below_new = rel != "" and _lower_lstat(lower, rel) is None
        if rel == "" or not below_new:
            if _opaque(topfd) and rel:
                present = set(dirs) | set(files)
                for name in _lower_names(lower, rel):
                    if name not in present:
                        low = _lower_lstat(lower, _join(rel, name))
                        slash = "/" if low is not None and stat.S_ISDIR(low.st_mode) else ""
                        yield Change("D", _join(guest_dir, name) + slash)
        for name in [*dirs, *files]:
            path = _join(guest_dir, name)
            st = os.lstat(name, dir_fd=topfd)
            low = None if below_new else _lower_lstat(lower, _join(rel, name))
            if is_whiteout(st):
                if low is not None:
                    yield Change("D", path + "/" if stat.S_ISDIR(low.st_mode) else path)
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            shown = path + "/" if is_dir else path
            if low is None:
                yield Change("A", shown)
            elif stat.S_ISDIR(low.st_mode) != is_dir:
                yield Change("M", shown, replaced=True)
            elif not is_dir or stat.S_IMODE(low.st_mode) != stat.S_IMODE(st.st_mode):
                yield Change("M", shown)


def scan(stage_root: int, mount_points: Iterable[str] = ()) -> list[Change]:
    """Every change the guest made to the host's tree, sorted by path.
    ``mount_points``: guest paths where the machine mounts something (a
    --tmpfs, a --bind): the directory the sandbox made for one, and what
    lies over it, are not changes of the host's tree."""
    found: list[Change] = []
    all_units = units(stage_root)
    for unit in all_units:
        covered = {u.guest for u in all_units if u is not unit and u.guest != unit.guest}
        covered.update(mount_points)
        try:
            upper = open_upper(stage_root, unit)
            lower = _open_beneath(stage_root, unit.lower)
        except OSError:
            continue
        try:
            found.extend(_scan_unit(upper, lower, unit, covered))
        except OSError:
            # A unit's root the machine's user may not read (an ordinary
            # user's /root, mode 0): nothing of it the guest could change.
            pass
        finally:
            os.close(upper)
            os.close(lower)
    found.sort(key=lambda c: c.path)
    return found
