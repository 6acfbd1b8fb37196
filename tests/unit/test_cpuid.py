"""The leaves a guest's CPUID gets with ``cpuid = own`` (no tracer):
privileged.cpuid_values over a fake host CPU, decode of 0F A2, and the
registers emulate_cpuid writes."""

from __future__ import annotations

from umld.core.privileged import Op, cpuid_values, decode, emulate_cpuid
from umld.tracer.platform import Regs

#: A host: 2 threads per core, 8 logical processors, max basic leaf 0x1f,
#: running under KVM.
HOST = {
    (0, 0): (0x1F, 0x756E6547, 0x6C65746E, 0x49656E69),
    (1, 0): (0x906EA, 0x00080800, 0x7FFAFBBF, 0xBFEBFBFF),
    (0xB, 0): (1, 2, 0x100, 3),
    (0xB, 1): (4, 8, 0x201, 3),
    (0xB, 2): (0, 0, 2, 3),
    (0x1F, 1): (4, 8, 0x201, 3),
    (0x1F, 2): (5, 8, 0x502, 3),
    (0x40000000, 0): (0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
    (7, 0): (0, 0x29C67AF, 0, 0),
}


def host(leaf: int, sub: int) -> tuple[int, int, int, int]:
    return HOST.get((leaf, sub), (0, 0, 0, 0))


def test_leaf_1_counts_the_vcpus_and_sets_the_hypervisor_bit() -> None:
    eax, ebx, ecx, edx = cpuid_values(1, 0, 6, host)
    assert (ebx >> 16) & 0xFF == 6
    assert ebx & 0xFF00FFFF == 0x00000800
    assert ecx == 0x7FFAFBBF | 1 << 31
    assert (eax, edx) == (0x906EA, 0xBFEBFBFF)
    assert (cpuid_values(1, 0, 1000, host)[1] >> 16) & 0xFF == 255


def test_topology_leaves_count_the_vcpus_above_the_smt_level() -> None:
    for leaf in (0xB, 0x1F):
        smt = cpuid_values(leaf, 0, 6, host) if leaf == 0xB else None
        if smt is not None:
            assert smt[1] & 0xFFFF == 1 and smt[0] & 0x1F == 0
        core = cpuid_values(leaf, 1, 6, host)
        assert core[1] & 0xFFFF == 6 and core[0] & 0x1F == 3
        assert core[2:] == HOST[(leaf, 1)][2:]  # level type and x2APIC id
    die = cpuid_values(0x1F, 2, 6, host)
    assert die[1] == 6 and die[2] == 0x502
    # An invalid level (type 0) stays the host's.
    assert cpuid_values(0xB, 2, 6, host) == HOST[(0xB, 2)]


def test_the_hypervisor_is_umld() -> None:
    eax, ebx, ecx, edx = cpuid_values(0x40000000, 0, 6, host)
    assert eax == 0x40000000
    sig = b"".join(r.to_bytes(4, "little") for r in (ebx, ecx, edx))
    assert sig == b"umldumldumld"
    # The host's own hypervisor's leaves do not show through.
    assert cpuid_values(0x40000001, 0, 6, host) == (0, 0, 0, 0)


def test_everything_else_is_the_hosts() -> None:
    for key in [(0, 0), (7, 0), (0x80000000, 0)]:
        assert cpuid_values(*key, 6, host) == host(*key)
    # Only the low 32 bits of rax and rcx choose the leaf (SDM: eax, ecx).
    assert cpuid_values(1 << 32 | 7, 1 << 40, 6, host) == host(7, 0)


def test_decode_cpuid() -> None:
    insn = decode(b"\x0f\xa2\x90")
    assert insn is not None and insn.op is Op.CPUID and insn.length == 2
    insn = decode(b"\x48\x0f\xa2")
    assert insn is not None and insn.op is Op.CPUID and insn.length == 3
    assert decode(b"\x0f\x05") is None  # syscall
    assert decode(b"\x0f") is None


def test_emulate_writes_32_bit_registers_and_moves_rip() -> None:
    regs = Regs(*([0] * 27))._replace(
        rax=0xFFFF_FFFF_4000_0000,
        rbx=-1 & (1 << 64) - 1,
        rcx=0xDEAD_0000_0000_0000,
        rdx=1 << 63,
        rip=0x1000,
    )
    after = emulate_cpuid(regs, 2, 6)
    sig = b"umldumldumld"
    assert after.rax == 0x40000000
    assert (after.rbx, after.rcx, after.rdx) == tuple(
        int.from_bytes(sig[i : i + 4], "little") for i in (0, 4, 8)
    )
    assert after.rip == 0x1002
