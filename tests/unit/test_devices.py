"""The devices of a machine's I/O bus (umld.core.devices) on their own,
driven through an IoBus as a guest's in/out would: the 16550A UART as
the TI PC16550D datasheet describes it to a driver, the POST port, the
CMOS/RTC (MC146818) reading a given clock."""

from __future__ import annotations

import calendar
import time

import pytest

from umld.core.devices import Cmos, PortDevice, PostPort, Uart16550, machine_bus
from umld.core.iobus import IoBus

COM1 = 0x3F8
THR = RBR = DLL = COM1
IER = DLM = COM1 + 1
IIR = FCR = COM1 + 2
LCR, MCR, LSR, MSR, SCR = COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7


def uart_bus() -> tuple[IoBus, Uart16550, list[str]]:
    events: list[str] = []
    uart = Uart16550(on_event=events.append)
    return IoBus([uart]), uart, events


def polling_putc(bus: IoBus, byte: int) -> None:
    """A datasheet polling driver: wait for THRE, write THR."""
    for _ in range(1000):
        if bus.read(LSR, 1) & 0x20:
            break
    else:
        raise AssertionError("THRE never set")
    bus.write(THR, 1, byte)


def polling_getc(bus: IoBus) -> int | None:
    if not bus.read(LSR, 1) & 0x01:
        return None
    return bus.read(RBR, 1)


def init_8n1(bus: IoBus, divisor: int = 1) -> None:
    """What a driver does first: baud rate through DLAB, 8N1, FIFOs."""
    bus.write(IER, 1, 0)
    bus.write(LCR, 1, 0x80)  # DLAB
    bus.write(DLL, 1, divisor & 0xFF)
    bus.write(DLM, 1, divisor >> 8)
    bus.write(LCR, 1, 0x03)  # 8 bits, no parity, 1 stop
    bus.write(FCR, 1, 0xC7)  # FIFOs on, cleared, trigger 14
    bus.write(MCR, 1, 0x0B)  # DTR, RTS, OUT2


def test_reset_state_is_the_datasheets() -> None:
    bus, _, _ = uart_bus()
    assert bus.read(IER, 1) == 0
    assert bus.read(IIR, 1) == 0x01  # no interrupt pending, no FIFOs
    assert bus.read(LCR, 1) == 0x03  # 8N1, as a PC BIOS leaves it
    bus.write(LCR, 1, 0x80)
    assert (bus.read(DLL, 1), bus.read(DLM, 1)) == (12, 0)  # 9600 baud
    bus.write(LCR, 1, 0x03)
    assert bus.read(MCR, 1) == 0
    assert bus.read(LSR, 1) == 0x60  # THRE and TEMT
    assert bus.read(MSR, 1) & 0xF0 == 0xB0  # the other end: CTS, DSR, DCD


def test_a_polling_hello_driver_reaches_the_output_stream() -> None:
    bus, uart, _ = uart_bus()
    got: list[bytes] = []
    uart.follow(got.append)
    assert got == []
    init_8n1(bus)
    for b in b"hello\n":
        polling_putc(bus, b)
    assert uart.output() == b"hello\n"
    assert b"".join(got) == b"hello\n"
    assert uart.transmitted == 6
    # A later follower gets what was kept, then the rest.
    later: list[bytes] = []
    uart.follow(later.append)
    polling_putc(bus, ord("!"))
    assert later == [b"hello\n", b"!"]
    uart.unfollow(later.append)
    polling_putc(bus, ord("?"))
    assert later == [b"hello\n", b"!"]


def test_divisor_latch_is_behind_dlab_and_keeps_rbr_ier_apart() -> None:
    bus, _, _ = uart_bus()
    bus.write(IER, 1, 0x05)
    bus.write(LCR, 1, 0x83)
    bus.write(DLL, 1, 0x0C)
    bus.write(DLM, 1, 0x01)
    assert (bus.read(DLL, 1), bus.read(DLM, 1)) == (0x0C, 0x01)
    bus.write(LCR, 1, 0x03)
    assert bus.read(IER, 1) == 0x05  # IER was not touched by DLM
    bus.write(LCR, 1, 0x83)
    assert bus.read(DLM, 1) == 0x01
    # A 16-bit access is two byte accesses at consecutive ports (ISA).
    bus.write(DLL, 2, 0x0060)
    assert bus.read(DLL, 2) == 0x0060


def test_host_input_arrives_in_the_receive_fifo() -> None:
    bus, uart, _ = uart_bus()
    init_8n1(bus)
    woken: list[int] = []
    uart.input_listeners.append(lambda: woken.append(1))
    assert uart.receive(b"ab") == 2
    assert woken == [1]
    assert uart.has_input()
    assert bus.read(LSR, 1) & 0x01
    assert [polling_getc(bus), polling_getc(bus), polling_getc(bus)] == [ord("a"), ord("b"), None]
    assert bus.read(LSR, 1) == 0x60


def test_fifo_overrun_keeps_sixteen_and_sets_oe_until_lsr_is_read() -> None:
    bus, uart, events = uart_bus()
    init_8n1(bus)
    data = bytes(range(ord("A"), ord("A") + 20))
    assert uart.receive(data) == 16
    assert events == ["ttyS0 overrun: 4 of 20 bytes lost"]
    lsr = bus.read(LSR, 1)
    assert lsr & 0x03 == 0x03  # DR and OE
    assert bus.read(LSR, 1) & 0x02 == 0  # OE cleared by the read
    got = bytes(bus.read(RBR, 1) for _ in range(16))
    assert got == data[:16]
    assert not bus.read(LSR, 1) & 0x01


def test_without_fifos_a_new_byte_destroys_the_unread_one() -> None:
    bus, uart, _ = uart_bus()
    bus.write(LCR, 1, 0x03)
    assert bus.read(IIR, 1) & 0xC0 == 0
    assert uart.receive(b"xy") == 1
    assert bus.read(LSR, 1) & 0x03 == 0x03
    assert bus.read(RBR, 1) == ord("y")


def test_fcr_enables_and_clears_fifos_and_iir_shows_them() -> None:
    bus, uart, _ = uart_bus()
    bus.write(FCR, 1, 0x01)
    assert bus.read(IIR, 1) == 0xC1
    uart.receive(b"abc")
    bus.write(FCR, 1, 0x03)  # clear the receiver FIFO
    assert not bus.read(LSR, 1) & 0x01
    uart.receive(b"abc")
    bus.write(FCR, 1, 0x00)  # FIFOs off: cleared, other bits not programmed
    assert bus.read(IIR, 1) == 0x01
    assert not bus.read(LSR, 1) & 0x01


def test_iir_priorities_and_clearing() -> None:
    bus, uart, _ = uart_bus()
    bus.write(LCR, 1, 0x03)
    bus.write(FCR, 1, 0x41)  # FIFOs, trigger level 4
    bus.write(IER, 1, 0x0F)
    # THR empty: THRE pending as soon as it is enabled; reading IIR clears it.
    assert bus.read(IIR, 1) == 0xC2
    assert bus.read(IIR, 1) == 0xC1
    bus.write(THR, 1, ord("x"))
    assert bus.read(IIR, 1) == 0xC2
    # Data below the trigger level: character timeout; at the level: RDA.
    uart.receive(b"ab")
    assert bus.read(IIR, 1) == 0xCC
    uart.receive(b"cd")
    assert bus.read(IIR, 1) == 0xC4
    # Receiver line status (an overrun) comes first; reading LSR clears it.
    uart.receive(bytes(20))
    assert bus.read(IIR, 1) == 0xC6
    bus.read(LSR, 1)
    assert bus.read(IIR, 1) == 0xC4
    bus.write(FCR, 1, 0x43)
    assert bus.read(IIR, 1) == 0xC1


def test_loopback_turns_thr_into_rbr_and_mcr_into_msr() -> None:
    bus, uart, events = uart_bus()
    init_8n1(bus)
    bus.read(MSR, 1)
    bus.write(MCR, 1, 0x10)  # loopback, every output off
    msr = bus.read(MSR, 1)
    assert msr & 0xF0 == 0  # CTS DSR RI DCD follow RTS DTR OUT1 OUT2
    assert msr & 0x0B == 0x0B  # DCTS, DDSR, DDCD: they dropped
    bus.write(MCR, 1, 0x1F)
    assert bus.read(MSR, 1) == 0xF0 | 0x0B
    bus.write(MCR, 1, 0x1B)  # OUT1 off: RI's trailing edge
    assert bus.read(MSR, 1) & 0x4F == 0x04
    bus.write(THR, 1, 0x55)
    assert bus.read(LSR, 1) & 0x01
    assert bus.read(RBR, 1) == 0x55
    assert uart.output() == b""  # nothing on the line
    assert uart.receive(b"zz") == 0  # the serial input is disconnected
    assert events == ["ttyS0 the line is disconnected in loopback mode: 2 of 2 bytes lost"]
    bus.write(MCR, 1, 0x0B)
    bus.write(THR, 1, ord("o"))
    assert uart.output() == b"o"


def test_word_length_and_scratch() -> None:
    bus, uart, _ = uart_bus()
    bus.write(LCR, 1, 0x02)  # 7 bits
    bus.write(THR, 1, 0xC1)
    assert uart.output() == b"A"
    bus.write(SCR, 1, 0x5A)
    assert bus.read(SCR, 1) == 0x5A


def test_post_port_keeps_every_code_and_logs_each() -> None:
    events: list[str] = []
    post = PostPort(on_event=events.append)
    bus = IoBus([post])
    assert post.last is None and bus.read(0x80, 1) == 0xFF
    for code in (0x01, 0x2A, 0x2A):
        bus.write(0x80, 1, code)
    assert post.codes() == [0x01, 0x2A, 0x2A]
    assert post.last == 0x2A and post.count == 3
    assert bus.read(0x80, 1) == 0x2A
    assert events == ["post 0x01", "post 0x2a", "post 0x2a"]
    # A 16-bit write: its high byte is at 0x81, not the POST port's.
    bus.write(0x80, 2, 0x1234)
    assert post.codes()[-1] == 0x34 and post.count == 4


def _rtc(bus: IoBus, reg: int) -> int:
    bus.write(0x70, 1, 0x80 | reg)  # NMI masked, as a BIOS does
    return bus.read(0x71, 1)


def _bcd(b: int) -> int:
    return (b >> 4) * 10 + (b & 0x0F)


# Thursday 2024-02-29 23:59:58 UTC, half a second in.
T0 = calendar.timegm((2024, 2, 29, 23, 59, 58, 0, 0, 0)) + 0.5


def test_rtc_reads_the_clock_in_bcd_24_hour_mode() -> None:
    now = [T0]
    bus = IoBus([Cmos(clock=lambda: now[0])])
    assert _rtc(bus, 0x0B) == 0x02  # 24-hour, BCD: what a PC BIOS sets
    assert _rtc(bus, 0x0A) == 0x26
    assert _rtc(bus, 0x0D) == 0x80
    assert _rtc(bus, 0x0C) == 0
    fields = [_rtc(bus, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]
    assert fields == [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]
    now[0] += 2
    assert [_rtc(bus, r) for r in (0, 4, 7, 8)] == [0x00, 0x00, 0x01, 0x03]
    assert bus.read(0x70, 1) == 0xFF  # the index register is write-only


def test_rtc_uip_is_set_around_the_update() -> None:
    now = [T0]
    bus = IoBus([Cmos(clock=lambda: now[0])])
    assert not _rtc(bus, 0x0A) & 0x80
    now[0] = int(T0) + 1 - 100e-6
    assert _rtc(bus, 0x0A) & 0x80
    now[0] = int(T0) + 1 + 1000e-6
    assert _rtc(bus, 0x0A) & 0x80
    now[0] = int(T0) + 1 + 3000e-6
    assert not _rtc(bus, 0x0A) & 0x80


def test_rtc_binary_and_12_hour_modes_as_the_guest_sets_them() -> None:
    bus = IoBus([Cmos(clock=lambda: T0)])
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x04)  # binary, 12-hour
    assert _rtc(bus, 0x00) == 58
    assert _rtc(bus, 0x04) == 0x80 | 11  # 11 PM
    assert _rtc(bus, 0x09) == 24


def test_rtc_set_by_the_guest_moves_this_rtc_only() -> None:
    now = [T0]
    cmos = Cmos(clock=lambda: now[0])
    bus = IoBus([cmos])
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x82)  # SET: updates stop while the time is written
    for reg, value in ((0x09, 0x99), (0x32, 0x19), (0x08, 0x12), (0x07, 0x31), (0x04, 0x12)):
        bus.write(0x70, 1, reg)
        bus.write(0x71, 1, value)
    now[0] += 5  # frozen while SET
    assert _rtc(bus, 0x09) == 0x99 and _rtc(bus, 0x00) == 0x58
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x02)
    want = calendar.timegm((1999, 12, 31, 12, 59, 58, 0, 0, 0))
    assert abs(cmos.now() - want - 0.5) < 1e-6
    assert [_rtc(bus, r) for r in (0x32, 0x09, 0x04)] == [0x19, 0x99, 0x12]


def test_cmos_ram_outside_the_clock() -> None:
    bus = IoBus([Cmos(clock=time.time)])
    for reg in (0x0E, 0x10, 0x7F):
        bus.write(0x70, 1, reg)
        bus.write(0x71, 1, reg ^ 0xA5)
    assert [_rtc(bus, r) for r in (0x0E, 0x10, 0x7F)] == [0x0E ^ 0xA5, 0x10 ^ 0xA5, 0x7F ^ 0xA5]
    # outw(0x70, index | value << 8): index then data, as on the ISA bus.
    bus.write(0x70, 2, 0x3C40)
    assert _rtc(bus, 0x40) == 0x3C


def test_rtc_of_the_machine_bus_is_the_wall_clock() -> None:
    bus = machine_bus()
    t = time.gmtime()
    got = [_bcd(_rtc(bus, r)) for r in (0x32, 0x09, 0x08, 0x07)]
    assert got[0] * 100 + got[1] == t.tm_year and got[2:] == [t.tm_mon, t.tm_mday]


def test_machine_bus_has_com1_post_and_cmos_and_logs_unknown_ports() -> None:
    events: list[str] = []
    bus = machine_bus(events.append)
    assert {d.name: d.ports for d in bus.devices} == {
        "ttyS0": range(0x3F8, 0x400),
        "post": range(0x80, 0x81),
        "cmos": range(0x70, 0x72),
    }
    bus.write(0x80, 1, 0x2A)
    assert bus.read(0x2F8, 1) == 0xFF
    assert events == ["post 0x2a", "ioport unknown 0x02f8"]


def test_a_user_device_on_a_port_range() -> None:
    """The README's example: a PortDevice subclass gets bytes."""

    class Latch(PortDevice):
        def __init__(self) -> None:
            super().__init__("latch", range(0x300, 0x302))
            self.value = [0, 0]

        def read_byte(self, offset: int) -> int:
            return self.value[offset]

        def write_byte(self, offset: int, value: int) -> None:
            self.value[offset] = value

    bus = machine_bus()
    latch = Latch()
    bus.attach(latch)
    bus.write(0x300, 2, 0xBEEF)
    assert latch.value == [0xEF, 0xBE]
    assert bus.read(0x301, 2) == 0xFFBE  # 0x302 is nobody's
    with pytest.raises(ValueError):
        bus.attach(PostPort(port=0x301))
