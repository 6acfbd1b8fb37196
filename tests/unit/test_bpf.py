"""The classic BPF interpreter of seccomp filters (umld/tracer/seccomp.py
run_bpf), which the guest kernel runs over the filters a guest installs
itself: every instruction class seccomp accepts, on hand-assembled
programs, and the refusals."""

from __future__ import annotations

import struct

import pytest

from umld.tracer.seccomp import AUDIT_ARCH_X86_64, run_bpf, seccomp_data


def prog(*insns: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


LD_NR = (0x20, 0, 0, 0)  # BPF_LD|BPF_W|BPF_ABS nr
RET_A = (0x16, 0, 0, 0)  # BPF_RET|BPF_A
DATA = seccomp_data(39, AUDIT_ARCH_X86_64, 0x1234, (5, 6, 7, 8, 9, 10))


def test_seccomp_data_layout() -> None:
    assert len(DATA) == 64
    assert struct.unpack_from("=IIQ", DATA) == (39, AUDIT_ARCH_X86_64, 0x1234)
    assert struct.unpack_from("=6Q", DATA, 16) == (5, 6, 7, 8, 9, 10)


@pytest.mark.parametrize(
    ("op", "k", "want"),
    [
        (0x00, 3, 42),  # ADD
        (0x10, 9, 30),  # SUB
        (0x20, 2, 78),  # MUL
        (0x30, 4, 9),  # DIV
        (0x40, 0x100, 0x127),  # OR
        (0x50, 0x7, 7),  # AND
        (0x60, 2, 156),  # LSH
        (0x70, 1, 19),  # RSH
        (0x90, 5, 4),  # MOD
        (0xA0, 0xFF, 39 ^ 0xFF),  # XOR
    ],
)
def test_alu_with_a_constant_and_with_x(op: int, k: int, want: int) -> None:
    assert run_bpf(prog(LD_NR, (0x04 | op, 0, 0, k), RET_A), DATA) == want
    with_x = prog((0x01, 0, 0, k), LD_NR, (0x0C | op, 0, 0, 0), RET_A)  # LDX IMM; ALU X
    assert run_bpf(with_x, DATA) == want


def test_neg_and_the_32_bit_wrap() -> None:
    assert run_bpf(prog(LD_NR, (0x84, 0, 0, 0), RET_A), DATA) == (-39) & 0xFFFFFFFF
    assert run_bpf(prog(LD_NR, (0x24, 0, 0, 0x10000000), RET_A), DATA) == (39 << 28) & 0xFFFFFFFF


def test_division_by_zero_returns_zero() -> None:
    assert run_bpf(prog(LD_NR, (0x34, 0, 0, 0), RET_A), DATA) == 0


@pytest.mark.parametrize(
    ("op", "k", "taken"),
    [
        (0x10, 39, True),
        (0x10, 40, False),
        (0x20, 38, True),
        (0x20, 39, False),
        (0x30, 39, True),
        (0x30, 40, False),
        (0x40, 0x4, True),
        (0x40, 0x10, False),
    ],
)
def test_conditional_jumps(op: int, k: int, taken: bool) -> None:
    p = prog(LD_NR, (0x05 | op, 0, 1, k), (0x06, 0, 0, 1), (0x06, 0, 0, 2))
    assert run_bpf(p, DATA) == (1 if taken else 2)


def test_jump_always_scratch_memory_and_moves() -> None:
    p = prog(
        LD_NR,
        (0x02, 0, 0, 3),  # ST M[3]
        (0x00, 0, 0, 5),  # LD IMM 5
        (0x07, 0, 0, 0),  # TAX
        (0x60, 0, 0, 3),  # LD MEM M[3]
        (0x05, 0, 0, 1),  # JA +1
        (0x06, 0, 0, 99),
        (0x0C, 0, 0, 0),  # ADD X
        (0x02, 0, 0, 4),  # ST M[4]
        (0x03, 0, 0, 5),  # STX M[5]
        (0x61, 0, 0, 4),  # LDX MEM M[4]
        (0x60, 0, 0, 5),  # LD MEM M[5]: 5
        (0x0C, 0, 0, 0),  # ADD X: 5 + 44
        RET_A,
    )
    assert run_bpf(p, DATA) == 49


def test_loads_of_args_ip_and_length() -> None:
    assert run_bpf(prog((0x20, 0, 0, 16 + 8 * 2), RET_A), DATA) == 7
    assert run_bpf(prog((0x20, 0, 0, 8), RET_A), DATA) == 0x1234
    assert run_bpf(prog((0x80, 0, 0, 0), RET_A), DATA) == 64  # BPF_LD|BPF_LEN
    assert run_bpf(prog((0x81, 0, 0, 0), (0x87, 0, 0, 0), RET_A), DATA) == 64


@pytest.mark.parametrize(
    "bad",
    [
        prog((0x20, 0, 0, 2), RET_A),  # unaligned
        prog((0x20, 0, 0, 64), RET_A),  # past the data
        prog((0x28, 0, 0, 0), RET_A),  # a half-word load
        prog(LD_NR),  # runs off its end
        prog((0x40, 0, 0, 0), RET_A),  # BPF_IND
    ],
)
def test_what_the_kernel_refuses_raises(bad: bytes) -> None:
    with pytest.raises(ValueError):
        run_bpf(bad, DATA)
