"""Build the seccomp-bpf program that decides which syscalls stop.

The program is classic BPF over ``struct seccomp_data`` (seccomp(2)):
``nr`` at offset 0, ``arch`` at offset 4.  Calls in the trapped set return
SECCOMP_RET_TRACE (a ptrace stop at entry); every other call returns
SECCOMP_RET_ALLOW and never leaves the kernel.

Calls from another ABI (i386 through int 0x80, x32 with bit 30 set in the
number) always trap: their numbers mean other calls, and letting them
through unseen would let a guest step around the guest kernel.

Lookup is a binary search over the intervals of the number line, so a
filter with a hundred trapped calls costs about seven comparisons per
syscall, the same order as libseccomp's binary-tree mode.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

# linux/filter.h, linux/bpf_common.h
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_JEQ, BPF_JGE, BPF_JA = 0x10, 0x30, 0x00
BPF_K = 0x00

# linux/seccomp.h
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000

# linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

_OFF_NR = 0
_OFF_ARCH = 4
_MAX_JUMP = 255  # jt/jf are 8-bit


def _insn(code: int, jt: int, jf: int, k: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


Insn = tuple[int, int, int, int]


def _search(intervals: list[tuple[int, bool]]) -> list[Insn]:
    """Code that returns TRACE or ALLOW for nr (in A) given ``intervals``:
    (start, trapped) pairs sorted by start, each running to the next start;
    the caller guarantees A lies within them."""
    if len(intervals) == 1:
        ret = SECCOMP_RET_TRACE if intervals[0][1] else SECCOMP_RET_ALLOW
        return [_insn(BPF_RET | BPF_K, 0, 0, ret)]
    mid = len(intervals) // 2
    left = _search(intervals[:mid])
    right = _search(intervals[mid:])
    split = intervals[mid][0]
    if len(left) <= _MAX_JUMP:
        # A >= split -> skip the left subtree.
        return [_insn(BPF_JMP | BPF_JGE | BPF_K, len(left), 0, split), *left, *right]
    # Too far for an 8-bit offset: go through a 32-bit BPF_JA.
    return [
        _insn(BPF_JMP | BPF_JGE | BPF_K, 0, 1, split),
        _insn(BPF_JMP | BPF_JA, 0, 0, len(left)),
        *left,
        *right,
    ]


def _intervals(trapped: Iterable[int]) -> list[tuple[int, bool]]:
    nrs = sorted({n for n in trapped if 0 <= n < X32_SYSCALL_BIT})
    out: list[tuple[int, bool]] = [(0, False)]
    for n in nrs:
        if out[-1][0] == n:  # n follows the previous trapped number
            out[-1] = (n, True)
        else:
            out.append((n, True))
        out.append((n + 1, False))
    # Merge neighbours with the same label, then trap the x32 range and
    # anything above it (including nr == -1 seen as 0xffffffff).
    out.append((X32_SYSCALL_BIT, True))
    merged: list[tuple[int, bool]] = []
    for start, trap in out:
        if merged and merged[-1][0] == start:
            merged[-1] = (start, trap)
        elif merged and merged[-1][1] == trap:
            continue
        else:
            merged.append((start, trap))
    return merged


def build_filter(trapped: Iterable[int], *, trace_all: bool = False) -> bytes:
    """The BPF program, as the bytes of a ``struct sock_filter`` array.

    ``trace_all`` makes every call stop (the full-trace mode)."""
    prog: list[Insn] = [
        _insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _OFF_ARCH),
        # A foreign ABI traps whatever its number.
        _insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE),
    ]
    if trace_all:
        prog.append(_insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE))
    else:
        prog.append(_insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _OFF_NR))
        prog.extend(_search(_intervals(trapped)))
    return b"".join(struct.pack("=HBBI", *i) for i in prog)


def evaluate(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """Run ``program`` on (nr, arch) the way the kernel would; returns the
    action.  A small interpreter for the instructions ``build_filter``
    emits, used by tests and by ``umld syscalls --check``."""
    insns = [struct.unpack_from("=HBBI", program, off) for off in range(0, len(program), 8)]
    a = 0
    pc = 0
    data = {_OFF_NR: nr & 0xFFFFFFFF, _OFF_ARCH: arch}
    while True:
        code, jt, jf, k = insns[pc]
        if code == BPF_LD | BPF_W | BPF_ABS:
            a = data[k]
            pc += 1
        elif code == BPF_JMP | BPF_JEQ | BPF_K:
            pc += 1 + (jt if a == k else jf)
        elif code == BPF_JMP | BPF_JGE | BPF_K:
            pc += 1 + (jt if a >= k else jf)
        elif code == BPF_JMP | BPF_JA:
            pc += 1 + k
        elif code == BPF_RET | BPF_K:
            return int(k)
        else:
            raise ValueError(f"unexpected BPF instruction {code:#x}")
