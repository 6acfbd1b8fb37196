"""The embeddable API: machines as trio async context managers, plus a
small synchronous wrapper.

    async with umld.open_machine(umld.Config(hostname="box")) as machine:
        result = await machine.run(["uname", "-n"], capture_output=True)
        machine.config["hostname"] = "other"

One process has one tracer thread (:class:`umld.core.host.Host`), shared
by every machine it opens; it is started on first use.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import NamedTuple, final

from umld.core import (
    Config,
    GuestEvent,
    MachineControl,
    ProcessInfo,
    SettingError,
    live_keys,
    returncode,
)
from umld.core.host import Host, HostedMachine
from umld.core.iobus import IoBus
from umld.errors import UmldError

_host: Host | None = None
_host_lock = threading.Lock()


def _shared_host() -> Host:
    # The tracer sleeps in sigtimedwait(SIGCHLD): a thread that leaves
    # SIGCHLD unblocked may take it first (the host then polls).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    global _host
    with _host_lock:
        if _host is None:
            host = Host()
            host.start()
            _host = host
        return _host


class CompletedProcess(NamedTuple):
    """What :meth:`RunningMachine.run` returns, as subprocess.run does."""

    args: list[str]
    returncode: int
    stdout: bytes | None
    stderr: bytes | None

    def check_returncode(self) -> None:
        if self.returncode:
            raise UmldError(f"umld: {self.args[0]} exited with {self.returncode}", self.returncode)


@final
class LiveConfig(MutableMapping[str, str]):
    """A running machine's settings: ``config["hostname"] = "x"`` applies
    at once; a bad value raises ValueError (umld.core.SettingError) and
    changes nothing."""

    def __init__(self, control: MachineControl) -> None:
        self._control = control

    def __getitem__(self, key: str) -> str:
        if key not in live_keys():
            raise KeyError(key)
        return self._control.get(key)

    def __setitem__(self, key: str, value: object) -> None:
        if key not in live_keys():
            raise KeyError(key)
        self._control.set(key, str(value), source="api")

    def __delitem__(self, key: str) -> None:
        raise TypeError("settings cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(live_keys())

    def __len__(self) -> int:
        return len(live_keys())


def _pipe_if(wanted: bool) -> tuple[int, int] | None:
    return os.pipe2(os.O_CLOEXEC) if wanted else None


class _Pipes:
    """The descriptors of one run: pipes for what is captured or fed,
    /dev/null for stdin otherwise, ours for the rest."""

    def __init__(self, capture: bool, feed: bool) -> None:
        self.out = _pipe_if(capture)
        self.err = _pipe_if(capture)
        self.inp = _pipe_if(feed)
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.stdio = (
            self.inp[0] if self.inp else self._null,
            self.out[1] if self.out else 1,
            self.err[1] if self.err else 2,
        )

    def close_child_ends(self) -> None:
        """Once the child has them: keeping our copies would hide its EOF."""
        os.close(self._null)
        for p in (self.out, self.err):
            if p:
                os.close(p[1])
        if self.inp:
            os.close(self.inp[0])

    def result(self, args: list[str], status: int, outputs: dict[int, bytes]) -> CompletedProcess:
        return CompletedProcess(
            args,
            returncode(status),
            outputs.get(self.out[0]) if self.out else None,
            outputs.get(self.err[0]) if self.err else None,
        )


class _MachineBase:
    def __init__(self, hosted: HostedMachine) -> None:
        self._hosted = hosted
        assert hosted.control is not None
        self._control = hosted.control
        self.config = LiveConfig(hosted.control)

    @property
    def name(self) -> str:
        return self._hosted.name

    def processes(self) -> list[ProcessInfo]:
        """The guest's processes now (pids as the guest sees them)."""
        return self._control.processes()

    @property
    def iobus(self) -> IoBus:
        """The machine's I/O-port bus (umld.core.iobus): its devices
        (``iobus.device("ttyS0")``, umld.core.devices), and where a device
        of one's own is attached (``iobus.attach(device)``): the guest's
        port I/O reaches it after its ioperm(2) or iopl(2)."""
        return self._control.iobus


@final
class RunningMachine(_MachineBase):
    """A running machine, for trio code.  Made by :func:`open_machine`."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        capture_output: bool = False,
        input: bytes | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> CompletedProcess:
        """Run ``argv`` in the machine and wait for it, as trio.run_process
        does; returncode is -N for a process killed by signal N."""
        import trio

        args = [str(a) for a in argv]
        pipes = _Pipes(capture_output, input is not None)
        stdio = pipes.stdio
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        status: list[int] = []

        def on_exit(st: int) -> None:  # on the tracer thread
            status.append(st)
            token.run_sync_soon(finished.set)

        try:
            await trio.to_thread.run_sync(
                lambda: self._hosted.exec(args, stdio=stdio, env=env, cwd=cwd, on_exit=on_exit)
            )
        finally:
            pipes.close_child_ends()
        outputs: dict[int, bytes] = {}

        async def drain(fd: int) -> None:
            chunks = []
            async with trio.lowlevel.FdStream(fd) as stream:
                while chunk := await stream.receive_some(1 << 16):
                    chunks.append(chunk)
            outputs[fd] = b"".join(chunks)

        async def feed(fd: int, data: bytes) -> None:
            async with trio.lowlevel.FdStream(fd) as stream:
                try:
                    await stream.send_all(data)
                except trio.BrokenResourceError:
                    pass

        async with trio.open_nursery() as nursery:
            if pipes.inp and input is not None:
                nursery.start_soon(feed, pipes.inp[1], input)
            for p in (pipes.out, pipes.err):
                if p:
                    nursery.start_soon(drain, p[0])
            await finished.wait()
        result = pipes.result(args, status[0], outputs)
        if check:
            result.check_returncode()
        return result

    async def events(self) -> AsyncIterator[GuestEvent]:
        """Every event from now on (exec, exit, signal, config, ...)."""
        import trio

        send, receive = trio.open_memory_channel[GuestEvent](10_000)
        token = trio.lowlevel.current_trio_token()

        def listener(ev: GuestEvent) -> None:  # on the tracer thread
            def put() -> None:
                # A callback of run_sync_soon must not raise (it would be a
                # TrioInternalError): the reader may be gone or slow.
                try:
                    send.send_nowait(ev)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass

            try:
                token.run_sync_soon(put)
            except trio.RunFinishedError:
                pass

        self._control.subscribe(listener)
        try:
            async with receive:
                async for ev in receive:
                    yield ev
        finally:
            self._control.unsubscribe(listener)


@asynccontextmanager
async def open_machine(
    config: Config | None = None, *, argv: Sequence[str] = ()
) -> AsyncIterator[RunningMachine]:
    """Start a machine (its first process ``argv``, or an idle one) and
    stop it on exit (SIGTERM to its processes, SIGKILL after 10 s)."""
    import trio

    cfg = config or Config()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    host = await trio.to_thread.run_sync(_shared_host)
    hosted = await trio.to_thread.run_sync(lambda: host.start_machine(cfg, argv))
    try:
        yield RunningMachine(hosted)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: _stop(hosted))


def _stop(hosted: HostedMachine) -> None:
    if hosted.state == "running":
        try:
            hosted.stop()
        except UmldError:
            pass
    hosted.exited.wait(15)


@final
class SyncMachine(_MachineBase):
    """The synchronous wrapper: the same machine without trio."""

    def run(
        self,
        argv: Sequence[str],
        *,
        capture_output: bool = False,
        input: bytes | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> CompletedProcess:
        args = [str(a) for a in argv]
        pipes = _Pipes(capture_output, input is not None)
        done = threading.Event()
        status: list[int] = []

        def on_exit(st: int) -> None:
            status.append(st)
            done.set()

        try:
            self._hosted.exec(args, stdio=pipes.stdio, env=env, cwd=cwd, on_exit=on_exit)
        finally:
            pipes.close_child_ends()
        outputs: dict[int, bytes] = {}
        threads = []

        def drain(fd: int) -> None:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            os.close(fd)
            outputs[fd] = b"".join(chunks)

        def feed(fd: int, data: bytes) -> None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

        for p in (pipes.out, pipes.err):
            if p:
                threads.append(threading.Thread(target=drain, args=(p[0],), daemon=True))
        if pipes.inp and input is not None:
            threads.append(threading.Thread(target=feed, args=(pipes.inp[1], input), daemon=True))
        for t in threads:
            t.start()
        if not done.wait(timeout):
            raise TimeoutError(f"{args[0]} did not finish in {timeout} s")
        for t in threads:
            t.join()
        result = pipes.result(args, status[0], outputs)
        if check:
            result.check_returncode()
        return result


@contextmanager
def machine(config: Config | None = None, *, argv: Sequence[str] = ()) -> Iterator[SyncMachine]:
    """``with umld.machine(umld.Config(...)) as m: m.run([...])``."""
    hosted = _shared_host().start_machine(config or Config(), argv)
    try:
        yield SyncMachine(hosted)
    finally:
        _stop(hosted)


__all__ = [
    "CompletedProcess",
    "LiveConfig",
    "RunningMachine",
    "SettingError",
    "SyncMachine",
    "machine",
    "open_machine",
]
