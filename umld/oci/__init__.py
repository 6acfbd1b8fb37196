"""umld as an OCI runtime: ``umld oci`` (and ``umld-oci``), runc's command line.

An engine (podman, containerd, Kubernetes through a RuntimeClass) runs a
container with the runtime commands of the OCI runtime specification;
with umld each container is a machine under umld's guest kernel,
exported live (``/run/umld/oci/ID`` as root) like ``umld run --mount``.

    umld oci [--root DIR] [--log FILE] [--log-format text|json]
             [--systemd-cgroup] COMMAND ...

    create [--bundle DIR] [--pid-file FILE] ID   make it; its process waits
    start ID                                     let the process run
    state ID                                     the spec's state, as JSON
    kill ID [SIGNAL]                             SIGTERM by default
    delete [--force] ID
    run [--bundle DIR] [--pid-file FILE] [--detach] ID
    exec [--process FILE] [--detach] [--pid-file FILE] ID [CMD...]
    pause ID; resume ID                          every process stopped, or on
    ps [--format table|json] ID                  its processes (host pids)
    list [--quiet]
    features                                     what this runtime does

How a config.json becomes a machine: :mod:`umld.oci._spec`.  Where
containers are kept and what ``state`` says: :mod:`umld.oci._state`.
The process that runs each one: :mod:`umld.oci._supervisor`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from umld.errors import UmldError, UsageError

PROG = "umld oci"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="umld as an OCI runtime (runc's command line)")
    p.add_argument("--root", type=Path, help="where containers are kept")
    p.add_argument("--log", type=Path, help="also write errors here")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--systemd-cgroup",
        action="store_true",
        help="accepted: umld places each machine in cgroups of its own",
    )
    p.add_argument("--debug", action="store_true", help="accepted")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    for name in ("create", "run"):
        c = sub.add_parser(name)
        c.add_argument("--bundle", "-b", type=Path, default=Path("."))
        c.add_argument("--pid-file", type=Path)
        c.add_argument("--console-socket")
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true")
        c.add_argument("id")
    for name in ("start", "state"):
        sub.add_parser(name).add_argument("id")
    k = sub.add_parser("kill")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = sub.add_parser("delete")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    ex = sub.add_parser("exec")
    ex.add_argument("--process", "-p", type=Path, help="the process, as config.json's")
    ex.add_argument("--detach", "-d", action="store_true")
    ex.add_argument("--pid-file", type=Path)
    ex.add_argument("--console-socket")
    ex.add_argument("--tty", "-t", action="store_true")
    ex.add_argument("--env", "-e", action="append", default=[])
    ex.add_argument("--cwd")
    ex.add_argument("--user", "-u", help="UID[:GID]")
    ex.add_argument("--preserve-fds", type=int, default=0)
    ex.add_argument("id")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("pause", "resume"):
        sub.add_parser(name).add_argument("id")
    ps = sub.add_parser("ps")
    ps.add_argument("--format", "-f", choices=("table", "json"), default="table")
    ps.add_argument("id")
    ps.add_argument("ps_options", nargs="*", help="for ps(1) (table format)")
    ls = sub.add_parser("list")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", "-f", choices=("table", "json"), default="table")
    sub.add_parser("features")
    return p


def entry() -> None:
    """The ``umld-oci`` console script."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args: Any = None
    try:
        args = _parser().parse_args(words)
        if args.cmd is None:
            raise UsageError("missing command (create, start, state, kill, delete, run, ...)")
        return _COMMANDS[args.cmd](args)
    except UsageError as exc:
        _report(args, str(exc).removeprefix("umld: "))
        sys.stderr.write(f"usage: {PROG} [--root DIR] COMMAND ... ({PROG} --help)\n")
        return 2
    except UmldError as exc:
        _report(args, str(exc).removeprefix("umld: "))
        return exc.status or 1
    except KeyboardInterrupt:
        return 130


def _report(args: Any, message: str) -> None:
    """One line on stderr, and in --log (engines show the last error of
    a JSON log to their user: runc's format)."""
    sys.stderr.write(f"{PROG}: {message}\n")
    log = getattr(args, "log", None)
    if log is None:
        return
    if getattr(args, "log_format", "text") == "json":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = json.dumps({"level": "error", "msg": message, "time": stamp})
    else:
        line = f"{PROG}: {message}"
    with contextlib.suppress(OSError), open(log, "a") as f:
        f.write(line + "\n")


def _store(args: Any) -> Any:
    from umld.oci._state import Store, default_root

    return Store(args.root or default_root())


# -- the commands ----------------------------------------------------------------


def _create(args: Any) -> int:
    from umld.oci import _spec
    from umld.oci._state import Record, check_id, default_mount, start_time
    from umld.oci._supervisor import Supervisor

    container_id = check_id(args.id)
    bundle = args.bundle.resolve()
    plan = _spec.plan(bundle, _spec.read(bundle), default_mount=default_mount(container_id))
    if plan.terminal and not args.console_socket:
        raise UmldError("process.terminal is set: --console-socket is needed", 1)
    if args.console_socket and not plan.terminal:
        raise UmldError("--console-socket given, but process.terminal is not set", 1)
    console = _connect_console(args.console_socket) if plan.terminal else None
    if plan.settings.get("root_readonly") and plan.mount_points:
        _spec.make_mount_points(plan.settings["root"], plan.mount_points)
    store = _store(args)
    where = store.make(container_id)
    r = _detached(lambda w: Supervisor(store, container_id, plan, w, console).run())
    if console is not None:
        os.close(console)  # the supervisor's now
    supervisor, word, rest = _created(r, _create_timeout())
    if word != "created" or not rest.isdigit():
        if supervisor:  # given up on: it and its machine end here
            with contextlib.suppress(OSError):
                os.kill(supervisor, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)
        raise UmldError(rest or "the container's supervisor ended before it was created", 1)
    pid = int(rest)
    record = Record(
        id=container_id,
        bundle=str(bundle),
        pid=pid,
        started=start_time(pid) or 0,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        mount=plan.mount,
        annotations=plan.annotations,
        hooks={stage: [h.__dict__ for h in hooks] for stage, hooks in plan.hooks.items()},
    )
    store.save(record)
    try:
        for stage in ("createRuntime", "prestart"):
            _hooks(store, record, stage)
        if args.pid_file:
            _write_pid_file(args.pid_file, pid)
    except BaseException:
        _destroy(store, record)
        shutil.rmtree(where, ignore_errors=True)
        raise
    return 0


#: How long create waits for the machine to be made (seconds), unless
#: UMLD_OCI_CREATE_TIMEOUT says (engines have timeouts of their own; this
#: one keeps a supervisor that never answers from outliving its create).
CREATE_TIMEOUT = 120.0


def _create_timeout() -> float:
    text = os.environ.get("UMLD_OCI_CREATE_TIMEOUT", "")
    try:
        return float(text) if text else CREATE_TIMEOUT
    except ValueError:
        raise UsageError(f"UMLD_OCI_CREATE_TIMEOUT={text!r}: a number of seconds") from None


def _created(r: int, timeout: float) -> tuple[int, str, str]:
    """The supervisor's answer on pipe ``r``: (its pid, 0 if it never said,
    ``created``/``error``, the rest of that line); ``error`` with a reason
    when it says nothing more within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data, pid = b"", 0
    try:
        while True:
            while b"\n" in data:
                line, _, data = data.partition(b"\n")
                word, _, rest = line.decode(errors="replace").strip().partition(" ")
                if word == "pid" and rest.isdigit():
                    pid = int(rest)
                else:
                    return pid, word, rest
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                return pid, "error", f"the container was not made within {timeout:g} s"
            chunk = os.read(r, 4096)
            if not chunk:
                return pid, "error", ""
            data += chunk
    finally:
        os.close(r)


def _detached(run: Callable[[int], int]) -> int:
    """Fork a process that leaves this session and, forked twice, is
    nobody's child but the subreaper's above us (an engine's monitor,
    which reaps it); it runs ``run(w)``, ``w`` the write end of a pipe,
    and exits with what that returns.  Returns the pipe's read end."""
    from umld.oci._supervisor import detach

    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # pragma: no cover (the detached process's own)
        code = 1
        try:
            os.close(r)
            detach()
            if os.fork() != 0:
                os._exit(0)
            code = run(w)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(w)
    os.waitpid(child, 0)
    return r


def _write_pid_file(path: Path, pid: int) -> None:
    """``--pid-file``: written whole or not at all (renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(pid))
    tmp.replace(path)


def _connect_console(path: str) -> int:
    """A connection to the engine's console socket, for the terminal's
    master (the sandbox sends it there as runc does)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        raise UmldError(f"--console-socket {path}: {exc.strerror}", 1) from None
    return s.detach()


def _start(args: Any) -> int:
    store = _store(args)
    record = store.load(args.id)
    status = store.status(record)
    if status != "created":
        raise UmldError(f"cannot start container {args.id}: it is {status}", 1)
    answer = store.ask(args.id, "start")
    if answer != "ok":
        raise UmldError(f"cannot start container {args.id}: {answer.removeprefix('error: ')}", 1)
    # A failing poststart hook is only a warning (runtime-spec, "poststart").
    _hooks(store, record, "poststart", fatal=False)
    return 0


def _state(args: Any) -> int:
    store = _store(args)
    print(json.dumps(store.state(store.load(args.id)), indent=2))
    return 0


def _signal(text: str) -> int:
    if text.isdigit():
        n = int(text)
        if not 0 < n < signal.NSIG:
            raise UsageError(f"bad signal number {n}")
        return n
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {text!r}") from None


def _kill(args: Any) -> int:
    signo = _signal(args.signal)
    store = _store(args)
    record = store.load(args.id)
    status = store.status(record)
    if status == "stopped":
        raise UmldError(f"container {args.id} is not running", 1)
    answer = store.ask(args.id, f"kill {signo}")
    if answer != "ok":
        raise UmldError(f"cannot signal container {args.id}: {answer.removeprefix('error: ')}", 1)
    return 0


def _delete(args: Any) -> int:
    store = _store(args)
    try:
        record = store.load(args.id)
    except UmldError:
        if args.force and not store.dir(args.id).exists():
            return 0  # runc: --force of a container that is not there is not an error
        raise
    status = store.status(record)
    if status == "running" and not args.force:
        raise UmldError(f"cannot delete container {args.id}: it is running (--force)", 1)
    _destroy(store, record)
    _hooks(store, record, "poststop", fatal=False)
    shutil.rmtree(store.dir(args.id), ignore_errors=True)
    return 0


def _destroy(store: Any, record: Any) -> None:
    """The container's machine ended (SIGKILL unless it has), and its
    supervisor waited for (it unmounts the export as it goes)."""
    if store.alive(record):
        if store.status(record) != "stopped":
            with contextlib.suppress(UmldError):
                store.ask(record.id, f"kill {int(signal.SIGKILL)}", timeout=10)
        _wait_gone(store, record, 30.0)
        if store.alive(record):
            with contextlib.suppress(OSError):
                os.kill(record.pid, signal.SIGKILL)
            _wait_gone(store, record, 10.0)


def _wait_gone(store: Any, record: Any, timeout: float | None) -> None:
    """Until the supervisor has ended (its pidfd is readable, pidfd_open(2)),
    at most ``timeout`` seconds (None: however long it takes)."""
    try:
        fd = os.pidfd_open(record.pid)
    except OSError:
        return
    try:
        if store.alive(record):
            select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _run(args: Any) -> int:
    from umld.core import shell_status

    code = _create(args)
    if code:
        return code
    store = _store(args)
    record = store.load(args.id)
    try:
        _start(args)
    except BaseException:
        _destroy(store, record)
        shutil.rmtree(store.dir(args.id), ignore_errors=True)
        raise
    if args.detach:
        return 0
    _wait_gone(store, record, None)
    status = store.exit_status(args.id)
    args.force = True
    _delete(args)
    return shell_status(status) if status is not None else 1


def _exec_request(args: Any, record: Any) -> dict[str, Any]:
    """What to run (``--process FILE``, or the command and options), as
    the supervisor's exec takes it."""
    from umld.oci import _spec

    base = _spec.read(Path(record.bundle)).get("process") or {}
    if args.process is not None:
        try:
            proc = json.loads(args.process.read_text())
        except (OSError, ValueError) as exc:
            raise UmldError(f"--process {args.process}: {exc}", 1) from None
        if not isinstance(proc, dict):
            raise UmldError(f"--process {args.process}: not a process object", 1)
    else:
        proc = {"args": args.command[1:] if args.command[:1] == ["--"] else args.command}
        proc["env"] = list(base.get("env") or []) + list(args.env)
        proc["cwd"] = args.cwd or base.get("cwd") or "/"
        if args.user:
            uid, _, gid = args.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise UsageError(f"--user {args.user!r}: UID[:GID], numbers")
            proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    terminal = bool(proc.get("terminal")) or args.tty
    if terminal and not args.console_socket:
        raise UmldError("exec: a terminal (--tty, process.terminal) needs --console-socket", 1)
    if args.console_socket and not terminal:
        raise UmldError("exec: --console-socket given, but no terminal (--tty) asked", 1)
    if args.preserve_fds:
        raise UmldError("exec: --preserve-fds is not supported", 1)
    argv = proc.get("args") or []
    if not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError("exec: no command")
    env = {}
    for item in proc.get("env") or []:
        key, sep, value = str(item).partition("=")
        if sep:
            env[key] = value
    user = proc.get("user") or {}
    # The container's capabilities unless --process names its own, as in
    # runc's exec (libcontainer keeps the container's when the process
    # has none).
    own = args.process is not None and proc.get("capabilities") is not None
    where = "--process capabilities" if own else "process.capabilities"
    try:
        caps = _spec.capabilities(
            proc.get("capabilities") if own else base.get("capabilities"), where
        )
    except _spec.SpecError as exc:
        raise UmldError(str(exc).removeprefix("config.json: "), 1) from None
    return {
        "args": argv,
        "env": env,
        "cwd": proc.get("cwd") or "/",
        "uid": user.get("uid"),
        "gid": user.get("gid"),
        # Exactly additionalGids, none when empty (runc's exec).
        "groups": list(user.get("additionalGids") or ()),
        "caps": None if caps is None else list(caps),
        "terminal": terminal,
        "console_size": _console_size(proc.get("consoleSize")),
    }


def _console_size(size: object) -> list[int]:
    """process.consoleSize as [columns, rows]; 80x24 when absent."""
    if not isinstance(size, dict):
        return [80, 24]
    out = []
    for key, default in (("width", 80), ("height", 24)):
        value = size.get(key, default)
        if not isinstance(value, int) or not 0 < value <= 10000:
            raise UmldError(f"exec: process.consoleSize.{key} {value!r} is not a size", 1)
        out.append(value)
    return out


def _relay(
    store: Any,
    container_id: str,
    request: dict[str, Any],
    started: int = -1,
    console: int | None = None,
) -> int:
    """Have the supervisor run ``request`` with this process's stdio; this
    process then ends as the command does (its status, 128+N for a
    signal): what an engine's monitor waits for.  ``started``: a pipe
    that gets ``ok PID`` once the command runs; ``console``: a connection
    to the engine's console socket, where the command's terminal goes."""
    import socket

    from umld.core import shell_status

    path = store.dir(container_id) / "ctl.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(str(path))
            fds = [0, 1, 2] if console is None else [0, 1, 2, console]
            socket.send_fds(s, [b"exec " + json.dumps(request).encode() + b"\n"], fds)
            lines = s.makefile("rb")
            first = lines.readline().decode(errors="replace").strip()
        except OSError as exc:
            raise UmldError(f"container {container_id} is not running ({exc})", 1) from None
        if not first.startswith("pid "):
            raise UmldError(f"exec: {first.removeprefix('error: ') or 'no answer'}", 1)
        if started >= 0:
            os.write(started, f"ok {os.getpid()}\n".encode())
            os.close(started)
        last = lines.readline().decode(errors="replace").strip()
    if not last.startswith("exit "):
        return 1
    return shell_status(int(last.removeprefix("exit ")))


def _exec(args: Any) -> int:
    store = _store(args)
    record = store.load(args.id)
    if store.status(record) not in ("running", "paused"):
        raise UmldError(f"cannot exec in container {args.id}: it is not running", 1)
    request = _exec_request(args, record)
    console = _connect_console(args.console_socket) if request["terminal"] else None
    if not args.detach:
        if args.pid_file:
            args.pid_file.write_text(str(os.getpid()))
        return _relay(store, args.id, request, console=console)

    def relay(w: int) -> int:
        try:
            return _relay(store, args.id, request, started=w, console=console)
        except UmldError as exc:
            with contextlib.suppress(OSError):
                os.write(w, f"error {exc}\n".encode())
            return 1

    r = _detached(relay)
    if console is not None:
        os.close(console)  # the relay's now
    with os.fdopen(r, "rb") as f:
        answer = f.readline().decode(errors="replace").strip()
    word, _, rest = answer.partition(" ")
    if word != "ok" or not rest.isdigit():
        raise UmldError(rest.removeprefix("umld: ") or "exec: the command did not start", 1)
    if args.pid_file:
        _write_pid_file(args.pid_file, int(rest))
    return 0


def _pause(args: Any) -> int:
    store = _store(args)
    record = store.load(args.id)
    if store.status(record) == "stopped":
        raise UmldError(f"container {args.id} is not running", 1)
    answer = store.ask(args.id, args.cmd)
    if answer != "ok":
        raise UmldError(
            f"cannot {args.cmd} container {args.id}: {answer.removeprefix('error: ')}", 1
        )
    return 0


def _ps(args: Any) -> int:
    """The host pids of the container's processes: a JSON array, or
    ps(1)'s table of them (runc ps)."""
    store = _store(args)
    record = store.load(args.id)
    if store.status(record) == "stopped":
        raise UmldError(f"container {args.id} is not running", 1)
    pids = [int(p) for p in store.ask(args.id, "pids").split() if p.isdigit()]
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    sys.stdout.flush()
    options = args.ps_options or ["-f"]
    return subprocess.run(["ps", *options, "-p", ",".join(map(str, pids)) or "0"]).returncode


def _list(args: Any) -> int:
    store = _store(args)
    rows = []
    for container_id in store.ids():
        with contextlib.suppress(UmldError):
            rows.append(store.state(store.load(container_id)))
    if args.quiet:
        for row in rows:
            print(row["id"])
    elif args.format == "json":
        print(json.dumps(rows))
    else:
        print(f"{'ID':20} {'PID':>8} {'STATUS':8} BUNDLE")
        for row in rows:
            print(f"{row['id']:20} {row.get('pid', 0):>8} {row['status']:8} {row['bundle']}")
    return 0


def containers(root: Path | None = None) -> list[dict[str, Any]]:
    """The OCI runtime's containers (its default root): id, status,
    uptime (seconds), mount (its live export, None if it has none or has
    stopped), argv; for ``umld ls`` and ``umld top``."""
    import calendar

    from umld.oci import _spec
    from umld.oci._state import Store, default_root

    store = Store(root or default_root())
    out = []
    for container_id in store.ids():
        try:
            record = store.load(container_id)
        except UmldError:
            continue
        status = store.status(record)
        created = calendar.timegm(time.strptime(record.created, "%Y-%m-%dT%H:%M:%SZ"))
        try:
            argv = (_spec.read(Path(record.bundle)).get("process") or {}).get("args") or []
        except UmldError:
            argv = []
        live = record.mount if record.mount and status != "stopped" else None
        out.append(
            {"id": container_id, "status": status, "uptime": time.time() - created,
             "mount": live, "argv": [str(a) for a in argv]}
        )  # fmt: skip
    return out


def table_rows(root: Path | None = None) -> list[list[str]]:
    """``umld ls``'s rows of the OCI runtime's containers: NAME (``oci:ID``),
    STATE, UPTIME, PROCESSES (from the live export's status), CPU and
    RESTART (-), COMMAND."""
    rows = []
    for c in containers(root):
        procs = "-"
        if c["mount"]:
            with contextlib.suppress(OSError):
                for line in (Path(c["mount"]) / "status").read_text().splitlines():
                    if line.startswith("processes: "):
                        procs = line.removeprefix("processes: ")
        rows.append(
            [f"oci:{c['id']}", c["status"], f"{c['uptime']:.0f}", procs, "-", "-",
             " ".join(c["argv"]) or "-"]
        )  # fmt: skip
    return rows


def _features(args: Any) -> int:
    from umld import __version__
    from umld.oci import _seccomp
    from umld.oci._spec import CAPABILITIES, HOOK_STAGES, OWN_NAMESPACES
    from umld.oci._state import OCI_VERSION

    print(
        json.dumps(
            {
                "ociVersionMin": "1.0.0",
                "ociVersionMax": OCI_VERSION,
                "hooks": list(HOOK_STAGES),
                "mountOptions": ["bind", "rbind", "ro", "rw", "size"],
                "linux": {
                    "namespaces": sorted(OWN_NAMESPACES | {"network"}),
                    "capabilities": list(CAPABILITIES),
                    "cgroup": {"v1": True, "v2": True, "systemd": False},
                    "seccomp": {
                        "enabled": True,
                        "actions": sorted(_seccomp.ACTIONS),
                        "operators": list(_seccomp.OPS),
                        "archs": sorted(_seccomp.ARCHES),
                    },
                    "apparmor": {"enabled": False},
                    "selinux": {"enabled": False},
                },
                "annotations": {"io.github.umld.version": __version__},
            },
            indent=2,
        )
    )
    return 0


def _hooks(store: Any, record: Any, stage: str, *, fatal: bool = True) -> None:
    """Run the bundle's ``stage`` hooks in order, the state on their stdin
    (runtime-spec, "POSIX-platform Hooks"); the first failure is
    UmldError naming it, or with ``fatal`` False (poststart, poststop:
    the spec's "log a warning") a line on stderr, and the next hook."""
    state = json.dumps(store.state(record)).encode()
    for hook in record.hooks.get(stage, ()):
        try:
            _hook(hook, stage, state)
        except UmldError as exc:
            if fatal:
                raise
            sys.stderr.write(f"{PROG}: warning: {str(exc).removeprefix('umld: ')}\n")


def _hook(hook: dict[str, Any], stage: str, state: bytes) -> None:
    """One hook, run as the spec says: ``path`` executed with ``args``
    (args[0] its argv[0]) and exactly ``env``."""
    argv = list(hook["args"]) or [hook["path"]]
    env = dict(item.partition("=")[::2] for item in hook["env"])
    try:
        p = subprocess.run(
            argv,
            executable=hook["path"],
            input=state,
            env=env,
            capture_output=True,
            timeout=hook["timeout"],
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UmldError(f"{stage} hook {hook['path']}: {exc}", 1) from None
    if p.returncode != 0:
        why = p.stderr.decode(errors="replace").strip().splitlines()
        raise UmldError(
            f"{stage} hook {hook['path']} failed (status {p.returncode})"
            + (f": {why[-1]}" if why else ""),
            1,
        )


_COMMANDS = {
    "create": _create,
    "start": _start,
    "state": _state,
    "kill": _kill,
    "delete": _delete,
    "run": _run,
    "list": _list,
    "pause": _pause,
    "resume": _pause,
    "ps": _ps,
    "exec": _exec,
    "features": _features,
}
