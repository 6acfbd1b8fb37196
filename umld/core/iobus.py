"""The machine's virtual I/O-port bus (issue 15).

A guest process that executes ``in``/``out`` (and ``ins``/``outs``) after
``ioperm(2)`` or ``iopl(2)`` reaches this bus, never the host's ports: the
guest kernel catches the instruction's fault, decodes it, and turns it into
:meth:`IoBus.read` and :meth:`IoBus.write` calls of the access's width (1,
2 or 4 bytes).  A string instruction with ``rep`` is one call per element,
in order, as the CPU does them.

Devices.  A device is one Python object on a range of ports (the
:class:`Device` protocol: ``name``, ``ports``, ``read``, ``write``).  The
bus gives each access to the device whose range holds its first port; an
access no device claims reads all ones (0xff, 0xffff, 0xffffffff) and its
writes are ignored, as on a PC's ISA bus with nothing decoding the
address, and the first use of each such port is one ``events`` line
(``ioport unknown 0x...``).  Adding a device is one class and
:meth:`IoBus.attach`.

Threads.  The bus is called from the tracer thread, at a guest's fault;
the export calls devices from its own threads (a host writing ``dev/ttyS0``):
each device keeps its own lock.  A device never blocks: an access is one
instruction of the guest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

#: The value of a read no device answers, per width.
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}
#: The x86 I/O address space (ports 0 to 0xffff).
PORTS = range(0x10000)


@runtime_checkable
class Device(Protocol):
    """One device on the bus: the ports it decodes and what an access does.

    ``read`` and ``write`` get the port (within ``ports``) and the width in
    bytes (1, 2 or 4); a read returns an int of that width."""

    name: str
    ports: range

    def read(self, port: int, size: int) -> int: ...

    def write(self, port: int, size: int, value: int) -> None: ...


class IoBus:
    """The ports of one machine.  Any thread."""

    def __init__(
        self, devices: Iterable[Device] = (), on_event: Callable[[str], None] | None = None
    ) -> None:
        self.on_event = on_event
        self._lock = threading.Lock()
        self._devices: list[Device] = []
        #: Device per port, for every port a device decodes.
        self._by_port: dict[int, Device] = {}
        self._unknown_seen: set[int] = set()
        for device in devices:
            self.attach(device)

    def attach(self, device: Device) -> None:
        """Adds ``device``; ValueError when its ports overlap another's."""
        if not device.ports or device.ports.start < 0 or device.ports.stop > len(PORTS):
            raise ValueError(f"{device.name}: ports {device.ports} are not I/O ports")
        with self._lock:
            taken = [p for p in device.ports if p in self._by_port]
            if taken:
                other = self._by_port[taken[0]].name
                raise ValueError(f"{device.name}: port {taken[0]:#x} is {other}'s")
            self._devices.append(device)
            for port in device.ports:
                self._by_port[port] = device

    @property
    def devices(self) -> list[Device]:
        with self._lock:
            return list(self._devices)

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)

    def read(self, port: int, size: int) -> int:
        """``in`` of ``size`` bytes at ``port``."""
        device = self._by_port.get(port & 0xFFFF)
        if device is None:
            self._unknown(port)
            return ALL_ONES[size]
        return device.read(port & 0xFFFF, size) & ALL_ONES[size]

    def write(self, port: int, size: int, value: int) -> None:
        """``out`` of ``size`` bytes at ``port``."""
        device = self._by_port.get(port & 0xFFFF)
        if device is None:
            self._unknown(port)
            return
        device.write(port & 0xFFFF, size, value & ALL_ONES[size])

    def _unknown(self, port: int) -> None:
        with self._lock:
            if port in self._unknown_seen:
                return
            self._unknown_seen.add(port)
        if self.on_event is not None:
            self.on_event(f"ioport unknown {port:#06x}")
