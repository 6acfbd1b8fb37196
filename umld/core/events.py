"""Records of what happens in a guest, for logs and the event stream."""

from __future__ import annotations

import time
from typing import NamedTuple


class GuestEvent(NamedTuple):
    """One line of the event stream.

    ``kind`` is one of: spawn, exec, exit, signal, denied, config, syscall,
    note, ioport (the I/O bus: a POST code, an unknown port, a UART
    overrun).  ``text`` is the human line without time or pid.
    """

    kind: str
    pid: int
    text: str
    time: float

    @classmethod
    def now(cls, kind: str, pid: int, text: str) -> GuestEvent:
        return cls(kind, pid, text, time.time())

    def line(self) -> str:
        return f"{self.time:.6f} {self.kind} pid={self.pid} {self.text}"
