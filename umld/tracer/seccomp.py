"""Build the seccomp-bpf program that decides which syscalls stop.

The program is classic BPF over ``struct seccomp_data`` (seccomp(2)):
``nr`` at offset 0, ``arch`` at offset 4, ``instruction_pointer`` at 8 and
``args[6]`` (six u64, little-endian here) from offset 16.  Calls in the
trapped set return SECCOMP_RET_TRACE (a ptrace stop at entry); every other
call returns SECCOMP_RET_ALLOW and never leaves the kernel.

Each ABI has its own section, chosen by ``arch``: x86_64 and, when given,
i386 (``int 0x80`` from any process, or a 32-bit program).  Without an
i386 section every i386 call traps.  x32 calls (x86_64 arch, bit 30 set in
the number) always trap, as does any ABI this filter does not know: their
numbers mean other calls, and letting them through unseen would let a
guest step around the guest kernel.

A trapped number may carry argument tests (:class:`ArgTest`): the call
then traps only when one of its clauses holds, and runs natively, without
a stop, otherwise.  Lookup is a binary search over the intervals of the
number line, so a filter with a hundred trapped calls costs about seven
comparisons per syscall, the same order as libseccomp's binary-tree mode;
a number with tests is its own leaf of the search, where the tests run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, TypeAlias, TypeVar

# linux/filter.h, linux/bpf_common.h
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_JEQ, BPF_JGE, BPF_JSET, BPF_JA = 0x10, 0x30, 0x40, 0x00
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
_OFF_ARGS = 16  # args[i] at 16 + 8 * i: low word first (little-endian)
_SECCOMP_DATA = 64
_MAX_JUMP = 255  # jt/jf are 8-bit

_OPS = ("eq", "ne", "any")
M = TypeVar("M")  # what an interval of numbers does (search)
_OP_TEXT = {"eq": "==", "ne": "!=", "any": "&"}


class ArgTest(NamedTuple):
    """One test of a syscall argument, run in the filter.

    ``op``: ``eq`` (the argument equals ``value``), ``ne`` (differs) or
    ``any`` (has any bit of ``value`` set).  ``bits`` 32 compares the low
    word only: the C type is an ``int``, ``unsigned int``, ``mode_t`` or a
    flags word, whose upper half the kernel ignores (a guest may leave
    garbage there).  64 compares the whole register (a pointer).  In the
    i386 section every argument is 32 bits wide.  ``label`` names the
    value for ``umld syscalls`` (``TIOCSTI``).
    """

    arg: int
    op: str
    value: int
    bits: int = 32
    label: str = ""

    def holds(self, args: Sequence[int], *, wide: bool = True) -> bool:
        """Whether the test holds for ``args`` (as the filter decides)."""
        mask = 0xFFFFFFFFFFFFFFFF if self.bits == 64 and wide else 0xFFFFFFFF
        a, v = args[self.arg] & mask, self.value & mask
        if self.op == "eq":
            return a == v
        if self.op == "ne":
            return a != v
        return bool(a & v)

    def describe(self, names: Sequence[str] = ()) -> str:
        arg = names[self.arg] if self.arg < len(names) else f"arg{self.arg}"
        return f"{arg} {_OP_TEXT[self.op]} {self.label or hex(self.value)}"


class AllOf(NamedTuple):
    """A clause of several tests that must all hold."""

    tests: tuple[ArgTest, ...]

    def holds(self, args: Sequence[int], *, wide: bool = True) -> bool:
        return all(t.holds(args, wide=wide) for t in self.tests)

    def describe(self, names: Sequence[str] = ()) -> str:
        return " and ".join(t.describe(names) for t in self.tests)


Clause: TypeAlias = ArgTest | AllOf
#: The clauses of one trapped number; empty: it always traps.
Conditions: TypeAlias = tuple[Clause, ...]
#: What a section traps: numbers, or numbers with their conditions.
Rules: TypeAlias = Iterable[int] | Mapping[int, Conditions]


def conditions_hold(when: Conditions, args: Sequence[int], *, wide: bool = True) -> bool:
    """Whether a call with ``args`` traps under ``when`` (empty: always)."""
    return not when or any(c.holds(args, wide=wide) for c in when)


def _tests(clause: Clause) -> tuple[ArgTest, ...]:
    return clause.tests if isinstance(clause, AllOf) else (clause,)


Insn = tuple[int, int, int, int]


def _insn(code: int, jt: int, jf: int, k: int) -> Insn:
    return (code, jt, jf, k)


class Label:
    """A place in a program being assembled, a jump's target."""

    __slots__ = ()


Target = int | Label  # a relative offset, or a label placed later
Item = tuple[int, Target, Target, int] | Label


def assemble(items: list[Item]) -> list[Insn]:
    """Resolve labels into relative jumps (within a leaf: short ones);
    ValueError when a jump would be longer than BPF's 8 bits allow."""
    where: dict[Label, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, Label):
            where[item] = pc
        else:
            pc += 1
    out: list[Insn] = []
    for item in items:
        if isinstance(item, Label):
            continue
        code, jt, jf, k = item
        here = len(out)

        def rel(t: Target, here: int = here) -> int:
            off = where[t] - here - 1 if isinstance(t, Label) else t
            if not 0 <= off <= _MAX_JUMP:
                raise ValueError("argument tests too long for one leaf")
            return off

        out.append(_insn(code, rel(jt), rel(jf), k))
    return out


def _leaf(when: Conditions, *, wide: bool) -> list[Insn]:
    """Code returning TRACE when a clause of ``when`` holds, else ALLOW."""
    if not when:
        return [_insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE)]
    items: list[Item] = []
    ld = BPF_LD | BPF_W | BPF_ABS
    for clause in when:
        fail = Label()
        for t in _tests(clause):
            if t.op not in _OPS:
                raise ValueError(f"unknown argument test {t.op!r}")
            lo_off = _OFF_ARGS + 8 * t.arg
            lo, hi = t.value & 0xFFFFFFFF, (t.value >> 32) & 0xFFFFFFFF
            two = t.bits == 64 and wide
            passed = Label()
            if t.op == "eq":
                items += [(ld, 0, 0, lo_off), (BPF_JMP | BPF_JEQ | BPF_K, 0, fail, lo)]
                if two:
                    items += [(ld, 0, 0, lo_off + 4), (BPF_JMP | BPF_JEQ | BPF_K, 0, fail, hi)]
            elif t.op == "ne":
                if two:
                    items += [(ld, 0, 0, lo_off), (BPF_JMP | BPF_JEQ | BPF_K, 0, passed, lo)]
                    items += [(ld, 0, 0, lo_off + 4), (BPF_JMP | BPF_JEQ | BPF_K, fail, 0, hi)]
                else:
                    items += [(ld, 0, 0, lo_off), (BPF_JMP | BPF_JEQ | BPF_K, fail, 0, lo)]
            else:  # any bit
                if two and hi:
                    if lo:
                        items += [(ld, 0, 0, lo_off), (BPF_JMP | BPF_JSET | BPF_K, passed, 0, lo)]
                    items += [(ld, 0, 0, lo_off + 4), (BPF_JMP | BPF_JSET | BPF_K, 0, fail, hi)]
                else:
                    items += [(ld, 0, 0, lo_off), (BPF_JMP | BPF_JSET | BPF_K, 0, fail, lo)]
            items.append(passed)
        items += [(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE), fail]
    items.append((BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW))
    return assemble(items)


#: An interval's label: allow (False), trap (True) or trap on conditions.
_Mark = bool | Conditions


def search(intervals: Sequence[tuple[int, M]], leaf: Callable[[M], list[Insn]]) -> list[Insn]:
    """A binary search for nr (in A): ``intervals`` are (start, mark)
    pairs sorted by start, each running to the next start (the caller
    guarantees A lies within them), and the interval's code is what
    ``leaf`` gives for its mark.  (Also the OCI runtime's profiles':
    umld/oci/_seccomp.py.)"""
    if len(intervals) == 1:
        return leaf(intervals[0][1])
    mid = len(intervals) // 2
    left = search(intervals[:mid], leaf)
    right = search(intervals[mid:], leaf)
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


def _as_rules(rules: Rules) -> dict[int, Conditions]:
    if isinstance(rules, Mapping):
        return {int(n): tuple(c) for n, c in rules.items()}
    return {int(n): () for n in rules}


def _intervals(rules: Mapping[int, Conditions], *, x32: bool) -> list[tuple[int, _Mark]]:
    top = X32_SYSCALL_BIT if x32 else 1 << 32
    out: list[tuple[int, _Mark]] = [(0, False)]
    for n in sorted(n for n in rules if 0 <= n < top):
        label: _Mark = rules[n] or True
        if out[-1][0] == n:  # n follows the previous trapped number
            out[-1] = (n, label)
        else:
            out.append((n, label))
        if n + 1 < 1 << 32:
            out.append((n + 1, False))
    if x32:
        # The x32 range and anything above it (including nr == -1 seen as
        # 0xffffffff) traps.
        out.append((X32_SYSCALL_BIT, True))
    # Merge neighbours with the same plain label; a conditional number
    # stays its own interval.
    merged: list[tuple[int, _Mark]] = []
    for start, label in out:
        if merged and merged[-1][0] == start:
            merged[-1] = (start, label)
        elif merged and isinstance(label, bool) and merged[-1][1] is label:
            continue
        else:
            merged.append((start, label))
    return merged


def _section(rules: Rules, *, x32: bool, wide: bool) -> list[Insn]:
    def leaf(label: _Mark) -> list[Insn]:
        if isinstance(label, bool):
            ret = SECCOMP_RET_TRACE if label else SECCOMP_RET_ALLOW
            return [_insn(BPF_RET | BPF_K, 0, 0, ret)]
        return _leaf(label, wide=wide)

    return [
        _insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _OFF_NR),
        *search(_intervals(_as_rules(rules), x32=x32), leaf),
    ]


def build_filter(trapped: Rules, *, i386: Rules | None = None, trace_all: bool = False) -> bytes:
    """The BPF program, as the bytes of a ``struct sock_filter`` array.

    ``trapped`` (x86_64) and ``i386`` are the numbers that stop, each
    optionally with its conditions; ``i386`` None traps every i386 call.
    ``trace_all`` makes every call stop (the full-trace mode)."""
    ret_trace = _insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE)
    if trace_all:
        x86: list[Insn] = [ret_trace]
        ia32: list[Insn] = [ret_trace]
    else:
        x86 = _section(trapped, x32=True, wide=True)
        ia32 = [ret_trace] if i386 is None else _section(i386, x32=False, wide=False)
    jeq = BPF_JMP | BPF_JEQ | BPF_K
    prog: list[Insn] = [
        _insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _OFF_ARCH),
        _insn(jeq, 0, 1, AUDIT_ARCH_X86_64),
        _insn(BPF_JMP | BPF_JA, 0, 0, 3),  # -> x86
        _insn(jeq, 0, 1, AUDIT_ARCH_I386),
        _insn(BPF_JMP | BPF_JA, 0, 0, 1 + len(x86)),  # -> i386
        ret_trace,  # an ABI this filter does not know
        *x86,
        *ia32,
    ]
    return b"".join(struct.pack("=HBBI", *i) for i in prog)


def seccomp_data(nr: int, arch: int, ip: int = 0, args: Sequence[int] = (0,) * 6) -> bytes:
    """``struct seccomp_data`` (linux/seccomp.h) for one call."""
    data = bytearray(_SECCOMP_DATA)
    struct.pack_into("=IIQ", data, 0, nr & 0xFFFFFFFF, arch, ip & 0xFFFFFFFFFFFFFFFF)
    for i, value in enumerate(args[:6]):
        struct.pack_into("=Q", data, _OFF_ARGS + 8 * i, value & 0xFFFFFFFFFFFFFFFF)
    return bytes(data)


_U32 = 0xFFFFFFFF


def run_bpf(program: bytes, data: bytes) -> int:
    """Run a classic BPF ``program`` (struct sock_filter array) over
    ``data`` (a seccomp_data) as the kernel's seccomp does, and return
    what it returns.  Every instruction seccomp accepts
    (seccomp_check_filter in kernel/seccomp.c): loads of the data, its
    length, immediates and scratch memory, stores, 32-bit ALU operations,
    jumps, returns and the register moves.  A program the kernel would
    have refused raises ValueError."""
    n = len(program) // 8
    insns = [struct.unpack_from("=HBBI", program, 8 * i) for i in range(n)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    while 0 <= pc < n:
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        pc += 1
        if cls in (0x00, 0x01):  # LD, LDX
            mode = code & 0xE0
            if mode == 0x20 and cls == 0x00:  # ABS: only 32-bit words of the data
                if code & 0x18 or k % 4 or k + 4 > len(data):
                    raise ValueError(f"seccomp: bad load at {k}")
                (v,) = struct.unpack_from("=I", data, k)
            elif mode == 0x00:  # IMM
                v = k
            elif mode == 0x80:  # LEN
                v = len(data)
            elif mode == 0x60:  # MEM
                v = mem[k & 15]
            else:
                raise ValueError(f"seccomp: bad load {code:#x}")
            if cls == 0x00:
                a = v
            else:
                x = v
        elif cls == 0x02:  # ST
            mem[k & 15] = a
        elif cls == 0x03:  # STX
            mem[k & 15] = x
        elif cls == 0x04:  # ALU
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                a = (a + src) & _U32
            elif op == 0x10:
                a = (a - src) & _U32
            elif op == 0x20:
                a = (a * src) & _U32
            elif op == 0x30:
                if src == 0:
                    return 0  # division by zero ends the program with 0
                a = a // src
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & _U32 if src < 32 else 0
            elif op == 0x70:
                a = a >> src if src < 32 else 0
            elif op == 0x80:
                a = -a & _U32
            elif op == 0x90:
                if src == 0:
                    return 0
                a = a % src
            elif op == 0xA0:
                a ^= src
            else:
                raise ValueError(f"seccomp: bad ALU op {code:#x}")
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                pc += k
            elif op == 0x10:
                pc += jt if a == src else jf
            elif op == 0x20:
                pc += jt if a > src else jf
            elif op == 0x30:
                pc += jt if a >= src else jf
            elif op == 0x40:
                pc += jt if a & src else jf
            else:
                raise ValueError(f"seccomp: bad jump {code:#x}")
        elif cls == 0x06:  # RET
            return int(a if code & 0x18 == 0x10 else k)
        else:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            elif code & 0xF8 == 0x80:
                a = x
            else:
                raise ValueError(f"seccomp: bad misc {code:#x}")
    raise ValueError("seccomp: the program ran off its end")


def evaluate(
    program: bytes,
    nr: int,
    arch: int = AUDIT_ARCH_X86_64,
    args: Sequence[int] = (0, 0, 0, 0, 0, 0),
) -> int:
    """Run ``program`` on (nr, arch, args) the way the kernel would;
    returns the action.  Used by tests and by ``umld syscalls --check``."""
    return run_bpf(program, seccomp_data(nr, arch, 0, args))
