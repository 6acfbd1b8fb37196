"""The daemon's clients: ``umld start|stop|ls|exec|logs`` talk to a
running ``umld daemon`` through its control socket (umld/daemon.py) or
read its export."""

from __future__ import annotations

import array
import json
import os
import socket
import sys
from typing import Any

from umld.errors import UmldError, UsageError


def _socket_path(mount: str) -> str:
    return os.path.abspath(mount).rstrip("/") + ".sock"


def request(mount: str, req: dict[str, Any], fds: tuple[int, ...] = ()) -> socket.socket:
    """Send one request; the connected socket for the answers."""
    path = _socket_path(mount)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise UmldError(
            f"umld: no daemon is running at {mount} (start one with `umld daemon --mount {mount}`"
            " or `systemctl start umld`)"
        ) from None
    except PermissionError:
        s.close()
        raise UmldError(f"umld: {path}: permission denied (the daemon's user only)") from None
    data = (json.dumps(req) + "\n").encode()
    try:
        if fds:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        # The daemon answered and closed before reading (a refusal): its
        # line is still there to read.
        pass
    return s


def answer(s: socket.socket, buf: bytearray) -> dict[str, Any]:
    while b"\n" not in buf:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise UmldError("umld: the daemon closed the connection")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    reply = json.loads(line)
    if "error" in reply:
        raise UmldError(f"umld: {reply['error']}")
    return reply  # type: ignore[no-any-return]


def call(mount: str, req: dict[str, Any]) -> dict[str, Any]:
    with request(mount, req) as s:
        return answer(s, bytearray())


def exec_in(mount: str, name: str, argv: list[str], cwd: str | None) -> int:
    """Run argv in machine ``name`` with our stdin/stdout/stderr."""
    env = {k: v for k, v in os.environ.items() if k in ("TERM", "LANG", "LC_ALL", "COLUMNS")}
    req = {"op": "exec", "name": name, "argv": argv, "cwd": cwd, "env": env}
    with request(mount, req, (0, 1, 2)) as s:
        buf = bytearray()
        answer(s, buf)
        return int(answer(s, buf)["exit"])


def logs(mount: str, name: str, follow: bool) -> int:
    """Print a machine's events; with ``follow``, keep printing new ones.

    The events file never ends while the machine runs: a read at its end
    waits for the next line, or fails with EAGAIN on a non-blocking
    descriptor, which is how the snapshot without ``follow`` ends."""
    path = os.path.join(mount, name, "events")
    if not os.path.exists(os.path.join(mount, "machines")):
        raise UmldError(f"umld: no daemon export at {mount}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NONBLOCK))
    except FileNotFoundError:
        raise UmldError(f"umld: no running machine named {name!r}") from None
    out = sys.stdout.buffer
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            out.write(chunk)
            out.flush()  # a pipe reader sees each line as it comes
    except KeyboardInterrupt:
        return 130
    finally:
        os.close(fd)
    return 0


def machine_entry(
    command: str, entry: str, name: str | None, mount: str | None, lacking: str
) -> str:
    """Where ``umld COMMAND`` finds a machine's export entry ENTRY: DIR/NAME/
    ENTRY in a daemon's export (``--mount DIR`` or the default daemon's),
    DIR/ENTRY of one ``umld run --mount DIR``, or the default export of a
    ``umld run --name NAME --mount``.  A machine that runs without ENTRY is
    one line, ``umld: the machine ... LACKING``."""
    from umld.core.paths import default_mountpoint
    from umld.daemon import default_mount

    if mount is not None:
        candidates = [os.path.join(mount, name, entry) if name else os.path.join(mount, entry)]
        where = f"named {name!r} in {mount}" if name else f"exported at {mount}"
    elif name is None:
        raise UsageError(f"umld {command}: give a machine NAME or --mount DIR")
    else:
        candidates = [
            os.path.join(default_mount(), name, entry),
            os.path.join(default_mountpoint(name), entry),
        ]
        where = f"named {name!r}"
    for path in candidates:
        if os.path.exists(path):
            return path
    if os.path.exists(os.path.join(os.path.dirname(candidates[0]), "status")):
        raise UmldError(f"umld: the machine {where}{lacking}")
    raise UmldError(f"umld: no running machine {where}")


def diff_file(name: str | None, mount: str | None) -> str:
    """Where ``umld diff`` reads (machine_entry)."""
    return machine_entry(
        "diff",
        "diff",
        name,
        mount,
        ": its root is not copy-on-write (--root or --read-only-root): it changes no host file",
    )


def diff(name: str | None, mount: str | None) -> int:
    """Print what a running machine changed on the host's tree."""
    path = diff_file(name, mount)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UmldError(f"umld: cannot read {path}: {exc.strerror}") from None
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
