"""Central configuration: settings imported from a directory on the host.

``--config-dir DIR`` lays settings out as the export's config/ does
(DIR/hostname, DIR/net/accept, DIR/limits/nproc, ...).  A watcher thread
applies a file's value when it changes: it sleeps in inotify(7) on DIR and
its subdirectories, and also re-reads everything every second, because
inotify sees nothing of changes made by another client of a network
filesystem (inotify(7), "Limitations and caveats").  A bad value is
refused the way a write to the export is: the old value stays and the
reason goes to the event stream.
"""

from __future__ import annotations

import os
import select
import threading
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    import ctypes

from umld.core.control import MachineControl
from umld.core.settings import SettingError, live_keys
from umld.errors import get_logger

log = get_logger("umld.configdir")

IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
POLL_INTERVAL = 1.0


def _inotify() -> tuple[int, ctypes.CDLL] | None:
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    return (fd, libc) if fd >= 0 else None


@final
class ConfigDir:
    """Keeps one machine's settings in step with a host directory."""

    def __init__(self, control: MachineControl, path: str) -> None:
        self.control = control
        self.path = os.path.abspath(path)
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="umld-config-dir", daemon=True)
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def start(self) -> None:
        self.sync()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wakeup_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(5)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def sync(self) -> None:
        """Apply every setting whose file changed since the last look."""
        for key in live_keys():
            try:
                with open(os.path.join(self.path, key), encoding="utf-8") as f:
                    text = f.read(4096).strip()
            except (OSError, UnicodeDecodeError):
                continue
            if self._seen.get(key) == text:
                continue
            self._seen[key] = text
            if text == self.control.get(key):
                continue
            try:
                self.control.set(key, text, source=f"config-dir {self.path}")
            except SettingError:
                pass  # reported in the event stream by set()

    def _watch(self, ino: int, libc: ctypes.CDLL) -> None:
        dirs = {self.path} | {
            os.path.join(self.path, key.rpartition("/")[0]) for key in live_keys() if "/" in key
        }
        for d in dirs:
            if os.path.isdir(d):
                libc.inotify_add_watch(ino, os.fsencode(d), _MASK)

    def _main(self) -> None:
        found = _inotify()
        ino = found[0] if found else -1
        try:
            while not self._stop.is_set():
                if found is not None:
                    self._watch(*found)
                fds = [self._wakeup_r] + ([ino] if ino >= 0 else [])
                ready, _, _ = select.select(fds, [], [], POLL_INTERVAL)
                if ino in ready:
                    # Events are drained, not parsed: any change re-reads
                    # every file (a few small reads).
                    try:
                        while os.read(ino, 65536):
                            pass
                    except BlockingIOError:
                        pass
                if self._stop.is_set():
                    break
                try:
                    self.sync()
                except Exception:
                    log.exception("reading %s failed", self.path)
        finally:
            if ino >= 0:
                os.close(ino)
