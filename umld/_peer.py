"""Who is at the other end of the daemon's control socket.

The socket file's mode (0600) says which user may connect; it says
nothing of where the connecting process runs.  A process inside a
machine runs as that same user when the machine's identity is the
daemon's, and a machine may be given the socket's directory (``--bind``),
so the daemon asks the kernel about every peer before it serves it
(:func:`refusal`).  It serves a peer only when every answer is known
and right:

* its credentials (SO_PEERCRED, unix(7)): the daemon's user or root;
* a pidfd of the process that connected: SO_PEERPIDFD (Linux 6.5) names
  that very process; before 6.5, pidfd_open(2) of the SO_PEERCRED pid,
  which could name another process only if the peer had exited and its
  pid been reused since, in the daemon's own pid namespace;
* its pid namespace and user namespace are the daemon's (the inodes of
  /proc/PID/ns/pid and ns/user, namespaces(7)): every machine has its own
  of both;
* no machine's tracer traces it: every guest thread is traced by the
  daemon (TracerPid in /proc/PID/status, and the kernels' own tables);
* it is in no machine's cgroup (/proc/PID/cgroup against the cgroup each
  machine was given), which holds when a process of the host was moved
  into a machine's cgroup, or a guest into the host's namespaces;
* and the pidfd still refers to a live process after all of that was
  read (poll(2) on a pidfd is readable once the process has exited,
  pidfd_open(2)): a pid reused while we read /proc cannot pass.

A refusal is one line for the peer and one for the daemon's log.  The
peer's answers describe the connecting process: a descriptor of the
socket that a trusted process hands to another afterwards is that
process's decision.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: <asm-generic/socket.h>: SO_PEERPIDFD, Linux 6.5.
SO_PEERPIDFD = 77


@dataclass(frozen=True)
class Peer:
    """The credentials of a socket's peer when it connected (SO_PEERCRED):
    pid in our pid namespace (0 when it has none there)."""

    pid: int
    uid: int
    gid: int


def credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("i2I", raw)  # struct ucred: pid_t, uid_t, gid_t
    return Peer(pid, uid, gid)


def _pidfd(sock: socket.socket, peer: Peer) -> int:
    """A pidfd of the peer; OSError when there is none."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
    if peer.pid <= 0:
        raise ProcessLookupError("the peer has no pid in our namespace")
    return os.pidfd_open(peer.pid)


def _fields(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value.strip()
    return out


def _ns(pid: int | str, kind: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{kind}")
    return st.st_dev, st.st_ino


def _exited(pidfd: int) -> bool:
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _cgroup_mounts() -> list[tuple[frozenset[str], str, str]]:
    """(controllers, mount point, root within the hierarchy) of every
    cgroup hierarchy we see (proc(5), mountinfo); v2 has no controllers."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, sup = left.split(), right.split()
            if len(fields) < 5 or len(sup) < 3 or sup[0] not in ("cgroup", "cgroup2"):
                continue
            controllers = frozenset(sup[2].split(",")) if sup[0] == "cgroup" else frozenset()
            out.append((controllers, fields[4], fields[3]))
    return out


def cgroup_dirs(pid: int) -> list[str]:
    """The directories, in our mounts of the cgroup hierarchies, of the
    cgroups of process ``pid`` (cgroups(7): /proc/PID/cgroup names them
    relative to our cgroup namespace, as our mountinfo does)."""
    mounts = _cgroup_mounts()
    dirs = []
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            ident, _, rest = line.rstrip("\n").partition(":")
            names, _, path = rest.partition(":")
            wanted = frozenset(names.split(",")) if names else frozenset()
            for controllers, point, root in mounts:
                if (ident == "0" and not names) != (not controllers):
                    continue
                if wanted and not wanted <= controllers:
                    continue
                if path == root or path.startswith(root.rstrip("/") + "/"):
                    dirs.append(os.path.join(point, path[len(root) :].lstrip("/")).rstrip("/"))
    return dirs


def _under(path: str, tops: Iterable[str]) -> bool:
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


def refusal(
    sock: socket.socket,
    *,
    machine_cgroups: Sequence[str],
    is_guest: Callable[[int], bool],
) -> tuple[Peer | None, str | None]:
    """(the peer's credentials, why it is refused or None).

    ``machine_cgroups``: the cgroup directories the machines were given;
    ``is_guest(tid)``: whether a thread is one of the machines'."""
    try:
        peer = credentials(sock)
    except OSError as exc:
        return None, f"no credentials ({exc.strerror})"
    if peer.uid not in (0, os.geteuid()):
        return peer, f"uid {peer.uid} is not the daemon's user"
    try:
        pidfd = _pidfd(sock, peer)
    except OSError:
        return peer, "the process that connected is gone, or in another pid namespace"
    try:
        info = _fields(f"/proc/self/fdinfo/{pidfd}")
        pid = int(info.get("Pid", "-1"))
        if pid <= 0:
            return peer, "the process that connected is gone, or in another pid namespace"
        if len(info.get("NSpid", str(pid)).split()) > 1:
            return peer, "it runs in a pid namespace of its own (inside a machine)"
        if pid != peer.pid:
            return peer, f"its pid is {pid} now, not {peer.pid}"
        if _ns(pid, "pid") != _ns("self", "pid"):
            return peer, "it runs in another pid namespace (inside a machine)"
        if _ns(pid, "user") != _ns("self", "user"):
            return peer, "it runs in another user namespace (inside a machine)"
        tracer = int(_fields(f"/proc/{pid}/status").get("TracerPid", "0") or 0)
        if tracer and os.path.exists(f"/proc/self/task/{tracer}"):
            return peer, "it is a guest process (traced by this daemon)"
        if is_guest(pid):
            return peer, "it is a guest process"
        if machine_cgroups and _under_any(cgroup_dirs(pid), machine_cgroups):
            return peer, "it runs in a machine's cgroup"
        if _exited(pidfd):
            return peer, "the process that connected is gone"
    except (OSError, ValueError) as exc:
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        return peer, f"cannot inspect it: {getattr(exc, 'strerror', None) or exc}{where}"
    finally:
        os.close(pidfd)
    return peer, None


def _under_any(paths: Iterable[str], tops: Sequence[str]) -> bool:
    return any(_under(p, tops) for p in paths)
