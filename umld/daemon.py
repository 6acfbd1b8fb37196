"""``umld daemon``: many machines in one long-running process.

Threads: the tracer thread (umld.core.host.Host) runs every machine; the
main thread runs trio with the FUSE export (one mount: DIR/machines and
DIR/NAME/ per machine), the control socket, signals and the systemd
notification protocol.  Every background job is owned by the root
nursery.

Control channel: a Unix stream socket beside the mount, ``DIR.sock``,
mode 0600 (only the daemon's user may command it).  One JSON object per
line each way; ``exec`` also passes the client's stdin, stdout and
stderr with SCM_RIGHTS (unix(7)) and is answered a second time with the
command's exit status.

Every peer is checked before it is read (umld._peer): a process inside a
machine, or in a machine's cgroup, is refused with one line whatever it
can reach, and the refusal is logged.  A connection that has not sent
its request within REQUEST_TIMEOUT seconds is closed.  A client that goes
away while its ``exec`` runs hangs the command up as a terminal would:
SIGHUP and SIGCONT to its process group, SIGKILL HANGUP_GRACE seconds
later if it is still there.

Machine definitions: ``MACHINES_DIR/NAME.toml`` with ``command`` (list
or string), ``restart`` (``no`` | ``on-failure`` | ``always``) and the
settings of ``umld run --config``.
"""

from __future__ import annotations

import array
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, ClassVar, NamedTuple

import trio

from umld.core import Config, MachineControl, SettingError, shell_status
from umld.core.host import Host, HostedMachine
from umld.errors import UmldError, UsageError, get_logger

log = get_logger("umld.daemon")

RESTART_POLICIES = ("no", "on-failure", "always")
RESTART_DELAY = 1.0
MAX_LINE = 1 << 20
#: Seconds a control connection may take to send its request line: a
#: client sends it at once (umld/client.py), so only a stuck or idle
#: connection, holding a descriptor of the daemon's, ever waits that long.
REQUEST_TIMEOUT = 5.0
#: Seconds between the SIGHUP of a hung-up exec and its SIGKILL.
HANGUP_GRACE = 3.0


def default_mount() -> str:
    """The daemon's export: the default place of an export named "daemon"."""
    from umld.core.paths import default_mountpoint

    return default_mountpoint("daemon")


def socket_path(mount: str) -> str:
    return os.path.abspath(mount).rstrip("/") + ".sock"


def default_machines_dir() -> str:
    if os.geteuid() == 0:
        return "/etc/umld/machines"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "umld", "machines")


# -- systemd ------------------------------------------------------------------


def sd_notify(text: str) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            # Never wait for the manager: a full queue drops a status line
            # rather than freezing the daemon.
            s.send(text.encode(), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


class _JournalFormatter(logging.Formatter):
    """Under systemd: "<N>message", the priority prefix of sd-daemon(3),
    and no time stamps (the journal adds its own)."""

    LEVELS: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        prio = self.LEVELS.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("umld")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


# -- definitions --------------------------------------------------------------


def load_definition(path: str) -> tuple[Config, list[str], str]:
    """(config, command, restart policy) from a machine's TOML file."""
    from umld.core import settings

    name = os.path.basename(path).removesuffix(".toml")
    data = settings.read_toml(path, "")
    command = settings.command_from(data.pop("command", []), path)
    restart = data.pop("restart", "no")
    if restart not in RESTART_POLICIES:
        raise UsageError(f"{path}: restart must be one of {', '.join(RESTART_POLICIES)}")
    data.setdefault("name", name)
    return Config(**settings.from_mapping(data, where=path)), command, restart


# -- the daemon ---------------------------------------------------------------


class Timing(NamedTuple):
    """The daemon's delays (options of ``umld daemon``; tests shorten them
    instead of sleeping on the defaults)."""

    #: Seconds between a machine's end and its restart (systemd's RestartSec).
    restart_delay: float = RESTART_DELAY
    #: Seconds a control connection may take to send its request.
    request_timeout: float = REQUEST_TIMEOUT
    #: Seconds between SIGHUP and SIGKILL for an exec whose client left.
    hangup_grace: float = HANGUP_GRACE


class Daemon:
    def __init__(
        self, mount: str, machines_dir: str, tracer: str, timing: Timing | None = None
    ) -> None:
        self.timing = timing or Timing()
        self.mount = os.path.abspath(mount)
        self.machines_dir = machines_dir
        self.host = Host(tracer)
        self.definitions: dict[str, tuple[Config, list[str], str]] = {}
        self.policies: dict[str, str] = {}
        self.exports: dict[int, Any] = {}
        self.events: dict[str, Any] = {}
        self.stopping = False
        from umld.core.vde import Switches

        #: The VDE switches it owns (``umld switch``).
        self.switches = Switches(self.mount)
        self.token: trio.lowlevel.TrioToken | None = None
        self._restart_send: trio.MemorySendChannel[str] | None = None

    # machines ----------------------------------------------------------

    def start_machine(self, cfg: Config, argv: list[str], restart: str = "no") -> HostedMachine:
        from umld.fusefs import EventLog

        name = cfg.name or ""
        log_ = self.events.get(name)
        if log_ is None:
            log_ = self.events[name] = EventLog()

        def attach(control: MachineControl) -> None:
            control.subscribe(lambda ev: log_.append(ev.line()))

        # The control socket is never in reach of a guest (a tree it is
        # given may hold it: the sandbox covers it).  The export mount is
        # hidden by the sandbox like every umld export.
        sock = socket_path(self.mount)
        if sock not in cfg.hidden:
            cfg.hidden.append(sock)
        m = self.host.start_machine(cfg, argv, on_control=attach)
        self.policies[m.name] = restart
        m.on_exit.append(self._exited)
        log.info("machine %s started: %s", m.name, " ".join(argv) or "(idle)")
        self._status()
        return m

    def _exited(self, m: HostedMachine) -> None:  # tracer thread
        log.info("machine %s exited with status %s", m.name, shell_status(m.status or 0))
        # Its tree goes with it (a restart makes a new machine and tree).
        self.exports.pop(id(m), None)
        policy = self.policies.get(m.name, "no")
        again = policy == "always" or (policy == "on-failure" and m.returncode != 0)
        token, send = self.token, self._restart_send
        if token is None:
            return
        try:
            token.run_sync_soon(self._status)
            if again and not self.stopping and send is not None:
                token.run_sync_soon(lambda: _try_send(send, m.name))
        except trio.RunFinishedError:
            pass

    async def _restarter(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async for name in receive:
            await trio.sleep(self.timing.restart_delay)
            m = self.host.machines.get(name)
            if self.stopping or m is None or m.state in ("starting", "running"):
                continue
            if self.policies.get(name, "no") == "no":
                continue  # stopped, or its definition removed, meanwhile
            log.info("restarting machine %s (policy %s)", name, self.policies.get(name))
            try:
                policy = self.policies.get(name, "no")
                await trio.to_thread.run_sync(self.start_machine, m.config, m.argv, policy)
            except UmldError as exc:
                log.error("cannot restart %s: %s", name, exc)

    def _status(self) -> None:
        running = sum(1 for m in self.host.machines.values() if m.running)
        sd_notify(f"STATUS={running} machine(s) running")

    def load_definitions(self, *, apply: bool) -> None:
        """Read MACHINES_DIR; start new machines, stop removed ones, and
        apply changed live settings to running ones."""
        found: dict[str, tuple[Config, list[str], str]] = {}
        if os.path.isdir(self.machines_dir):
            for entry in sorted(os.listdir(self.machines_dir)):
                if not entry.endswith(".toml"):
                    continue
                try:
                    found[entry[:-5]] = load_definition(os.path.join(self.machines_dir, entry))
                except UmldError as exc:
                    log.error("%s", exc)
        old = self.definitions
        self.definitions = found
        if not apply:
            return
        for name, (cfg, argv, restart) in found.items():
            m = self.host.machines.get(name)
            if m is None or not m.running:
                if name not in old or m is None:
                    self._start_logged(cfg, argv, restart)
                continue
            self.policies[name] = restart
            if m.control is not None:
                self._apply_live(m.control, cfg)
        for name in set(old) - set(found):
            m = self.host.machines.get(name)
            self.policies[name] = "no"  # also ends pending restarts
            if m is not None and m.running:
                log.info("machine %s: definition removed, stopping it", name)
                m.stop()

    def _start_logged(self, cfg: Config, argv: list[str], restart: str) -> None:
        try:
            self.start_machine(cfg, argv, restart)
        except UmldError as exc:
            log.error("cannot start machine %s: %s", cfg.name, exc)

    @staticmethod
    def _apply_live(control: MachineControl, cfg: Config) -> None:
        """A changed definition's live settings, applied to its running
        machine (SIGHUP); a setting the file does not give stays as it is."""
        from umld.core import settings

        for row in settings.LIVE:
            if not row.start:
                continue
            value = getattr(cfg, row.attr)
            if value is None or value == row.default:
                continue
            text = row.text(value)
            if text == control.get(row.key):
                continue
            try:
                control.set(row.key, text, source="definition file")
            except SettingError as exc:
                log.error("machine %s: %s: %s", control.name, row.key, exc)

    def inside_a_machine(self, tid: int) -> bool:
        """Whether host thread ``tid`` belongs to one of our machines (any
        thread: the export asks in every request)."""
        for m in list(self.host.machines.values()):
            control = m.control
            if control is not None and control.is_guest_thread(tid):
                return True
        return False

    # the export ----------------------------------------------------------

    def tree(self) -> Any:
        from umld.fusefs import DynamicDirectory, SnapshotFile, build_tree

        machines_file = SnapshotFile(self.machines_table)

        def tree_of(m: HostedMachine) -> Any:
            node = self.exports.get(id(m))
            if node is None and m.control is not None:
                node = build_tree(m.control, self.events[m.name])
                self.exports[id(m)] = node
            return node

        def listing() -> dict[str, Any]:
            out: dict[str, Any] = {"machines": machines_file}
            for name, m in list(self.host.machines.items()):
                if m.running:
                    node = tree_of(m)
                    if node is not None:
                        out[name] = node
            return out

        def lookup(name: str) -> Any:
            if name == "machines":
                return machines_file
            m = self.host.machines.get(name)
            return tree_of(m) if m is not None and m.running else None

        return DynamicDirectory(listing, lookup=lookup)

    def machines_table(self) -> bytes:
        lines = ["NAME\tSTATE\tUPTIME\tPROCESSES\tCPU\tRESTART\tCOMMAND"]
        tick = os.sysconf("SC_CLK_TCK")
        for name, m in sorted(self.host.machines.items()):
            procs, cpu = 0, 0.0
            if m.running and m.control is not None:
                infos = m.control.processes()
                procs = len(infos)
                cpu = sum(p.cpu_ticks for p in infos) / tick
            end = m.ended_at or time.time()
            # Ended: its status as a shell shows it ($?: 128+N for signal N).
            state = m.state if m.status is None else f"{m.state}({shell_status(m.status)})"
            lines.append(
                f"{name}\t{state}\t{end - m.started_at:.0f}\t{procs}\t{cpu:.2f}\t"
                f"{self.policies.get(name, 'no')}\t{' '.join(m.argv) or '(idle)'}"
            )
        return ("\n".join(lines) + "\n").encode()

    # the control socket --------------------------------------------------

    async def serve_control(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        path = socket_path(self.mount)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._client, stream)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _peer_refusal(self, sock: Any) -> str | None:
        """Why the peer of ``sock`` may not command us, or None (logged)."""
        from umld import _peer

        cgroups = [
            path
            for m in list(self.host.machines.values())
            if m.running and m.control is not None
            for path in m.control.cgroups
        ]
        peer, why = _peer.refusal(sock, machine_cgroups=cgroups, is_guest=self.inside_a_machine)
        if why is not None:
            who = f"pid {peer.pid} (uid {peer.uid})" if peer is not None else "a peer"
            log.warning("control socket: refused %s: %s", who, why)
        return why

    async def _client(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        fds: list[int] = []
        try:
            # Checked before anything it sent is read (see umld._peer).
            why = self._peer_refusal(sock)
            if why is not None:
                await _send(sock, {"error": f"refused: {why}"})
                return
            data = b""
            timeout = self.timing.request_timeout
            with trio.move_on_after(timeout) as waited:
                data = await _recv_request(sock, fds)
            if waited.cancelled_caught:
                log.debug("control socket: no request within %s s", timeout)
                await _send(sock, {"error": f"no request within {timeout:g} s"})
                return
            try:
                request = json.loads(data)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                await _send(sock, {"error": "bad request"})
                return
            await self._dispatch(sock, request, fds)
        except _TooLong:
            try:
                await _send(sock, {"error": f"request longer than {MAX_LINE} bytes"})
            except OSError:
                pass
        except (OSError, trio.BrokenResourceError) as exc:
            log.debug("control client went away: %s", exc)
        except Exception:
            log.exception("control request failed")
            try:
                await _send(sock, {"error": "internal error (see the daemon's log)"})
            except OSError:
                pass
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            sock.close()

    async def _dispatch(self, sock: Any, req: dict[str, Any], fds: list[int]) -> None:
        op = req.get("op")
        name = str(req.get("name") or "")
        if op == "ls":
            await _send(sock, {"ok": True, "table": self.machines_table().decode()})
        elif op == "start":
            from umld.core.settings import from_mapping

            values = req.get("config") or {}
            try:
                if not isinstance(values, dict):
                    raise UsageError("config must be an object")
                values["name"] = name
                cfg = Config(**from_mapping(values, where="start"))
                argv = [str(a) for a in req.get("argv") or []]
                restart = str(req.get("restart") or "no")
                if restart not in RESTART_POLICIES:
                    raise UsageError(f"restart must be one of {', '.join(RESTART_POLICIES)}")
                await trio.to_thread.run_sync(lambda: self.start_machine(cfg, argv, restart))
            except UmldError as exc:
                await _send(sock, {"error": str(exc).removeprefix("umld: ")})
                return
            await _send(sock, {"ok": True})
        elif op == "stop":
            m = self.host.machines.get(name)
            if m is None or not m.running:
                await _send(sock, {"error": f"no running machine named {name!r}"})
                return
            self.policies[name] = "no"
            await trio.to_thread.run_sync(m.stop)
            await trio.to_thread.run_sync(lambda: m.exited.wait(15))
            await _send(sock, {"ok": True, "returncode": m.returncode})
        elif op == "exec":
            await self._exec(sock, name, req, fds)
        elif op == "switch":
            await self._switch(sock, name, req)
        else:
            await _send(sock, {"error": f"unknown operation {op!r}"})

    async def _switch(self, sock: Any, name: str, req: dict[str, Any]) -> None:
        """``umld switch create|ls|rm|connect``: the VDE switches we own
        (umld.core.vde.Switches)."""
        action = req.get("action")
        try:
            if action == "ls":
                await _send(sock, {"ok": True, "switches": self.switches.table()})
                return
            if action == "create":
                path = await trio.to_thread.run_sync(self.switches.create, name)
                await _send(sock, {"ok": True, "path": path})
                return
            if action == "rm":
                await trio.to_thread.run_sync(self.switches.remove, name)
            elif action == "connect":
                argv = [str(a) for a in req.get("argv") or []]
                await trio.to_thread.run_sync(self.switches.connect, name, argv)
            else:
                await _send(sock, {"error": f"unknown switch action {action!r}"})
                return
        except UmldError as exc:
            await _send(sock, {"error": str(exc).removeprefix("umld: ")})
            return
        await _send(sock, {"ok": True})

    async def _exec(self, sock: Any, name: str, req: dict[str, Any], fds: list[int]) -> None:
        m = self.host.machines.get(name)
        if m is None or not m.running:
            await _send(sock, {"error": f"no running machine named {name!r}"})
            return
        if len(fds) != 3:
            await _send(sock, {"error": "exec needs the client's stdin, stdout and stderr"})
            return
        argv = [str(a) for a in req.get("argv") or []]
        if not argv:
            await _send(sock, {"error": "no command"})
            return
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        status: list[int] = []

        def on_exit(st: int) -> None:
            status.append(st)
            token.run_sync_soon(done.set)

        cwd = req.get("cwd")
        env = req.get("env")
        try:
            session = await trio.to_thread.run_sync(
                lambda: m.exec(
                    argv,
                    stdio=(fds[0], fds[1], fds[2]),
                    cwd=str(cwd) if cwd else None,
                    env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else None,
                    on_exit=on_exit,
                )
            )
        except UmldError as exc:
            await _send(sock, {"error": str(exc).removeprefix("umld: ")})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hang_up_when_gone, sock, name, session, done)
            try:
                await _send(sock, {"ok": True})
            except OSError:
                pass  # gone already: the watcher hangs up
            await done.wait()
            nursery.cancel_scope.cancel()
        await _send(sock, {"exit": shell_status(status[0])})

    async def _hang_up_when_gone(
        self, sock: Any, name: str, session: int, done: trio.Event
    ) -> None:
        """Wait for the exec's client to go away (end of file or an error
        on its socket; it sends nothing more), then end its command as a
        terminal hangup ends a session's job (SIGHUP, SIGCONT) and kill
        what is left of its process group after its hang-up grace."""
        while True:
            try:
                if not await sock.recv(4096):
                    break
            except OSError:
                break
        log.info("exec in %s: the client went away; hanging up its command", name)
        for sig in (signal.SIGHUP, signal.SIGCONT):
            _signal_group(session, sig)
        with trio.move_on_after(self.timing.hangup_grace):
            await done.wait()
            return
        log.info("exec in %s: the command outlived its hangup; killing it", name)
        _signal_group(session, signal.SIGKILL)

    # main ----------------------------------------------------------------

    async def run(self) -> None:
        from umld.fusefs import clean_stale_mount, serve

        self.token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[str](100)
        self._restart_send = send
        clean_stale_mount(self.mount)
        os.makedirs(self.mount, exist_ok=True)
        mounted = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: serve(
                        self.tree(),
                        self.mount,
                        fsname="umld",
                        ready=mounted.set,
                        refuse=self.inside_a_machine,
                    )
                )
                await mounted.wait()
                await nursery.start(self.serve_control)
                nursery.start_soon(self._restarter, receive)
                await trio.to_thread.run_sync(lambda: self.load_definitions(apply=True))
                sd_notify("READY=1")
                self._status()
                log.info(
                    "umld daemon ready at %s (control socket %s)",
                    self.mount,
                    socket_path(self.mount),
                )
                async for signo in signals:
                    if signo == signal.SIGHUP:
                        sd_notify("RELOADING=1")
                        log.info("SIGHUP: re-reading %s", self.machines_dir)
                        await trio.to_thread.run_sync(lambda: self.load_definitions(apply=True))
                        sd_notify("READY=1")
                        self._status()
                        continue
                    log.info("%s: stopping every machine", signal.Signals(signo).name)
                    sd_notify("STOPPING=1")
                    self.stopping = True
                    await trio.to_thread.run_sync(self.host.close)
                    await trio.to_thread.run_sync(self.switches.close)
                    nursery.cancel_scope.cancel()
                    break


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The group's leader (the sandbox that entered the machine) lives
    # until the command it waits for has ended, so the group id is still
    # this session's until ``done`` is set.
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _try_send(send: trio.MemorySendChannel[str], name: str) -> None:
    try:
        send.send_nowait(name)
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass


async def _send(sock: Any, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


class _TooLong(Exception):
    """A request line beyond MAX_LINE."""


async def _recv_request(sock: Any, fds: list[int]) -> bytes:
    """One request line; the descriptors that came with it are added to
    ``fds`` as they come (the caller closes them, whatever happens)."""
    buf = bytearray()
    size = array.array("i").itemsize
    while b"\n" not in buf:
        # Close-on-exec at once (unix(7)): only the exec'd command may get
        # them, as its 0, 1, 2, never a sandbox or anything it starts.
        msg, ancdata, _flags, _addr = await sock.recvmsg(
            65536, socket.CMSG_SPACE(3 * size), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - (len(cdata) % size)])
                fds.extend(a)
        if not msg:
            break
        buf += msg
        if len(buf) > MAX_LINE:
            raise _TooLong
    return bytes(buf).split(b"\n", 1)[0]


def main(
    mount: str | None,
    machines_dir: str | None,
    tracer: str,
    verbose: bool,
    timing: Timing | None = None,
) -> int:
    setup_logging(verbose)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    daemon = Daemon(
        mount or default_mount(), machines_dir or default_machines_dir(), tracer, timing
    )
    daemon.host.start()
    try:
        trio.run(daemon.run)
    except (UmldError, BaseExceptionGroup) as exc:
        failure = _only_umld_error(exc)
        if failure is None:
            raise
        daemon.host.close(grace=2)
        daemon.switches.close()
        raise failure from None
    return 0


def _only_umld_error(exc: BaseException) -> UmldError | None:
    """The UmldError to report when ``exc`` is one or a group (a trio
    nursery's, such as the export's failed mount) of nothing else."""
    if isinstance(exc, UmldError):
        return exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    matched, rest = exc.split(UmldError)
    while matched is not None and rest is None:
        first = matched.exceptions[0]
        if not isinstance(first, BaseExceptionGroup):
            return first if isinstance(first, UmldError) else None
        matched = first
    return None
