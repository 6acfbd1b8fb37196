"""Host ids of a root-run machine: a subordinate range of its own.

When umld runs as root, the guest's user namespace is mapped to a range of
host ids that nobody else uses, never to the host's own ids: the guest's
root is an unprivileged host id whose capabilities reach only the
machine's own namespaces (user_namespaces(7), "Capabilities").  Host
processes, cgroup files, /proc and /sys files, sockets and keyrings owned
by host ids are then out of its reach, whatever their mode.

Ranges come from ``/etc/subuid`` and ``/etc/subgid`` (subuid(5)), from the
entries of the ``umld`` system user that ``make install`` creates, the way
podman and LXC give unprivileged containers a subordinate range.  Without
such entries umld uses :data:`DEFAULT_RANGE`, documented in the README, and
refuses to start if another user's subordinate range overlaps it.

The range is cut into slots of :data:`SLOT` ids (guest ids 0..65535, as
in a container); a machine leases one slot for its life with an exclusive
lock on ``/run/umld/ids/SLOT.lock``, so two machines never share ids even
across umld processes, and a killed umld's lease ends with it.
"""

from __future__ import annotations

import fcntl
import os
from typing import NamedTuple, final

from umld.errors import UmldError

#: Ids per machine: guest ids 0..SLOT-1.
SLOT = 65536
#: (first id, count) when /etc/subuid has no entry for the umld user:
#: 2^31..2^31+2^30-1, 16384 machines.  Far above the ids useradd hands out
#: (SUB_UID_MIN 100000 .. SUB_UID_MAX 600100000, login.defs(5)).
DEFAULT_RANGE = (1 << 31, 1 << 30)
#: The system user whose subordinate ranges umld uses.
USER = "umld"
LOCK_DIR = "/run/umld/ids"


class Subrange(NamedTuple):
    start: int
    size: int


def _entries(path: str) -> list[tuple[str, Subrange]]:
    """(owner, range) of every well-formed line of a subuid(5) file."""
    out: list[tuple[str, Subrange]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], Subrange(int(parts[1]), int(parts[2]))))
    return out


def _owned(owner: str, user: str, uid: int | None) -> bool:
    return owner == user or (uid is not None and owner == str(uid))


def read_subordinate(path: str, user: str = USER, uid: int | None = None) -> list[Subrange]:
    """The ranges of ``user`` (by name, or by ``uid``) in a subuid(5)
    file; every other line is skipped."""
    return [r for owner, r in _entries(path) if _owned(owner, user, uid)]


def _others(path: str, user: str, uid: int | None) -> list[Subrange]:
    return [r for owner, r in _entries(path) if not _owned(owner, user, uid)]


def _uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def usable(ranges: list[Subrange]) -> Subrange | None:
    """The first range holding at least one slot, aligned down to whole slots."""
    for r in ranges:
        if r.size >= SLOT and r.start > 0:
            return Subrange(r.start, r.size - r.size % SLOT)
    return None


def _overlaps(a: Subrange, others: list[Subrange]) -> Subrange | None:
    for o in others:
        if a.start < o.start + o.size and o.start < a.start + a.size:
            return o
    return None


class IdRange(NamedTuple):
    """The host ids of one machine: guest uid k is host uid ``uid + k``."""

    uid: int
    gid: int
    size: int


def machine_ranges(
    subuid: str = "/etc/subuid", subgid: str = "/etc/subgid"
) -> tuple[Subrange, Subrange]:
    """The uid and gid ranges machines are leased from."""
    uid = _uid_of(USER)
    found = []
    for path in (subuid, subgid):
        r = usable(read_subordinate(path, USER, uid))
        if r is None:
            r = Subrange(*DEFAULT_RANGE)
            clash = _overlaps(r, _others(path, USER, uid))
            if clash is not None:
                raise UmldError(
                    f"umld: {path} gives ids {clash.start}..{clash.start + clash.size - 1} to "
                    f"another user, inside umld's default range; give the '{USER}' user a range "
                    "of its own (`make install` does)"
                )
        found.append(r)
    return found[0], found[1]


@final
class IdLease:
    """One slot of host ids, held until :meth:`close` (or the process ends)."""

    def __init__(self, ids: IdRange, fd: int, slot: int) -> None:
        self.ids = ids
        self.slot = slot
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lease(lock_dir: str = LOCK_DIR, ranges: tuple[Subrange, Subrange] | None = None) -> IdLease:
    """Lease a free slot of host ids for a new machine."""
    uids, gids = ranges if ranges is not None else machine_ranges()
    slots = min(uids.size, gids.size) // SLOT
    try:
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UmldError(f"umld: cannot create {lock_dir}: {exc.strerror}") from None
    for slot in range(slots):
        path = os.path.join(lock_dir, f"{uids.start + slot * SLOT}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        ids = IdRange(uids.start + slot * SLOT, gids.start + slot * SLOT, SLOT)
        return IdLease(ids, fd, slot)
    raise UmldError(f"umld: all {slots} id ranges for machines are in use")
