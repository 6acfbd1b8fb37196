"""The I/O-port bus (umld.core.iobus) on its own: routing by port,
all ones where no device answers, one event per unknown port."""

from __future__ import annotations

import pytest

from umld.core.iobus import IoBus


class Latch:
    name = "latch"
    ports = range(0x300, 0x304)

    def __init__(self) -> None:
        self.written: list[tuple[int, int, int]] = []

    def read(self, port: int, size: int) -> int:
        return 0x1234_5678 + port

    def write(self, port: int, size: int, value: int) -> None:
        self.written.append((port, size, value))


def test_accesses_go_to_the_device_of_the_port_at_their_width() -> None:
    latch = Latch()
    bus = IoBus([latch])
    assert bus.read(0x301, 1) == (0x1234_5678 + 0x301) & 0xFF
    assert bus.read(0x302, 2) == (0x1234_5678 + 0x302) & 0xFFFF
    bus.write(0x303, 1, 0x1FF)
    assert latch.written == [(0x303, 1, 0xFF)]


def test_unknown_ports_read_all_ones_and_are_logged_once() -> None:
    events: list[str] = []
    bus = IoBus(on_event=events.append)
    assert [bus.read(0x2F8, n) for n in (1, 2, 4)] == [0xFF, 0xFFFF, 0xFFFF_FFFF]
    bus.write(0x2F8, 1, 7)
    bus.write(0x2F9, 4, 7)
    assert events == ["ioport unknown 0x02f8", "ioport unknown 0x02f9"]


def test_overlapping_devices_are_refused() -> None:
    bus = IoBus([Latch()])
    with pytest.raises(ValueError, match="port 0x300 is latch's"):
        bus.attach(Latch())
