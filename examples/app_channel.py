#!/usr/bin/env python3
"""An application channel beside the terminal: a guest program that shows
named values to the host and takes new ones from it, through the export.

Run it in a machine and drive it from the host with cat and echo:

    umld run --mount /tmp/m -- python3 examples/app_channel.py
    cat /tmp/m/export/ticker/count            # published by the program
    echo 0.2 > /tmp/m/export/ticker/interval  # taken by the program at once
    echo hello > /tmp/m/export/ticker/message
    echo -1 > /tmp/m/export/ticker/interval   # refused: the old value stays,
    cat /tmp/m/export/ticker/errors           # ... and the reason is here
    echo stop > /tmp/m/export/ticker/ctl      # the program ends (status 0)

The pattern (Python's standard library only, nothing umld-specific):

* Everything the program shows lives below /run/umld/export/APP, which
  the export shows to the host as export/APP, both ways.
* One file per value, one value per file, ending in a newline.
* The program *publishes* a value by writing a hidden temporary file and
  renaming it over the value's file (rename(2) is atomic): a host reader
  sees the old value or the new one, never half of one.
* The host *sets* a value by writing its file (`echo V > FILE`: open with
  O_TRUNC, write, close). The program watches the directory with inotify
  (inotify(7)) for IN_CLOSE_WRITE, which a writer's close(2) causes and
  the program's own renames do not, so it reacts to the host alone.
* The program checks what it got; a bad value is put back to the old one
  and the reason is appended to `errors`, as umld's own config/ does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys
import time

EXPORT = os.environ.get("APP_CHANNEL_DIR", "/run/umld/export/ticker")

# inotify(7): the constants of <sys/inotify.h>.
IN_CLOSE_WRITE = 0x00000008
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def inotify_watch(directory: str) -> int:
    """An inotify descriptor that reports files closed after writing in
    ``directory``."""
    fd: int = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    if _libc.inotify_add_watch(fd, os.fsencode(directory), IN_CLOSE_WRITE) < 0:
        raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
    return fd


def written_names(fd: int) -> list[str]:
    """The names of the files the host wrote, from the pending events."""
    names: list[str] = []
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return names
    offset = 0
    while offset < len(data):
        _wd, _mask, _cookie, length = EVENT.unpack_from(data, offset)
        offset += EVENT.size
        name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
        offset += length
        if name and not name.startswith("."):
            names.append(name)
    return names


class Channel:
    """The program's values, published below ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.values: dict[str, str] = {}

    def publish(self, name: str, value: str) -> None:
        self.values[name] = value
        tmp = os.path.join(self.directory, f".{name}.new")
        with open(tmp, "w") as f:
            f.write(value + "\n")
        os.rename(tmp, os.path.join(self.directory, name))

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.directory, name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def refuse(self, name: str, why: str) -> None:
        """Put the old value back and say why, in ``errors``."""
        self.publish(name, self.values[name])
        with open(os.path.join(self.directory, "errors"), "a") as f:
            f.write(f"{name}: {why}\n")


def main() -> int:
    ch = Channel(EXPORT)
    ch.publish("count", "0")
    ch.publish("interval", "1.0")
    ch.publish("message", "")
    ch.publish("ctl", "")
    open(os.path.join(EXPORT, "errors"), "a").close()
    fd = inotify_watch(EXPORT)
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    count, interval = 0, 1.0
    next_tick = time.monotonic() + interval
    print(f"app_channel: serving {EXPORT}", flush=True)
    while True:
        timeout = max(0.0, next_tick - time.monotonic())
        if poll.poll(timeout * 1000):
            for name in written_names(fd):
                text = ch.read(name)
                if name == "interval":
                    try:
                        value = float(text)
                        if not 0.01 <= value <= 3600:
                            raise ValueError
                    except ValueError:
                        ch.refuse(name, f"a number of seconds from 0.01 to 3600, not {text!r}")
                        continue
                    interval = value
                    ch.publish(name, text)
                    next_tick = time.monotonic() + interval
                elif name == "message":
                    ch.publish(name, text)
                    print(f"app_channel: message {text!r}", flush=True)
                elif name == "ctl":
                    if text == "stop":
                        print("app_channel: stopped by the host", flush=True)
                        return 0
                    ch.refuse(name, f"the command is stop, not {text!r}")
                elif name == "count":
                    ch.refuse(name, "read-only: the program counts")
                # errors: the host may empty it (`: > errors`).
        if time.monotonic() >= next_tick:
            count += 1
            ch.publish("count", str(count))
            next_tick += interval


if __name__ == "__main__":
    sys.exit(main())
