"""The decoder and emulator of privileged instructions (umld/core/privileged.py),
on byte strings and a bus of recording devices: no tracer."""

from __future__ import annotations

import pytest

from tests.conftest import CountingDevice
from umld.core.iobus import IoBus
from umld.core.privileged import (
    DF,
    MAX_ELEMENTS,
    Insn,
    MemoryFault,
    Op,
    ThreadIo,
    decode,
    emulate,
)
from umld.tracer.platform import NREGS, Regs

RAX0 = 0x1122334455667788


@pytest.mark.parametrize(
    ("code", "insn"),
    [
        (b"\xe4\x80", Insn(Op.IN, 2, 1, 0x80)),
        (b"\xe5\x71", Insn(Op.IN, 2, 4, 0x71)),
        (b"\x66\xe5\x71", Insn(Op.IN, 3, 2, 0x71)),
        (b"\xe6\x80", Insn(Op.OUT, 2, 1, 0x80)),
        (b"\xe7\x80", Insn(Op.OUT, 2, 4, 0x80)),
        (b"\x66\xe7\x80", Insn(Op.OUT, 3, 2, 0x80)),
        (b"\xec", Insn(Op.IN, 1, 1)),
        (b"\xed", Insn(Op.IN, 1, 4)),
        (b"\x66\xed", Insn(Op.IN, 2, 2)),
        (b"\xee", Insn(Op.OUT, 1, 1)),
        (b"\xef", Insn(Op.OUT, 1, 4)),
        (b"\x66\xef", Insn(Op.OUT, 2, 2)),
        (b"\x6c", Insn(Op.INS, 1, 1)),
        (b"\xf3\x6c", Insn(Op.INS, 2, 1, rep=True)),
        (b"\x66\xf3\x6d", Insn(Op.INS, 3, 2, rep=True)),
        (b"\xf3\x66\x6d", Insn(Op.INS, 3, 2, rep=True)),
        (b"\xf3\x6d", Insn(Op.INS, 2, 4, rep=True)),
        (b"\x67\xf3\x6c", Insn(Op.INS, 3, 1, rep=True, addr_size=4)),
        (b"\x6e", Insn(Op.OUTS, 1, 1)),
        (b"\xf3\x6f", Insn(Op.OUTS, 2, 4, rep=True)),
        (b"\xf2\x6e", Insn(Op.OUTS, 2, 1, rep=True)),
        (b"\x64\xf3\x6e", Insn(Op.OUTS, 3, 1, rep=True, segment=0x64)),
        (b"\x48\xec", Insn(Op.IN, 2, 1)),  # REX.W changes nothing
        (b"\xfa", Insn(Op.CLI, 1)),
        (b"\xfb", Insn(Op.STI, 1)),
        (b"\xf4", Insn(Op.HLT, 1)),
        (b"\xe4\x80\x90\x90", Insn(Op.IN, 2, 1, 0x80)),  # what follows is not read
        (b"\xf3\xe4\x80", Insn(Op.IN, 3, 1, 0x80)),  # rep on a non-string form: ignored
    ],
)
def test_decode(code: bytes, insn: Insn) -> None:
    assert decode(code) == insn


@pytest.mark.parametrize(
    "code",
    [
        b"",
        b"\xe4",  # truncated immediate
        b"\x66",
        b"\x90",
        b"\x0f\x05",  # syscall
        b"\xf0\xec",  # lock: #UD, not #GP
        b"\x48\x66\xec",  # REX not right before the opcode
        b"\x66" * 15 + b"\xec",  # longer than 15 bytes
        b"\x8b\x04\x25\x00\x00\x00\x00",  # a load from address 0: a real segfault
    ],
)
def test_not_ours(code: bytes) -> None:
    assert decode(code) is None


def test_decode_of_a_32_bit_thread() -> None:
    """Addresses are 32-bit by default there, 16-bit with 0x67; 0x40-0x4f
    are inc/dec, not REX."""
    assert decode(b"\xf3\x6c", long_mode=False) == Insn(Op.INS, 2, 1, rep=True, addr_size=4)
    assert decode(b"\x67\x6c", long_mode=False) == Insn(Op.INS, 2, 1, addr_size=2)
    assert decode(b"\x40\xec", long_mode=False) is None


def test_fifteen_bytes_is_the_limit() -> None:
    assert decode(b"\x66" * 14 + b"\xed") == Insn(Op.IN, 15, 2)


class Memory:
    def __init__(self, base: int, data: bytes) -> None:
        self.base = base
        self.data = bytearray(data)

    def read(self, addr: int, n: int) -> bytes:
        off = addr - self.base
        if off < 0 or off + n > len(self.data):
            raise MemoryFault(addr)
        return bytes(self.data[off : off + n])

    def write(self, addr: int, data: bytes) -> None:
        off = addr - self.base
        if off < 0 or off + len(data) > len(self.data):
            raise MemoryFault(addr)
        self.data[off : off + len(data)] = data


def regs(**kw: int) -> Regs:
    base = Regs(*([0] * NREGS))._replace(rip=0x1000, rax=RAX0, rdx=0x3F2, cs=0x33)
    return base._replace(**kw)


def run(code: bytes, r: Regs, mem: Memory | None = None) -> tuple[Regs, CountingDevice, Memory]:
    dev = CountingDevice("recorder", range(0x3F0, 0x3F8))
    bus = IoBus([dev])
    mem = mem or Memory(0x5000, bytes(64))
    insn = decode(code)
    assert insn is not None
    return emulate(insn, r, bus, mem.read, mem.write), dev, mem


def test_in_writes_al_ax_or_eax_as_the_cpu() -> None:
    assert run(b"\xec", regs())[0].rax == 0x1122334455667701
    assert run(b"\x66\xed", regs())[0].rax == 0x1122334455660101
    # A 32-bit result zero-extends into rax (SDM vol. 1, 3.4.1.1).
    assert run(b"\xed", regs())[0].rax == 0x01010101
    after = run(b"\xe4\xf0", regs())[0]
    assert after.rip == 0x1002 and after.rdx == 0x3F2


def test_out_sends_the_width_of_the_operand() -> None:
    assert run(b"\xee", regs())[1].writes == [(0x3F2, 1, 0x88)]
    assert run(b"\x66\xef", regs())[1].writes == [(0x3F2, 2, 0x7788)]
    after, dev, _ = run(b"\xef", regs(rdx=0x3F4))
    assert dev.writes == [(0x3F4, 4, 0x55667788)]
    assert after.rip == 0x1001 and after.rax == RAX0
    after, dev, _ = run(b"\xe7\xf4", regs())  # imm8: port 0xf4, not the device's
    assert dev.writes == [] and after.rip == 0x1002


def test_rep_ins_fills_memory_and_counts_down() -> None:
    after, dev, mem = run(b"\xf3\x66\x6d", regs(rdi=0x5004, rcx=3))
    assert mem.data[4:10] == bytes.fromhex("010102020303")
    assert (after.rdi, after.rcx, after.rip) == (0x500A, 0, 0x1003)
    assert dev.n == 3


def test_rep_outs_backwards_with_the_direction_flag() -> None:
    mem = Memory(0x5000, b"ABCDEFGH")
    after, dev, _ = run(b"\xf3\x6e", regs(rsi=0x5002, rcx=3, rflags=DF | 2), mem)
    assert [v for _, _, v in dev.writes] == [ord("C"), ord("B"), ord("A")]
    assert (after.rsi, after.rcx) == (0x4FFF, 0)


def test_ins_backwards_with_the_direction_flag() -> None:
    after, _, mem = run(b"\xf3\x6c", regs(rdi=0x5002, rcx=3, rflags=DF | 2))
    assert mem.data[0:4] == bytes([3, 2, 1, 0])
    assert after.rdi == 0x4FFF


def test_one_string_element_without_rep_leaves_rcx() -> None:
    mem = Memory(0x5000, b"\x34\x12")
    after, dev, _ = run(b"\x66\x6f", regs(rsi=0x5000, rcx=9), mem)
    assert dev.writes == [(0x3F2, 2, 0x1234)]
    assert (after.rsi, after.rcx, after.rip) == (0x5002, 9, 0x1002)


def test_address_size_32_uses_ecx_and_edi() -> None:
    after, _, mem = run(b"\x67\xf3\x6c", regs(rdi=0xFFFF_FFFF_0000_5000, rcx=(7 << 32) | 2))
    assert mem.data[0:3] == bytes([1, 2, 0])
    # 32-bit register writes zero the upper halves.
    assert (after.rdi, after.rcx) == (0x5002, 0)


def test_rep_with_a_zero_count_does_nothing() -> None:
    after, dev, _ = run(b"\xf3\x6e", regs(rsi=0x5000, rcx=0))
    assert dev.writes == [] and (after.rsi, after.rip) == (0x5000, 0x1002)


def test_a_long_rep_is_done_in_parts() -> None:
    mem = Memory(0x5000, bytes(MAX_ELEMENTS + 10))
    after, dev, _ = run(b"\xf3\x6e", regs(rsi=0x5000, rcx=MAX_ELEMENTS + 10), mem)
    assert len(dev.writes) == MAX_ELEMENTS
    assert (after.rcx, after.rip, after.rsi) == (10, 0x1000, 0x5000 + MAX_ELEMENTS)
    after, dev, _ = run(b"\xf3\x6e", after, mem)
    assert len(dev.writes) == 10 and (after.rcx, after.rip) == (0, 0x1002)


def test_unreadable_outs_source_faults_before_any_write() -> None:
    with pytest.raises(MemoryFault):
        run(b"\xf3\x6e", regs(rsi=0x9000, rcx=2))


def test_unknown_port_reads_all_ones() -> None:
    mem = Memory(0x5000, bytes(8))
    insn = decode(b"\xed")
    assert insn is not None
    events: list[str] = []
    after = emulate(insn, regs(rdx=0x1234), IoBus(on_event=events.append), mem.read, mem.write)
    assert after.rax == 0xFFFFFFFF and events == ["ioport unknown 0x1234"]


def test_permission_needs_every_port_of_the_access() -> None:
    io = ThreadIo(ports=1 << 0x80)
    assert io.may_access(0x80, 1)
    assert not io.may_access(0x80, 2)
    assert not io.may_access(0x7F, 2)
    assert ThreadIo(iopl=3).may_access(0xFFFF, 1)
    assert not ThreadIo(iopl=2).may_access(0x80, 1)
    clone = ThreadIo(ports=5, iopl=3, vif=False).copy()
    assert (clone.ports, clone.iopl, clone.vif, clone.held) == (5, 3, False, [])
