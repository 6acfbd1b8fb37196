"""The process that runs a container's machine, from ``create`` to its end.

``create`` forks it twice (so that it is nobody's child but the engine's
monitor's, which made itself a subreaper to reap it) and waits on a pipe
for one line: ``created PID`` once the machine is made and its first
process waits before the command (the sandbox's ``hold``), or ``error
WHY``.  From then on it serves ``ctl.sock``:

``state``   ``created``, ``running``, ``paused`` or ``stopped``
``start``   lets the first process go on (``g`` on the hold socket)
``kill N``  signal N to the container's first process; before the start,
            any signal ends the container (its process has not begun)
``pause``, ``resume``  every process of the machine stopped, or let go on
``pids``    the host pids of the machine's processes
``exec J``  (with the caller's stdio, SCM_RIGHTS) the command of JSON J
            (args, env, cwd, uid, gid, groups) started in the machine: ``pid N``,
            then ``exit S`` when it ends

and it ends when the machine does, with the first process's status
(``umld run``'s: 128+N for signal N), having written that wait status to
``exit`` for ``delete`` and ``run``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from umld.core.sandbox import Caps, Privileges
from umld.errors import UmldError, get_logger
from umld.oci._spec import Plan
from umld.oci._state import Store

log = get_logger("umld.oci")


class Supervisor:
    def __init__(
        self, store: Store, container_id: str, plan: Plan, ready: int, console: int | None = None
    ) -> None:
        #: A connection to the engine's console socket (process.terminal).
        self.console = console
        self.store = store
        self.id = container_id
        self.plan = plan
        self.dir = store.dir(container_id)
        self._ready = ready
        self.status = "creating"
        self._lock = threading.Lock()
        self.control: Any = None
        self.machine: Any = None
        # The machine's end of the hold, and ours.
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    # -- the line to create ----------------------------------------------------

    def _tell(self, line: str) -> None:
        if self._ready < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._ready, (" ".join(line.split()) + "\n").encode())
        os.close(self._ready)
        self._ready = -1

    def _watch_hold(self) -> None:
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = self._ours.recv(64)
            except OSError:
                return
            if not chunk:
                return  # the machine ended before it was made
            data += chunk
        if data == b"held\n":
            with self._lock:
                self.status = "created"
            self._tell(f"created {os.getpid()}")

    # -- ctl.sock ----------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            # A thread each: an exec's connection lasts as long as its command.
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
                try:
                    line = data.decode(errors="replace").strip()
                    if line.startswith("exec "):
                        self._exec(conn, line.removeprefix("exec "), fds)
                        return
                    answer = self._handle(line)
                finally:
                    for fd in fds:
                        os.close(fd)
                conn.sendall(answer.encode() + b"\n")
            except OSError:
                return

    def _exec(self, conn: socket.socket, request: str, fds: list[int]) -> None:
        """``exec JSON`` with the client's stdin, stdout and stderr: the
        command started in the machine (``pid N``), then its wait status
        (``exit S``) once it has ended."""
        import json

        if len(fds) not in (3, 4):
            conn.sendall(b"error: exec needs the caller's stdin, stdout and stderr\n")
            return
        with self._lock:
            status = self.status
        if status not in ("running", "paused") or self.machine is None:
            conn.sendall(f"error: the container is {status}\n".encode())
            return
        try:
            req = json.loads(request)
            done = threading.Event()
            result: list[int] = []

            def on_exit(st: int) -> None:
                result.append(st)
                done.set()

            pid = self.machine.exec(
                [str(a) for a in req["args"]],
                stdio=(fds[0], fds[1], fds[2]),
                env={str(k): str(v) for k, v in req.get("env", {}).items()},
                cwd=req.get("cwd") or "/",
                uid=req.get("uid"),
                gid=req.get("gid"),
                privileges=Privileges(
                    tuple(int(g) for g in req.get("groups") or ()),
                    None if req.get("caps") is None else Caps(*map(int, req["caps"])),
                    # The container's own filter, as runc's exec applies it.
                    self.plan.privileges.seccomp,
                ),
                # A fourth descriptor: the engine's console socket, connected.
                console=(fds[3], *map(int, req.get("console_size") or (80, 24)))
                if len(fds) == 4
                else None,
                on_exit=on_exit,
            )
        except (UmldError, ValueError, KeyError, TypeError) as exc:
            conn.sendall(f"error: {str(exc).removeprefix('umld: ')}\n".encode())
            return
        conn.settimeout(None)
        conn.sendall(f"pid {pid}\n".encode())
        done.wait()
        conn.sendall(f"exit {result[0]}\n".encode())

    def _handle(self, line: str) -> str:
        words = line.split()
        if words == ["state"]:
            return self.status
        if words == ["start"]:
            with self._lock:
                if self.status != "created":
                    return f"error: the container is {self.status}, not created"
                self.status = "running"
                try:
                    self._ours.sendall(b"g")
                except OSError as exc:
                    return f"error: the container's process is gone ({exc.strerror})"
            return "ok"
        if len(words) == 2 and words[0] == "kill" and words[1].isdigit():
            return self._kill(int(words[1]))
        if words in (["pause"], ["resume"]):
            return self._pause(words[0])
        if words == ["pids"]:
            control = self.control
            pids = sorted(control.pids().values()) if control is not None else []
            return " ".join(map(str, pids))
        return f"error: unknown request {line[:60]!r}"

    def _pause(self, verb: str) -> str:
        """Every process of the machine stopped (SIGSTOP, the export's
        ``ctl pause``) or let go on; runc's state says ``paused`` meanwhile."""
        with self._lock:
            want = "running" if verb == "pause" else "paused"
            if self.status != want or self.control is None:
                return f"error: the container is {self.status}, not {want}"
            self.control.control_machine(verb)
            self.status = "paused" if verb == "pause" else "running"
        return "ok"

    def _kill(self, signo: int) -> str:
        with self._lock:
            status = self.status
        control = self.control
        if status in ("running", "paused") and control is not None:
            pid = control.guest_process()
            if pid is not None:
                try:
                    os.kill(pid, signo)
                except OSError as exc:
                    return f"error: {exc.strerror}"
                return "ok"
        if status in ("creating", "created", "running") and control is not None:
            # Its command has not begun: whatever the signal, it ends here.
            control.on_tracer(control.kernel.kill_all)
            return "ok"
        return f"error: the container is {status}"

    # -- the machine -------------------------------------------------------------

    def _log_to_file(self) -> None:
        """What umld logs while it runs this container (an export that
        failed, a tracer error) also goes to ``supervisor.log`` in its
        state directory: its stderr is the container's, which the engine
        keeps as the program's output."""
        import logging

        handler = logging.FileHandler(self.dir / "supervisor.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logging.getLogger("umld").addHandler(handler)

    def run(self) -> int:
        from umld.core import shell_status
        from umld.core.machine import Config, Machine

        # Who to end if create gives up waiting (it reads this line first).
        with contextlib.suppress(OSError):
            os.write(self._ready, f"pid {os.getpid()}\n".encode())
        self._log_to_file()
        sock = self.dir / "ctl.sock"
        self._listener.bind(str(sock))
        os.chmod(sock, 0o600)
        self._listener.listen(16)
        threading.Thread(target=self._serve, name="umld-oci-ctl", daemon=True).start()
        threading.Thread(target=self._watch_hold, name="umld-oci-hold", daemon=True).start()
        exports: list[Any] = []

        def on_start(control: Any) -> None:
            self.control = control
            if self.plan.mount is None:
                return
            from umld.fusefs import ExportThread

            export = ExportThread(control, self.plan.mount, name=self.id)
            export.start()
            exports.append(export)

        for res, soft, hard in self.plan.rlimits:
            try:
                resource.setrlimit(res, (soft, hard))
            except (OSError, ValueError) as exc:
                self._tell(f"error config.json: process.rlimits: {exc}")
                return 1
        if self.plan.oom_score_adj is not None:
            # Inherited by everything the supervisor starts: the machine's
            # first process starts at it (and, below 0, writes it back over
            # the floor the sandbox sets, sandbox.c set_oom_floor).
            try:
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write(str(self.plan.oom_score_adj))
            except OSError as exc:
                self._tell(f"error config.json: process.oomScoreAdj: {exc.strerror}")
                return 1
        status = None
        try:
            cfg = Config(
                **self.plan.settings,
                # The runtime's own files are never the container's.
                hidden=[str(self.store.root)],
                masked=self.plan.masked,
                readonly=self.plan.readonly,
            )
            fd = self._theirs.fileno()
            os.set_inheritable(fd, True)
            if self.console is not None:
                os.set_inheritable(self.console, True)
            self.machine = Machine(cfg)
            result = self.machine.run(
                self.plan.args,
                env=self.plan.env,
                cwd=self.plan.cwd,
                on_start=on_start,
                live=self.plan.mount is not None,
                hold=fd,
                privileges=self.plan.privileges,
                console=self.console,
                console_size=self.plan.console_size,
            )
            status = result.status
        except UmldError as exc:
            self._tell("error " + str(exc).removeprefix("umld: "))
            return exc.status or 1
        except Exception as exc:  # reported to create, and logged
            log.exception("container %s failed", self.id)
            self._tell(f"error {exc}")
            return 1
        finally:
            # Stopped as soon as its process has ended: the export's
            # unmount (it waits for writers) comes after.
            if status is not None:
                Path(self.dir / "exit").write_text(str(status))
            with self._lock:
                self.status = "stopped"
            for export in exports:
                with contextlib.suppress(Exception):
                    export.stop()
            self._listener.close()
            with contextlib.suppress(OSError):
                sock.unlink()
        # A machine that ended before it was made says why on its stderr.
        self._tell("error the container's process ended before it was created")
        return shell_status(status)


def detach() -> None:
    """This (forked) process leaves the caller's session and process group;
    the engine's stdio stays the container's."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
