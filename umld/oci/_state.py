"""Where the runtime keeps its containers, and what ``state`` says.

One directory per container under the runtime's root (``--root``,
``/run/umld-oci`` as root, ``$XDG_RUNTIME_DIR/umld-oci`` otherwise), mode
0700: ``state.json`` (written once by ``create``: the bundle, the
supervisor's pid and start time, the annotations, the export's place),
``ctl.sock`` (the supervisor's control socket: ``state``, ``start``,
``kill N``), ``exit`` (the wait status, written by the supervisor as
it ends) and ``supervisor.log`` (what umld logged while running it).

The container's process, for the spec's ``pid``, is the supervisor: the
umld that runs the machine, as gVisor's runsc reports its sandbox.  It
is what an engine's monitor (conmon, containerd's shim) reaps, and it
ends with the status of the container's own first process (128+N for a
signal, as ``umld run`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from umld.errors import UmldError

#: The runtime-spec version umld states it follows.
OCI_VERSION = "1.2.0"

#: A container id (runc's rule): safe as one path component.
_ID = re.compile(r"^[\w+.-]+$")


def default_root() -> Path:
    if os.geteuid() == 0:
        return Path("/run/umld-oci")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/umld-{os.geteuid()}"
    return Path(base) / "umld-oci"


def default_mount(container_id: str) -> str:
    """Where a container's export goes unless ``umld.mount`` says."""
    if os.geteuid() == 0:
        return f"/run/umld/oci/{container_id}"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/umld-{os.geteuid()}"
    return f"{base}/umld/oci/{container_id}"


def check_id(container_id: str) -> str:
    if not _ID.match(container_id) or container_id in (".", ".."):
        raise UmldError(f"invalid container id {container_id!r}", 1)
    return container_id


@dataclass
class Record:
    id: str
    bundle: str
    pid: int
    #: The supervisor's start time (/proc/PID/stat field 22): a pid
    #: reused by another process is not taken for it.
    started: int
    created: str
    mount: str | None
    annotations: dict[str, str] = field(default_factory=dict)
    hooks: dict[str, Any] = field(default_factory=dict)


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields follow the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


class Store:
    """The runtime's root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, container_id: str) -> Path:
        return self.root / check_id(container_id)

    def make(self, container_id: str) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir(container_id)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise UmldError(f"container {container_id} exists already", 1) from None
        except OSError as exc:
            raise UmldError(f"cannot create {path}: {exc.strerror}", 1) from None
        return path

    def save(self, record: Record) -> None:
        path = self.dir(record.id) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)

    def load(self, container_id: str) -> Record:
        path = self.dir(container_id) / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UmldError(f"container {container_id} does not exist", 1) from None
        except (OSError, ValueError) as exc:
            raise UmldError(f"container {container_id}: unreadable state ({exc})", 1) from None
        return Record(**data)

    def ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if (p / "state.json").exists())
        except FileNotFoundError:
            return []

    def alive(self, record: Record) -> bool:
        return start_time(record.pid) == record.started

    def ask(self, container_id: str, line: str, timeout: float = 30.0) -> str:
        """One request to the container's supervisor; its one-line answer.
        UmldError when it does not answer (it has ended)."""
        path = self.dir(container_id) / "ctl.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(path))
                s.sendall(line.encode() + b"\n")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError as exc:
                raise UmldError(f"container {container_id} is not running ({exc})", 1) from None
        return answer.decode(errors="replace").strip()

    def status(self, record: Record) -> str:
        if not self.alive(record) or (self.dir(record.id) / "exit").exists():
            return "stopped"
        with contextlib.suppress(UmldError):
            answer = self.ask(record.id, "state", timeout=5.0)
            if answer in ("creating", "created", "running", "paused", "stopped"):
                return answer
        return "stopped" if not self.alive(record) else "running"

    def exit_status(self, container_id: str) -> int | None:
        try:
            return int((self.dir(container_id) / "exit").read_text())
        except (OSError, ValueError):
            return None

    def state(self, record: Record) -> dict[str, Any]:
        """The spec's state of the container (runtime-spec, "State")."""
        status = self.status(record)
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": record.id,
            "status": status,
            "bundle": record.bundle,
            "annotations": record.annotations,
        }
        if status != "stopped":
            out["pid"] = record.pid
        return out
