"""The ``umld`` command line: argument parsing only, no logic.

Every user mistake ends here as one line on stderr and an exit status
(2 for usage, 127/126 for a command that cannot run, 1 otherwise), never
a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from umld.errors import UmldError, UsageError

PROG = "umld"


class _Formatter(argparse.HelpFormatter):
    # argparse builds a formatter for every add_argument and each one asks
    # the terminal for its size (importing shutil): milliseconds of every
    # start.  COLUMNS, or 100, is as good for help text.
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=int(os.environ.get("COLUMNS", "0") or 0) or 100)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


_PARSER: list[_Parser] = []


def command_parser() -> _Parser:
    """The command line's parser, made once per process (the warm umld
    makes it before it forks its runs: ~3 ms of each start)."""
    if not _PARSER:
        _PARSER.append(_parser())
    return _PARSER[0]


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Run Linux programs under umld's user-space guest kernel.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a command in a new guest machine",
        usage="umld run [OPTIONS] -- CMD [ARGS...]",
        description="Start a guest machine whose first process is CMD; exit with its status "
        "(128+N if it dies of signal N).",
    )
    run.add_argument(
        "--tracer",
        choices=("c", "python"),
        default="c",
        help="tracer backend: the C core (default) or pure Python on python-ptrace",
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="full-trace mode: every syscall stops and is logged (slow; for debugging)",
    )
    run.add_argument(
        "--trace-output", metavar="FILE", help="write the trace to FILE instead of stderr"
    )
    run.add_argument(
        "--stats", action="store_true", help="print trapped-syscall and process counts at exit"
    )
    run.add_argument("-C", "--cwd", metavar="DIR", help="working directory of CMD (a guest path)")
    run.add_argument(
        "--mount",
        metavar="DIR",
        nargs="?",
        const="",
        help="export the running machine through FUSE at DIR (default: /run/umld/NAME as "
        "root, $XDG_RUNTIME_DIR/umld/NAME otherwise)",
    )
    run.add_argument(
        "--config-dir",
        metavar="DIR",
        help="apply settings from files in DIR (laid out as the export's config/) as they change",
    )
    _add_machine_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")

    d = sub.add_parser("daemon", help="run many machines in one long-running process")
    d.add_argument("--mount", metavar="DIR", help="the export (default /run/umld/daemon as root)")
    d.add_argument(
        "--machines-dir",
        metavar="DIR",
        help="machine definitions NAME.toml (default /etc/umld/machines as root)",
    )
    d.add_argument("--tracer", choices=("c", "python"), default="c", help="tracer backend")
    d.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    d.add_argument(
        "--restart-delay", type=_seconds, default=1.0, metavar="S",
        help="seconds before a machine is restarted (default 1)",
    )  # fmt: skip
    d.add_argument(
        "--request-timeout", type=_seconds, default=5.0, metavar="S",
        help="seconds a control connection has to send its request (default 5)",
    )  # fmt: skip
    d.add_argument(
        "--hangup-grace", type=_seconds, default=3.0, metavar="S",
        help="seconds from SIGHUP to SIGKILL when an exec's client goes (default 3)",
    )  # fmt: skip

    def with_mount(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mount", metavar="DIR", help="the daemon's export (default: its default)")

    st = sub.add_parser(
        "start",
        help="start a machine in the daemon",
        usage="umld start NAME [OPTIONS] [-- CMD [ARGS...]]",
    )
    st.add_argument("name", metavar="NAME")
    with_mount(st)
    st.add_argument("--restart", choices=("no", "on-failure", "always"), default="no")
    _add_machine_options(st, named=False)
    st.add_argument("command", nargs="*", help="after --: the first process (default: idle)")
    sp = sub.add_parser("stop", help="stop a machine in the daemon")
    sp.add_argument("name", metavar="NAME")
    with_mount(sp)
    ls = sub.add_parser(
        "ls", help="list the daemon's machines, and the OCI runtime's containers (oci:ID)"
    )
    with_mount(ls)
    ex = sub.add_parser(
        "exec", help="run a command in a running machine", usage="umld exec NAME -- CMD [ARGS...]"
    )
    ex.add_argument("name", metavar="NAME")
    with_mount(ex)
    ex.add_argument("-C", "--cwd", metavar="DIR", help="working directory in the guest")
    ex.add_argument("command", nargs="*", help="after --: the command")
    lg = sub.add_parser("logs", help="a machine's events")
    lg.add_argument("name", metavar="NAME")
    with_mount(lg)
    lg.add_argument("-f", "--follow", action="store_true", help="keep following")
    df = sub.add_parser(
        "diff",
        help="what a running machine changed on the host's tree (A, M, D path)",
        usage="umld diff [NAME] [--mount DIR]",
    )
    df.add_argument("name", metavar="NAME", nargs="?")
    df.add_argument(
        "--mount", metavar="DIR", help="a daemon's export, or one `umld run --mount DIR`'s"
    )
    at = sub.add_parser(
        "attach",
        help="connect this terminal to a machine's own terminal (--tty); C-] detaches",
        usage="umld attach [NAME] [--mount DIR]",
        description="Connect this terminal to the terminal of a machine started with --tty, "
        "like tmux attach: its screen is drawn here, keys go to it, its size follows this "
        "terminal's.  C-] detaches; the program goes on.",
    )
    at.add_argument("name", metavar="NAME", nargs="?")
    at.add_argument(
        "--mount", metavar="DIR", help="a daemon's export, or one `umld run --mount DIR`'s"
    )
    top = sub.add_parser(
        "top", help="live view of the daemon's machines, the OCI containers, and their processes"
    )
    with_mount(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    top.add_argument("--once", action="store_true", help="print one frame and exit")

    sw = sub.add_parser(
        "switch",
        help="the daemon's VDE switches: create, ls, connect, rm",
        usage="umld switch {create NAME | ls | rm NAME | connect NAME -- CMD...} [--mount DIR]",
        description="VDE switches (vde_switch) the daemon owns, at DIR.switch/NAME beside its "
        "export; a machine joins one with --net vde:NAME.  `connect` joins a switch to another "
        "through a command whose standard input and output carry its frames, e.g. "
        "`umld switch connect lan -- ssh HOST vde_plug vde:///run/umld/daemon.switch/lan`.",
    )
    sw.add_argument("action", choices=("create", "ls", "rm", "connect"))
    sw.add_argument("name", metavar="NAME", nargs="?")
    with_mount(sw)
    sw.add_argument("command", nargs="*", help="after --: connect's command")

    syscalls = sub.add_parser(
        "syscalls", help="list the syscall table (what traps, what is emulated or denied)"
    )
    syscalls.add_argument(
        "--format", choices=("table", "markdown"), default="table", help="output format"
    )
    syscalls.add_argument(
        "--trapped", action="store_true", help="only the calls the seccomp filter stops"
    )
    syscalls.add_argument(
        "--abi", choices=("x86_64", "i386"), default="x86_64", help="which ABI's table"
    )
    syscalls.add_argument(
        "--check",
        action="store_true",
        help="run the generated seccomp filter on every row and check it stops what the table says",
    )
    return p


def _add_machine_options(p: argparse.ArgumentParser, *, named: bool = True) -> None:
    from umld.core import settings

    g = p.add_argument_group(
        "machine",
        "Without --root the guest's / is the host's, copy-on-write: it sees your files and "
        "writes over them in a layer of its own (RAM; a named machine's persists), never on "
        "the host; `umld diff` lists its changes.  --bind DIR writes through to the host.",
    )
    g.add_argument("--config", metavar="FILE", help="read settings from a TOML file first")
    settings.add_options(g, named=named)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"from 0 to 3600 seconds, not {text}")
    return value


def _command_from(value: object, where: str) -> list[str]:
    from umld.core.settings import command_from

    return command_from(value, where)


def _read_config_file(path: str) -> dict[str, Any]:
    from umld.core.settings import read_toml

    return read_toml(path, "--config ")


def _machine_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Config keyword arguments from --config FILE, then the options (a
    repeatable option adds to the file's list); and the file's command."""
    from umld.core import settings

    data: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    where = f"--config {args.config}" if args.config else "options"
    command = _command_from(data.pop("command", []), where)
    data.pop("restart", None)
    merged = settings.merge(data, settings.options_mapping(args))
    return settings.from_mapping(merged, where=args.config or "options"), command


def _cmd_run(args: argparse.Namespace) -> int:
    from umld.core import shell_status
    from umld.core.machine import Config, Machine

    settings, file_command = _machine_settings(args)
    if args.config_dir:
        _check_config_dir(args.config_dir)
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    command = command or file_command
    if not command:
        raise UsageError("missing command (usage: umld run [OPTIONS] -- CMD [ARGS...])")
    out: TextIO | None = None
    if args.trace_output:
        try:
            out = open(args.trace_output, "w", buffering=1)
        except OSError as exc:
            raise UmldError(
                f"cannot open trace output {args.trace_output}: {exc.strerror}"
            ) from None
    cfg = Config(
        **settings,
        tracer=args.tracer,
        trace=args.trace or out is not None,
        trace_output=out,
    )
    machine = Machine(cfg)
    start = time.monotonic()
    exports: list[Any] = []
    # umld run --tty on a terminal: run + attach, in this process.
    attach = _LocalAttach() if cfg.tty and os.isatty(0) and os.isatty(1) else None

    guard = _SignalsDuringTeardown()

    def start_live(control: Any) -> None:
        guard.armed = True  # Machine.run blocks the signals from here on
        if attach is not None:
            attach.start(control)
        if args.config_dir:
            from umld.core import ConfigDir

            watcher = ConfigDir(control, args.config_dir)
            watcher.start()
            exports.append(watcher)
        if args.mount is None:
            return
        try:
            from umld.fusefs import ExportThread
        except ImportError as exc:
            raise UmldError(f"umld: --mount needs trio and pyfuse3 ({exc})") from None
        name = control.name
        from umld.core import default_mountpoint

        export = ExportThread(control, args.mount or default_mountpoint(name), name=name)
        export.start()
        exports.append(export)

    live = args.mount is not None or bool(args.config_dir)
    try:
        if live or attach is not None:
            guard.install()
        result = machine.run(
            command,
            cwd=args.cwd,
            on_start=start_live if live or attach is not None else None,
            live=live,
        )
        code = shell_status(result.status)
        if args.stats and machine.kernel is not None:
            _print_stats(machine.kernel.statistics(), time.monotonic() - start)
        return code
    finally:
        try:
            if attach is not None:
                attach.stop()
            for export in exports:
                export.stop()
        finally:
            guard.uninstall()
            if out is not None:
                out.close()


class _LocalAttach:
    """``umld run --tty`` on a terminal: the caller's terminal attached to
    the machine's (umld.attach, the same renderer as ``umld attach``), from
    a thread this command owns and joins.  C-] detaches: the program goes
    on on its own terminal until it ends (``umld attach --mount DIR`` then
    reaches it, with --mount)."""

    def __init__(self) -> None:
        from umld import attach

        self._attach = attach
        # SIGWINCH's descriptor is made here, on the main thread.
        self._winch = attach.WinchPipe()
        self._thread: Any = None
        self._stop: Any = None
        self.why = ""

    def start(self, control: Any) -> None:
        import threading

        backend = self._attach.LocalBackend(control)
        self._stop = threading.Event()

        def main() -> None:
            try:
                self.why = self._attach.run(backend, self._winch, alternate=False, stop=self._stop)
            finally:
                backend.close()
            if self.why == "detached":
                sys.stderr.write("[detached: the program goes on]\n")

        self._thread = threading.Thread(target=main, name="umld-attach")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)
            if self._thread.is_alive():
                self._stop.set()
                self._thread.join()
        self._winch.close()


class _SignalsDuringTeardown:
    """SIGINT, SIGTERM, SIGHUP and SIGQUIT while a live machine's helpers
    (the export, the --config-dir watcher) are stopped.

    Machine.run blocks these signals while the machine runs (the tracer
    takes them and passes them on to the guest) and unblocks them when
    it returns.  One that arrived in between, once the tracer no longer
    took them (the second of a storm of SIGTERMs, say), used to end umld
    right there with its default action, before the export was
    unmounted: a dead mount ("Transport endpoint is not connected") until
    someone ran fusermount3 -u.  So from the machine's start (``armed``)
    until the helpers are stopped such a signal is only noted: the
    machine it was meant for is over, and umld exits with that machine's
    status.  Before the start a signal acts as it always did.
    """

    def __init__(self) -> None:
        self.armed = False
        self.noted: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        import signal

        from umld.core.kernel import TERMINATING_SIGNALS

        for signo in TERMINATING_SIGNALS:
            self._previous[signo] = signal.signal(signo, self._handler)

    def uninstall(self) -> None:
        import signal

        for signo, previous in self._previous.items():
            signal.signal(signo, previous)
        self._previous.clear()

    def _handler(self, signo: int, frame: Any) -> None:
        import signal

        if self.armed:
            self.noted.append(signo)
            return
        # Not started yet: what the signal did before we took it.
        previous = self._previous.get(signo, signal.SIG_DFL)
        signal.signal(signo, previous)
        if callable(previous):
            previous(signo, frame)  # SIGINT: KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signo)


def _check_config_dir(path: str) -> None:
    # A typo must not go unnoticed: the directory may hold a `deny`.
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"--config-dir {path}: {exc.strerror}") from None
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--config-dir {path}: not a directory")


def _print_stats(stats: dict[str, object], elapsed: float) -> None:
    calls = stats.get("syscalls") or {}
    assert isinstance(calls, dict)
    shown = ", ".join(f"{k} {v}" for k, v in list(calls.items())[:12]) or "none"
    sys.stderr.write(
        f"umld: {elapsed:.3f} s, {stats.get('trapped', 0)} trapped syscalls ({shown}); "
        f"{stats.get('processes', 0)} processes, {stats.get('threads', 0)} threads, "
        f"{stats.get('execs', 0)} execs, {stats.get('signals', 0)} signals, "
        f"{stats.get('denied', 0)} denied\n"
    )


def _cmd_daemon(args: argparse.Namespace) -> int:
    from umld import client

    if args.cmd == "daemon":
        from umld import daemon

        timing = daemon.Timing(args.restart_delay, args.request_timeout, args.hangup_grace)
        return daemon.main(
            args.mount, args.machines_dir, str(args.tracer), bool(args.verbose), timing
        )
    from umld.daemon import default_mount

    mount = args.mount or default_mount()
    if args.cmd == "ls":
        from umld import oci

        try:
            table = client.call(mount, {"op": "ls"})["table"]
        except UmldError:
            # No daemon: the OCI runtime's containers may still be there.
            table = ""
            containers = oci.table_rows() if args.mount is None else []
            if not containers:
                raise
        else:
            containers = oci.table_rows() if args.mount is None else []
        rows = [line.split("\t") for line in table.splitlines()] or [
            ["NAME", "STATE", "UPTIME", "PROCESSES", "CPU", "RESTART", "COMMAND"]
        ]
        rows += containers
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        return 0
    if args.cmd == "stop":
        client.call(mount, {"op": "stop", "name": args.name})
        return 0
    if args.cmd == "logs":
        return client.logs(mount, args.name, args.follow)
    if args.cmd == "diff":
        return client.diff(args.name, args.mount)
    if args.cmd == "switch":
        return _cmd_switch(args, mount)
    if args.cmd == "top":
        from umld import top

        return top.main(mount, args.interval, args.once)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.cmd == "exec":
        if not command:
            raise UsageError("missing command (usage: umld exec NAME -- CMD [ARGS...])")
        return client.exec_in(mount, args.name, command, args.cwd)
    from umld.core import settings

    data: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    file_command = _command_from(data.pop("command", []), f"--config {args.config}")
    data.pop("restart", None)
    options = {k: v for k, v in settings.options_mapping(args).items() if k != "name"}
    merged = settings.merge(data, options)
    # Checked here too, so that a mistake is a usage error of this command.
    settings.from_mapping({**merged, "name": args.name}, where=args.config or "options")
    client.call(
        mount,
        {
            "op": "start",
            "name": args.name,
            "config": merged,
            "argv": command or file_command,
            "restart": args.restart,
        },
    )
    return 0


def _cmd_switch(args: argparse.Namespace, mount: str) -> int:
    from umld import client

    command = list(args.command)
    if args.action == "ls":
        if args.name or command:
            raise UsageError("umld switch ls takes no NAME")
        rows = client.call(mount, {"op": "switch", "action": "ls"})["switches"]
        for row in rows:
            print(f"{row['name']}\t{row['state']}\t{row['path']}")
            for c in row["connections"]:
                print(f"  connect\t{c['state']}\t{c['command']}")
        return 0
    if not args.name:
        raise UsageError(f"umld switch {args.action} needs a NAME")
    if args.action == "connect" and not command:
        raise UsageError("missing command (usage: umld switch connect NAME -- CMD [ARGS...])")
    if args.action != "connect" and command:
        raise UsageError(f"umld switch {args.action} takes no command")
    if args.action == "create":
        from umld.core.vde import check_name

        check_name(args.name)
    req: dict[str, Any] = {"op": "switch", "action": args.action, "name": args.name}
    if command:
        req["argv"] = command
    reply = client.call(mount, req)
    if args.action == "create":
        print(reply["path"])
    return 0


def _cmd_syscalls(args: argparse.Namespace) -> int:
    from umld.core.syscalls import check_filter, lookup_table, machine_filter

    if args.check:
        program = machine_filter(None)
        wrong = check_filter(program)
        for line in wrong:
            print(line)
        size = len(program) // 8
        verdict = "does not match the tables" if wrong else "stops exactly what the tables say"
        print(f"# the seccomp filter ({size} instructions) {verdict}", file=sys.stderr)
        return 1 if wrong else 0
    table = lookup_table(args.abi)
    rows = [r for r in table if r.traps or not args.trapped]
    if args.format == "markdown":
        print("| nr | name | family | disposition | stops | note |")
        print("|---:|---|---|---|---|---|")
        for r in rows:
            fam = (r.family.name or "").lower()
            stops = r.describe_stops().replace("|", "\\|")
            print(f"| {r.nr} | {r.name} | {fam} | {r.disposition.value} | {stops} | {r.note} |")
    else:
        for r in rows:
            fam = (r.family.name or "").lower()
            stops = r.describe_stops()
            when = f"  [stops: {stops}]" if stops not in ("always", "never") else ""
            print(f"{r.nr:4d} {r.name:24s} {fam:9s} {r.disposition.value:12s} {r.note}{when}")
    trapped = len(table.trapped())
    print(
        f"# {args.abi}: {len(table)} syscalls, {trapped} trapped by the seccomp filter",
        file=sys.stderr,
    )
    return 0


#: One line per command, shown after a usage error.
USAGES = {
    "run": "umld run [OPTIONS] -- CMD [ARGS...]",
    "daemon": "umld daemon [--mount DIR] [--machines-dir DIR] [--tracer c|python] [-v] "
    "[--restart-delay S] [--request-timeout S] [--hangup-grace S]",
    "start": "umld start NAME [--mount DIR] [--restart POLICY] [OPTIONS] [-- CMD [ARGS...]]",
    "stop": "umld stop NAME [--mount DIR]",
    "ls": "umld ls [--mount DIR]",
    "exec": "umld exec NAME [--mount DIR] [-C DIR] -- CMD [ARGS...]",
    "logs": "umld logs NAME [--mount DIR] [-f]",
    "diff": "umld diff [NAME] [--mount DIR]",
    "top": "umld top [--mount DIR] [--interval S] [--once]",
    "switch": "umld switch {create NAME | ls | rm NAME | connect NAME -- CMD...} [--mount DIR]",
    "attach": "umld attach [NAME] [--mount DIR]",
    "syscalls": "umld syscalls [--trapped] [--abi x86_64|i386] [--format table|markdown] [--check]",
}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "oci":
        # The OCI runtime has runc's command line, parsed on its own, and
        # before umld's parser is built: that imports the guest kernel,
        # which an engine's every `state` and `start` would pay (~30 ms).
        from umld import oci

        return oci.main(words[1:])
    parser = command_parser()
    try:
        tail: list[str] | None = None
        if words and words[0] in ("start", "exec", "switch") and "--" in words:
            # Options may follow NAME; the command is what follows "--".
            cut = words.index("--")
            words, tail = words[:cut], words[cut + 1 :]
        args = parser.parse_args(words)
        if tail is not None:
            args.command = tail
        if args.version:
            from umld import __version__

            print(f"umld {__version__}")
            return 0
        if args.cmd == "run":
            return _cmd_run(args)
        if args.cmd == "syscalls":
            return _cmd_syscalls(args)
        if args.cmd == "attach":
            from umld import attach

            return attach.main(args.name, args.mount)
        if args.cmd in ("daemon", "start", "stop", "ls", "exec", "logs", "top", "diff", "switch"):
            return _cmd_daemon(args)
        parser.print_usage(sys.stderr)
        return 2
    except (UsageError, ValueError) as exc:
        # ValueError: a SettingError (a bad value of a setting) that got
        # here without a name on it; the one error type of a bad value.
        if not isinstance(exc, UsageError) and type(exc).__name__ != "SettingError":
            raise
        sys.stderr.write(f"{PROG}: {str(exc).removeprefix(f'{PROG}: ')}\n")
        given = list(sys.argv[1:] if argv is None else argv)
        usage = USAGES.get(given[0] if given else "", USAGES["run"])
        sys.stderr.write(f"usage: {usage}   (umld --help for more)\n")
        return 2
    except UmldError as exc:
        msg = str(exc)
        sys.stderr.write(msg if msg.startswith(f"{PROG}:") else f"{PROG}: {msg}")
        sys.stderr.write("\n")
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


def entry() -> None:
    """The ``umld`` console script: main(), then exit without tearing the
    interpreter down.  Finalisation (freeing every module) costs ~6 ms of
    each `umld run` on this class of machine and does nothing useful
    once output is flushed."""
    code = main()
    keeper = sys.modules.get("umld.core.cpushare")
    if keeper is not None:
        # Its thread must not be cut short in the middle of a pass (it
        # would print a half traceback as the process ends).
        keeper.KEEPER.stop()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141
    os._exit(code)
