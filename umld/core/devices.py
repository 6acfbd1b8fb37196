"""The devices on a machine's I/O-port bus (issue 15).

One class per device, each a :class:`umld.core.iobus.Device`:

* :class:`Uart16550` -- a 16550A UART (COM1 at 0x3f8-0x3ff), after the TI
  PC16550D datasheet: what the guest transmits is the device's output
  stream (the export's ``dev/ttyS0``), what the host gives it arrives in
  the receive FIFO;
* :class:`PostPort` -- the POST diagnostic port 0x80: every byte written
  is kept, the last one is the code shown (``dev/post``);
* :class:`Cmos` -- the CMOS RAM and MC146818 real-time clock at
  0x70/0x71, reading the machine's clock in BCD.

Adding a device.  A device is any object with ``name``, ``ports`` (a
range), ``read(port, size)`` and ``write(port, size, value)``; the usual
way is a subclass of :class:`PortDevice`, an 8-bit ISA device: it gets
one call per byte (``read_byte(offset)``, ``write_byte(offset, value)``,
the offset from its first port) and a lock held around each access, and
a 16- or 32-bit access is split into bytes at consecutive ports, as the
ISA bus does for an 8-bit device::

    class Latch(PortDevice):
        def __init__(self) -> None:
            super().__init__("latch", range(0x300, 0x302))
            self.value = [0, 0]

        def read_byte(self, offset: int) -> int:
            return self.value[offset]

        def write_byte(self, offset: int, value: int) -> None:
            self.value[offset] = value

    control.iobus.attach(Latch())   # or machine.iobus in the Python API

Threads.  Guest accesses come from the tracer thread; the host's input
(``Uart16550.receive``) and the export's reads from the export's
threads.  No method blocks: an access is one guest instruction, and a
host that floods the UART loses bytes (an overrun), it never waits.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import deque
from collections.abc import Callable

from umld.core.iobus import Device, IoBus

__all__ = ["Cmos", "PortDevice", "PostPort", "Uart16550", "machine_bus", "machine_devices"]

#: Events go to a text callback (the machine's ``events``); None: nowhere.
OnEvent = Callable[[str], None] | None


class PortDevice:
    """An 8-bit device on ``ports``: subclasses give ``read_byte`` and
    ``write_byte``; each access runs under ``self.lock``."""

    def __init__(self, name: str, ports: range) -> None:
        self.name = name
        self.ports = ports
        self.lock = threading.RLock()

    def read(self, port: int, size: int) -> int:
        value = 0
        with self.lock:
            for i in range(size):
                p = port + i
                # A byte past the device's ports: nothing decodes it.
                b = self.read_byte(p - self.ports.start) & 0xFF if p in self.ports else 0xFF
                value |= b << (8 * i)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        with self.lock:
            for i in range(size):
                p = port + i
                if p in self.ports:
                    self.write_byte(p - self.ports.start, (value >> (8 * i)) & 0xFF)

    def read_byte(self, offset: int) -> int:
        return 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        pass


# -- the 16550A UART ------------------------------------------------------------------

# Register offsets (PC16550D, table II).
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# LSR bits.
LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20  # transmitter holding register (or FIFO) empty
LSR_TEMT = 0x40  # transmitter empty (THR and shift register)
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# IER bits.
IER_RDA = 0x01
IER_THRE = 0x02
IER_RLS = 0x04
IER_MSI = 0x08

# IIR values (bit 0 clear: an interrupt is pending; bits 6-7: FIFOs on).
IIR_NONE = 0x01
IIR_RLS = 0x06
IIR_RDA = 0x04
IIR_TIMEOUT = 0x0C
IIR_THRE = 0x02
IIR_MSI = 0x00
IIR_FIFOS = 0xC0

# FCR bits.
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_DMA = 0x08
#: Receiver FIFO trigger levels by FCR bits 7-6.
TRIGGER = {0: 1, 1: 4, 2: 8, 3: 14}

LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

#: The depth of each FIFO of a 16550A.
FIFO_DEPTH = 16


class Uart16550(PortDevice):
    """A 16550A UART on 8 ports (COM1: 0x3f8), as the PC16550D datasheet
    describes it to a driver.

    The line is infinitely fast: a byte written to THR is transmitted at
    once (LSR THRE and TEMT stay set; the divisor latch is kept but sets
    no pace), and goes to the output stream (:meth:`follow`, the export's
    ``dev/ttyS0``), or in loopback mode (MCR bit 4) to the receiver.  What
    the host gives (:meth:`receive`) arrives in the receiver at once: in
    FIFO mode up to 16 bytes wait in the FIFO and the rest is lost with
    LSR OE set (the datasheet: the character in the shift register is
    overwritten, not transferred to a full FIFO); without FIFOs each byte
    replaces an unread one, with OE set.  In loopback mode the serial
    input is disconnected and the host's bytes are lost.  The modem lines
    of the other end are on (CTS, DSR, DCD); in loopback mode MSR shows
    the MCR's outputs (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD) with their
    delta bits.  The line starts as a PC BIOS leaves it: 9600 baud
    (divisor 12), 8N1 (LCR 0x03).  There is no interrupt line: IIR says what would be
    pending (as a driver that polls IIR reads it), with the character
    timeout (0xC) standing for received data below the FIFO's trigger
    level (the host's bytes come in bursts, never half a burst later).
    """

    def __init__(
        self,
        name: str = "ttyS0",
        base: int = 0x3F8,
        *,
        on_event: OnEvent = None,
        keep: int = 1 << 20,
    ) -> None:
        super().__init__(name, range(base, base + 8))
        self.on_event = on_event
        self._keep = keep
        self._rx: deque[int] = deque()
        self._rbr_last = 0
        self._ier = 0
        # 8 data bits, no parity, 1 stop bit (the chip's reset value is 0,
        # 5 bits): the state a PC BIOS leaves COM1 in, so that a guest
        # writing THR without programming the line sends whole bytes.
        self._lcr = 0x03
        self._mcr = 0
        self._fcr = 0
        self._scr = 0
        # 115200 / 12: 9600 baud, what a PC BIOS programs.
        self._dll, self._dlm = 12, 0
        self._errors = 0  # LSR bits 1-4 until LSR is read
        self._msr_delta = 0
        self._thr_ipending = False
        self._out = bytearray()
        self._out_total = 0
        self._followers: list[Callable[[bytes], None]] = []
        #: Called (no argument, any thread) when received data arrives:
        #: what a guest waiting in ``hlt`` may wake on.
        self.input_listeners: list[Callable[[], None]] = []

    # -- the host's side -----------------------------------------------------------

    def follow(self, listener: Callable[[bytes], None]) -> None:
        """``listener(data)`` gets the output kept so far (the newest
        ``keep`` bytes, if any), then each transmitted byte in order, on
        the guest's thread (it must be quick and never block)."""
        with self.lock:
            if self._out:
                listener(bytes(self._out))
            self._followers.append(listener)

    def unfollow(self, listener: Callable[[bytes], None]) -> None:
        with self.lock:
            if listener in self._followers:
                self._followers.remove(listener)

    def output(self) -> bytes:
        """The transmitted bytes kept (the newest ``keep``)."""
        with self.lock:
            return bytes(self._out)

    @property
    def transmitted(self) -> int:
        """How many bytes the guest transmitted since the start."""
        with self.lock:
            return self._out_total

    def receive(self, data: bytes) -> int:
        """Bytes from the other end of the line: how many reached the
        receiver (the rest are lost, an overrun, logged once per call)."""
        if not data:
            return 0
        with self.lock:
            if self._mcr & MCR_LOOP:
                got, why = 0, "the line is disconnected in loopback mode"
            else:
                got = sum(self._received(b) for b in data)
                why = "overrun"
        lost = len(data) - got
        if lost and self.on_event is not None:
            self.on_event(f"{self.name} {why}: {lost} of {len(data)} bytes lost")
        if got:
            for wake in list(self.input_listeners):
                wake()
        return got

    def has_input(self) -> bool:
        """Whether received data waits (LSR DR)."""
        with self.lock:
            return bool(self._rx)

    # -- the receiver ----------------------------------------------------------------

    def _fifo(self) -> bool:
        return bool(self._fcr & FCR_ENABLE)

    def _word_mask(self) -> int:
        return (1 << (5 + (self._lcr & 0x03))) - 1

    def _received(self, byte: int) -> int:
        """One character off the line into the receiver; 0 when one was
        lost (this one, or in FIFO-less mode the one it replaced)."""
        byte &= self._word_mask()
        if self._fifo():
            if len(self._rx) >= FIFO_DEPTH:
                self._errors |= LSR_OE
                return 0
            self._rx.append(byte)
            return 1
        destroyed = bool(self._rx)
        if destroyed:  # the unread character is lost
            self._errors |= LSR_OE
            self._rx.clear()
        self._rx.append(byte)
        return 0 if destroyed else 1

    # -- registers -------------------------------------------------------------------

    def _msr_status(self) -> int:
        if self._mcr & MCR_LOOP:
            m = self._mcr
            return (
                (MSR_CTS if m & MCR_RTS else 0)
                | (MSR_DSR if m & MCR_DTR else 0)
                | (MSR_RI if m & MCR_OUT1 else 0)
                | (MSR_DCD if m & MCR_OUT2 else 0)
            )
        return MSR_CTS | MSR_DSR | MSR_DCD

    def _lsr(self) -> int:
        return (LSR_DR if self._rx else 0) | self._errors | LSR_THRE | LSR_TEMT

    def _iir(self) -> int:
        fifos = IIR_FIFOS if self._fifo() else 0
        ier = self._ier
        if ier & IER_RLS and self._errors:
            return IIR_RLS | fifos
        if ier & IER_RDA and self._rx:
            if self._fifo() and len(self._rx) < TRIGGER[self._fcr >> 6]:
                return IIR_TIMEOUT | fifos
            return IIR_RDA | fifos
        if ier & IER_THRE and self._thr_ipending:
            # Reading IIR while THRE is its source clears it (table IV).
            self._thr_ipending = False
            return IIR_THRE | fifos
        if ier & IER_MSI and self._msr_delta:
            return IIR_MSI | fifos
        return IIR_NONE | fifos

    def read_byte(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR:
            if dlab:
                return self._dll
            if self._rx:
                self._rbr_last = self._rx.popleft()
            return self._rbr_last
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR:
            return self._iir()
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            value = self._lsr()
            self._errors = 0  # reading LSR clears OE, PE, FE, BI
            return value
        if offset == MSR:
            value = self._msr_status() | self._msr_delta
            self._msr_delta = 0
            return value
        return self._scr

    def write_byte(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self._dll = value
            else:
                self._transmit(value & self._word_mask())
        elif offset == IER:
            if dlab:
                self._dlm = value
            else:
                if value & IER_THRE and not self._ier & IER_THRE:
                    self._thr_ipending = True  # THR is empty: THRE is pending at once
                self._ier = value & 0x0F
        elif offset == FCR:
            self._fcr_write(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            before = self._msr_status()
            self._mcr = value & 0x1F
            self._msr_changed(before, self._msr_status())
        elif offset == SCR:
            self._scr = value
        # LSR and MSR are read-only (the datasheet leaves writes for factory test).

    def _fcr_write(self, value: int) -> None:
        enable = value & FCR_ENABLE
        if enable != self._fcr & FCR_ENABLE:
            # Changing FCR0 clears both FIFOs.
            self._rx.clear()
        if not enable:
            # FCR0 must be 1 for the other bits to be programmed.
            self._fcr = 0
            return
        if value & FCR_CLEAR_RX:
            self._rx.clear()
        # FCR_CLEAR_TX: the transmitter never holds anything.
        self._fcr = value & (FCR_ENABLE | FCR_DMA | 0xC0)

    def _msr_changed(self, before: int, after: int) -> None:
        changed = before ^ after
        if changed & MSR_CTS:
            self._msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_delta |= MSR_DDSR
        if before & MSR_RI and not after & MSR_RI:
            self._msr_delta |= MSR_TERI  # trailing edge of RI
        if changed & MSR_DCD:
            self._msr_delta |= MSR_DDCD

    def _transmit(self, byte: int) -> None:
        self._thr_ipending = True  # THR empties at once
        if self._mcr & MCR_LOOP:
            self._received(byte)
            for wake in list(self.input_listeners):
                wake()
            return
        self._out.append(byte)
        self._out_total += 1
        if len(self._out) > self._keep:
            del self._out[: len(self._out) - self._keep]
        data = bytes((byte,))
        for listener in self._followers:
            listener(data)


# -- the POST diagnostic port ---------------------------------------------------------


class PostPort(PortDevice):
    """Port 0x80, where a PC's firmware writes its power-on self test
    codes (and Linux's ``outb_p`` its delays): each byte written is kept
    (the newest ``keep``) and is one event; a read gives the last code
    (0xff before any)."""

    def __init__(
        self, name: str = "post", port: int = 0x80, *, on_event: OnEvent = None, keep: int = 4096
    ) -> None:
        super().__init__(name, range(port, port + 1))
        self.on_event = on_event
        self._codes: deque[int] = deque(maxlen=keep)
        self._count = 0

    @property
    def last(self) -> int | None:
        """The last code written, None before any."""
        with self.lock:
            return self._codes[-1] if self._codes else None

    def codes(self) -> list[int]:
        """The codes kept, oldest first."""
        with self.lock:
            return list(self._codes)

    @property
    def count(self) -> int:
        with self.lock:
            return self._count

    def read_byte(self, offset: int) -> int:
        return self._codes[-1] if self._codes else 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        self._codes.append(value)
        self._count += 1
        if self.on_event is not None:
            self.on_event(f"{self.name} {value:#04x}")


# -- the CMOS RAM and real-time clock ---------------------------------------------------

# The MC146818's registers (the PC's RTC).
RTC_SECONDS, RTC_MINUTES, RTC_HOURS = 0x00, 0x02, 0x04
RTC_WEEKDAY, RTC_DAY, RTC_MONTH, RTC_YEAR = 0x06, 0x07, 0x08, 0x09
RTC_A, RTC_B, RTC_C, RTC_D = 0x0A, 0x0B, 0x0C, 0x0D
#: The century byte of a PC's CMOS (the ACPI FADT's default).
RTC_CENTURY = 0x32
TIME_REGISTERS = frozenset(
    (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_WEEKDAY, RTC_DAY, RTC_MONTH, RTC_YEAR, RTC_CENTURY)
)
B_SET, B_DM_BINARY, B_24H = 0x80, 0x04, 0x02
A_UIP = 0x80
#: UIP is set 244 us before each second's update and the update takes
#: 1984 us (MC146818 datasheet, "update cycle").
UIP_BEFORE, UIP_AFTER = 244e-6, 1984e-6


def _bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def _unbcd(b: int) -> int:
    return (b >> 4) * 10 + (b & 0x0F)


class Cmos(PortDevice):
    """The CMOS RAM at 0x70 (index, bit 7 masks NMI) and 0x71 (data).

    Registers 0-9 and 0x32 read the machine's clock: ``clock()`` in UTC,
    as a PC running Linux keeps its RTC.  The machine's wall clock is the
    host's CLOCK_REALTIME: a time namespace offsets only the monotonic and
    boot clocks (time_namespaces(7)) and the guest may not set the clock
    (clock_settime(2) is denied), so ``clock`` is :func:`time.time`.
    Status B reads 0x02 as a PC BIOS leaves it (24-hour mode, BCD); a
    guest that sets DM (binary) or clears 24/12 gets that format.  A
    guest that sets the time (registers 0-9 and 0x32, directly or between
    setting and clearing B's SET bit) moves this RTC only: it keeps an
    offset from ``clock``.  Status A reads 0x26 (32.768 kHz, 1024 Hz)
    with UIP set around each second's update; C reads 0 (no interrupt
    fires); D reads 0x80 (valid RAM and time).  The other 114 bytes are
    RAM (0x70 itself reads 0xff: the index register is write-only).
    """

    def __init__(
        self,
        name: str = "cmos",
        base: int = 0x70,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, range(base, base + 2))
        self.clock = clock
        self._index = 0
        self._ram = bytearray(128)
        self._ram[RTC_A] = 0x26
        self._ram[RTC_B] = B_24H
        self._ram[RTC_D] = 0x80
        #: Seconds the guest moved its RTC from ``clock``.
        self.offset = 0.0
        # While B's SET bit is on: the time as the guest is setting it.
        self._frozen: list[int] | None = None

    # -- the clock ---------------------------------------------------------------------

    def now(self) -> float:
        """The RTC's time, in seconds since the epoch."""
        with self.lock:
            return self.clock() + self.offset

    def _fields(self) -> list[int]:
        """[sec, min, hour, weekday(1=Sunday), day, month, year (4 digits)]."""
        if self._frozen is not None:
            return list(self._frozen)
        t = time.gmtime(int(self.clock() + self.offset))
        return [
            t.tm_sec,
            t.tm_min,
            t.tm_hour,
            (t.tm_wday + 1) % 7 + 1,
            t.tm_mday,
            t.tm_mon,
            t.tm_year,
        ]

    def _encode(self, n: int) -> int:
        return n if self._ram[RTC_B] & B_DM_BINARY else _bcd(n)

    def _decode(self, b: int) -> int:
        return b if self._ram[RTC_B] & B_DM_BINARY else _unbcd(b)

    def _read_time(self, reg: int) -> int:
        sec, minute, hour, wday, day, month, year = self._fields()
        if reg == RTC_HOURS and not self._ram[RTC_B] & B_24H:
            pm = hour >= 12
            return self._encode(hour % 12 or 12) | (0x80 if pm else 0)
        value = {
            RTC_SECONDS: sec,
            RTC_MINUTES: minute,
            RTC_HOURS: hour,
            RTC_WEEKDAY: wday,
            RTC_DAY: day,
            RTC_MONTH: month,
            RTC_YEAR: year % 100,
            RTC_CENTURY: year // 100,
        }[reg]
        return self._encode(value)

    def _write_time(self, reg: int, b: int) -> None:
        fields = self._fields()
        if reg == RTC_HOURS and not self._ram[RTC_B] & B_24H:
            hour = self._decode(b & 0x7F) % 12
            value = hour + (12 if b & 0x80 else 0)
        else:
            value = self._decode(b)
        if reg == RTC_YEAR:
            fields[6] = fields[6] // 100 * 100 + value % 100
        elif reg == RTC_CENTURY:
            fields[6] = value * 100 + fields[6] % 100
        else:
            fields[{0: 0, 2: 1, 4: 2, 6: 3, 7: 4, 8: 5}[reg]] = value
        if self._frozen is not None:
            self._frozen = fields
        else:
            self._set(fields)

    def _set(self, fields: list[int]) -> None:
        sec, minute, hour, _, day, month, year = fields
        try:
            when = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
        except (ValueError, OverflowError):
            return  # a date that is none: the clock keeps its time
        # The running second goes on from where it is.
        now = self.clock()
        self.offset = when + (now + self.offset) % 1.0 - now

    def _uip(self) -> bool:
        if self._frozen is not None or self._ram[RTC_A] & 0x70 != 0x20:
            return False  # SET, or the divider stopped: no update cycle
        frac = (self.clock() + self.offset) % 1.0
        return frac >= 1.0 - UIP_BEFORE or frac < UIP_AFTER

    # -- ports -------------------------------------------------------------------------

    def read_byte(self, offset: int) -> int:
        if offset == 0:
            return 0xFF
        reg = self._index
        if reg in TIME_REGISTERS:
            return self._read_time(reg)
        if reg == RTC_A:
            return self._ram[RTC_A] | (A_UIP if self._uip() else 0)
        if reg == RTC_C:
            return 0
        return self._ram[reg]

    def write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            self._index = value & 0x7F
            return
        reg = self._index
        if reg in TIME_REGISTERS:
            self._write_time(reg, value)
        elif reg == RTC_A:
            self._ram[RTC_A] = value & 0x7F  # UIP is read-only
        elif reg == RTC_B:
            if value & B_SET and self._frozen is None:
                self._frozen = self._fields()
            elif not value & B_SET and self._frozen is not None:
                frozen, self._frozen = self._frozen, None
                self._set(frozen)
            self._ram[RTC_B] = value
        elif reg in (RTC_C, RTC_D):
            pass  # read-only
        else:
            self._ram[reg] = value


def machine_devices(
    on_event: OnEvent = None, *, clock: Callable[[], float] = time.time
) -> list[Device]:
    """A machine's devices: COM1's UART, the POST port and the CMOS/RTC;
    ``on_event`` gets the devices' event lines."""
    return [
        Uart16550("ttyS0", 0x3F8, on_event=on_event),
        PostPort("post", 0x80, on_event=on_event),
        Cmos("cmos", 0x70, clock=clock),
    ]


def machine_bus(on_event: OnEvent = None, *, clock: Callable[[], float] = time.time) -> IoBus:
    """A bus with a machine's devices (machine_devices); ``on_event`` gets
    the bus's and the devices' event lines."""
    return IoBus(machine_devices(on_event, clock=clock), on_event=on_event)
