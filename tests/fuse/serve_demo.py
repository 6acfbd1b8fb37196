"""Serve a demo tree with every node kind of umld.fusefs, for the tests.

    python -m tests.fuse.serve_demo MOUNTPOINT HOSTDIR [--ring N] [--tick S]

The tree:

    counter          SnapshotFile: "<n>\\n", n counts the opens
    settings/level   WritableFile: an integer 0..100
    settings/name    WritableFile: 1 to 32 printable characters
    ctl              ControlFile: spawn NAME | reap NAME | log TEXT | crash
    procs/NAME/      DynamicDirectory: one per spawned NAME, with `status`
                     and `root` (a HostTree of HOSTDIR)
    events           StreamFile of an EventLog: commands, spawns, reaps and
                     "tick <n>" lines from a background thread every S s
    link             Symlink to "counter"
    bug              SnapshotFile whose generator raises ZeroDivisionError
    host/            HostTree of HOSTDIR

Stops, unmounting, on SIGTERM or SIGINT (or when unmounted).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading

import trio

from umld.fusefs import (
    ControlFile,
    Directory,
    DynamicDirectory,
    EventLog,
    ExportError,
    HostTree,
    Node,
    SnapshotFile,
    StreamFile,
    Symlink,
    WritableFile,
    serve,
)


class Demo:
    def __init__(self, hostdir: str, ring: int) -> None:
        self.hostdir = hostdir
        self.log = EventLog(max_lines=ring)
        self.opens = 0
        self.settings = {"level": b"5\n", "name": b"demo\n"}
        self.procs: dict[str, Node] = {}

    def counter(self) -> bytes:
        self.opens += 1
        return f"{self.opens}\n".encode()

    def set_level(self, value: bytes) -> None:
        try:
            level = int(value.strip())
        except ValueError:
            raise ExportError(errno.EINVAL, "not an integer") from None
        if not 0 <= level <= 100:
            raise ExportError(errno.EINVAL, "out of range")
        self.settings["level"] = f"{level}\n".encode()
        self.log.append(f"config level={level}")

    def set_name(self, value: bytes) -> None:
        text = value.decode(errors="replace").strip()
        if not 1 <= len(text) <= 32 or not text.isprintable():
            raise ExportError(errno.EINVAL, "a name is 1 to 32 printable characters")
        self.settings["name"] = f"{text}\n".encode()

    def command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        if verb == "spawn" and arg and "/" not in arg:
            self.procs[arg] = Directory(
                {
                    "status": SnapshotFile(lambda: f"name: {arg}\n".encode()),
                    "root": self.host_tree(),
                }
            )
            self.log.append(f"spawn {arg}")
        elif verb == "reap" and arg in self.procs:
            del self.procs[arg]
            self.log.append(f"reap {arg}")
        elif verb == "log" and arg:
            self.log.append(arg)
        elif verb == "crash":
            raise RuntimeError("a bug in a command handler")
        else:
            raise ExportError(errno.EINVAL, f"bad command {line!r}")

    def host_tree(self) -> HostTree:
        return HostTree(lambda: os.open(self.hostdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    def tree(self) -> Directory:
        def bug() -> bytes:
            return str(1 // 0).encode()

        return Directory(
            {
                "counter": SnapshotFile(self.counter),
                "settings": Directory(
                    {
                        "level": WritableFile(lambda: self.settings["level"], self.set_level),
                        "name": WritableFile(lambda: self.settings["name"], self.set_name),
                    }
                ),
                "ctl": ControlFile(self.command),
                "procs": DynamicDirectory(lambda: self.procs, lookup=self.procs.get),
                "events": StreamFile(self.log),
                "link": Symlink(lambda: b"counter"),
                "bug": SnapshotFile(bug),
                "host": self.host_tree(),
            }
        )

    def ticker(self, interval: float, stop: threading.Event) -> None:
        n = 0
        while not stop.wait(interval):
            n += 1
            self.log.append(f"tick {n}")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("hostdir")
    parser.add_argument("--ring", type=int, default=1000, help="lines the event log keeps")
    parser.add_argument("--tick", type=float, default=0.0, help="seconds between ticks, 0: none")
    args = parser.parse_args(argv)

    demo = Demo(args.hostdir, args.ring)
    stop = threading.Event()
    if args.tick > 0:
        threading.Thread(target=demo.ticker, args=(args.tick, stop), daemon=True).start()
    try:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)

            def ready() -> None:
                print("ready", flush=True)

            await serve(demo.tree(), args.mountpoint, fsname="umld-demo", ready=ready)
            nursery.cancel_scope.cancel()  # unmounted from outside
    finally:
        stop.set()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
