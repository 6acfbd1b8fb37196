"""An OCI bundle's ``linux.seccomp`` as a seccomp-bpf program of its own.

An engine's profile (podman's and Docker's default, or the user's)
limits the kernel's surface a container reaches: a call it denies fails
with its errno, or kills, without reaching the kernel's code.  runc hands
the profile to libseccomp; umld compiles it here, into classic BPF over
``struct seccomp_data`` (seccomp(2)), and the container's process
installs it just before it runs the program (sandbox.c, ``seccomp``
operation), as runc's init does.

The profile's filter *stacks* on umld's own (the one that stops the calls
the guest kernel handles).  The kernel runs every filter of a thread and
takes the action of highest precedence (seccomp(2), "Filter return
values": KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, USER_NOTIF, TRACE, LOG,
ALLOW).  So a call the profile denies fails with the profile's answer and
never stops at umld (as under runc, it never reaches a kernel); a call it
allows stops at umld exactly when umld's filter says so.  What cannot be
honoured that way is refused before the container is made:
``SCMP_ACT_TRACE`` (umld is the guest's tracer: the stops would be its
own) and ``SCMP_ACT_NOTIFY`` / ``listenerPath`` (no seccomp agent).

The program: the architecture first (x86_64 and, when the profile names
``SCMP_ARCH_X86``, i386; another ABI takes KILL_THREAD, libseccomp's
default for an architecture a filter lacks), then a binary search over
the numbers the profile names, each number's rules tried in order (the
comparisons of a rule must all hold; the first rule that holds decides),
the default action where none does.  x32 calls (bit 30 of the number)
take the default action when the profile names ``SCMP_ARCH_X32``, else
KILL_THREAD.  Names this kernel's tables do not know are left out, as
runc leaves them out.  Comparisons are libseccomp's: unsigned, on the
whole 64-bit argument on x86_64 and on its 32 bits on i386;
``SCMP_CMP_MASKED_EQ`` compares ``arg & value`` with ``valueTwo``.
:func:`decide` states the same semantics in Python, for the tests.
"""

from __future__ import annotations

import errno as errnos
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    BPF_ABS,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_RET,
    BPF_W,
    SECCOMP_RET_ALLOW,
    X32_SYSCALL_BIT,
    Insn,
    Item,
    Label,
    assemble,
    search,
)

# linux/seccomp.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4

# linux/filter.h: what the comparisons need beyond tracer/seccomp's.
BPF_ALU, BPF_AND, BPF_JGT = 0x04, 0x50, 0x20
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16
#: BPF_MAXINSNS: the longest program the kernel takes.
MAX_INSNS = 4096

ACTIONS = {
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
}
REFUSED_ACTIONS = {
    "SCMP_ACT_TRACE": "umld is the container's tracer, so its stops would be umld's own",
    "SCMP_ACT_NOTIFY": "umld has no seccomp agent to answer them",
}
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")  # fmt: skip
ARCHES = {"SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X86": "i386", "SCMP_ARCH_X32": "x32"}
FLAGS = {
    "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FILTER_FLAG_SPEC_ALLOW,
}
_U32, _U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


class ProfileError(ValueError):
    """What in a profile cannot be honoured; the message says where."""


class Cond(NamedTuple):
    """One comparison of a rule: argument ``arg`` against ``value``
    (MASKED_EQ: ``arg & value == value_two``)."""

    arg: int
    op: str
    value: int
    value_two: int = 0

    def holds(self, args: Sequence[int], *, wide: bool) -> bool:
        mask = _U64 if wide else _U32
        a, v = args[self.arg] & mask, self.value & mask
        if self.op == "SCMP_CMP_MASKED_EQ":
            return a & v == self.value_two & mask
        return {
            "SCMP_CMP_NE": a != v, "SCMP_CMP_LT": a < v, "SCMP_CMP_LE": a <= v,
            "SCMP_CMP_EQ": a == v, "SCMP_CMP_GE": a >= v, "SCMP_CMP_GT": a > v,
        }[self.op]  # fmt: skip


class Rule(NamedTuple):
    """What a call gets (a seccomp return value) when all ``conds`` hold."""

    ret: int
    conds: tuple[Cond, ...]


class Profile(NamedTuple):
    default: int
    arches: frozenset[str]
    #: Per ABI ("x86_64", "i386"): number -> its rules, in order.
    rules: Mapping[str, Mapping[int, tuple[Rule, ...]]]
    flags: int


def _action(name: object, errno_ret: object, where: str) -> int:
    if not isinstance(name, str):
        raise ProfileError(f"{where}: an action name, not {name!r}")
    if name in REFUSED_ACTIONS:
        raise ProfileError(f"{where} {name}: not supported ({REFUSED_ACTIONS[name]})")
    if name not in ACTIONS:
        raise ProfileError(f"{where}: unknown action {name!r}")
    ret = ACTIONS[name]
    if ret == SECCOMP_RET_ERRNO:
        value = errnos.EPERM if errno_ret is None else errno_ret
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            raise ProfileError(f"{where}: errnoRet {value!r} is not an errno")
        ret |= value
    return ret


def _number(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise ProfileError(f"{where}: {value!r} is not an unsigned 64-bit number")
    return value


def parse(data: Mapping[str, Any]) -> Profile:
    """``linux.seccomp`` read into a :class:`Profile` (raises
    :class:`ProfileError`)."""
    from umld.core.syscalls import lookup_table

    where = "linux.seccomp"
    if data.get("listenerPath"):
        raise ProfileError(f"{where}.listenerPath: not supported (umld has no seccomp agent)")
    default = _action(data.get("defaultAction"), data.get("defaultErrnoRet"),
                      f"{where}.defaultAction")  # fmt: skip
    arches = set()
    for arch in data.get("architectures") or ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86",
                                              "SCMP_ARCH_X32"]:  # fmt: skip
        if arch not in ARCHES:
            # Another machine's ABI: no call of this host's is made in it.
            continue
        arches.add(ARCHES[arch])
    flags = 0
    for flag in data.get("flags") or []:
        if flag not in FLAGS:
            raise ProfileError(f"{where}.flags: {flag!r} is not supported")
        flags |= FLAGS[flag]
    tables = {abi: lookup_table(abi) for abi in ("x86_64", "i386")}
    rules: dict[str, dict[int, list[Rule]]] = {abi: {} for abi in tables}
    for k, item in enumerate(data.get("syscalls") or []):
        at = f"{where}.syscalls[{k}]"
        if not isinstance(item, Mapping):
            raise ProfileError(f"{at}: not an object")
        ret = _action(item.get("action"), item.get("errnoRet"), f"{at}.action")
        conds = []
        for j, arg in enumerate(item.get("args") or []):
            if not isinstance(arg, Mapping):
                raise ProfileError(f"{at}.args[{j}]: not an object")
            index = arg.get("index")
            if not isinstance(index, int) or not 0 <= index <= 5:
                raise ProfileError(f"{at}.args[{j}].index: 0 to 5, not {index!r}")
            if arg.get("op") not in OPS:
                raise ProfileError(f"{at}.args[{j}].op: unknown {arg.get('op')!r}")
            conds.append(Cond(index, arg["op"], _number(arg.get("value", 0), f"{at}.args[{j}]"),
                              _number(arg.get("valueTwo", 0), f"{at}.args[{j}]")))  # fmt: skip
        if ret == default and not conds:
            continue  # what the default does anyway (libseccomp refuses such a rule)
        names = item.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProfileError(f"{at}.names: a list of names")
        for name in names:
            for abi, table in tables.items():
                row = table.find(name)
                if row is not None:
                    rules[abi].setdefault(row.nr, []).append(Rule(ret, tuple(conds)))
    frozen = {abi: {nr: tuple(r) for nr, r in by_nr.items()} for abi, by_nr in rules.items()}
    return Profile(default, frozenset(arches), frozen, flags)


def decide(profile: Profile, arch: int, nr: int, args: Sequence[int]) -> int:
    """What the compiled program returns for a call (the semantics, stated
    once in Python for the tests)."""
    if arch == AUDIT_ARCH_X86_64 and "x86_64" in profile.arches:
        if nr & X32_SYSCALL_BIT:
            return profile.default if "x32" in profile.arches else SECCOMP_RET_KILL_THREAD
        abi, wide = "x86_64", True
    elif arch == AUDIT_ARCH_I386 and "i386" in profile.arches:
        abi, wide = "i386", False
    else:
        return SECCOMP_RET_KILL_THREAD
    for rule in profile.rules[abi].get(nr, ()):
        if all(c.holds(args, wide=wide) for c in rule.conds):
            return rule.ret
    return profile.default


# -- the program ---------------------------------------------------------------------

_LD = BPF_LD | BPF_W | BPF_ABS


def _ret(value: int) -> Insn:
    return (BPF_RET | BPF_K, 0, 0, value)


def _assemble(items: list[Item]) -> list[Insn]:
    try:
        return assemble(items)
    except ValueError:
        raise ProfileError("linux.seccomp: a call's rules are too long to compile") from None


def _compare(c: Cond, ok: Label, fail: Label, *, wide: bool) -> list[Item]:
    """Code that goes to ``ok`` when ``c`` holds, to ``fail`` when not."""
    jeq, jgt, jge = BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JGT | BPF_K, BPF_JMP | BPF_JGE | BPF_K
    lo_off = _OFF_ARGS + 8 * c.arg
    v_lo, v_hi = c.value & _U32, (c.value >> 32) & _U32
    d_lo, d_hi = c.value_two & _U32, (c.value_two >> 32) & _U32
    and_k = BPF_ALU | BPF_AND | BPF_K
    out: list[Item] = []
    low = Label()
    # The high word decides unless it equals; then the low word does.
    # (On i386 only the low word counts: the program starts at ``low``.)
    hi_equal: list[Item]
    if c.op == "SCMP_CMP_MASKED_EQ":
        if wide:
            out += [(_LD, 0, 0, lo_off + 4), (and_k, 0, 0, v_hi), (jeq, low, fail, d_hi)]
        out += [low, (_LD, 0, 0, lo_off), (and_k, 0, 0, v_lo), (jeq, ok, fail, d_lo)]
        return out
    first_true, first_false = {
        # op: (high word above: the result, high word below: the result)
        "SCMP_CMP_EQ": (fail, fail), "SCMP_CMP_NE": (ok, ok),
        "SCMP_CMP_GT": (ok, fail), "SCMP_CMP_GE": (ok, fail),
        "SCMP_CMP_LT": (fail, ok), "SCMP_CMP_LE": (fail, ok),
    }[c.op]  # fmt: skip
    if wide:
        out += [(_LD, 0, 0, lo_off + 4), (jgt, first_true, 0, v_hi),
                (jeq, low, first_false, v_hi)]  # fmt: skip
    hi_equal = [low, (_LD, 0, 0, lo_off)]
    if c.op == "SCMP_CMP_EQ":
        hi_equal.append((jeq, ok, fail, v_lo))
    elif c.op == "SCMP_CMP_NE":
        hi_equal.append((jeq, fail, ok, v_lo))
    elif c.op == "SCMP_CMP_GT":
        hi_equal.append((jgt, ok, fail, v_lo))
    elif c.op == "SCMP_CMP_GE":
        hi_equal.append((jge, ok, fail, v_lo))
    elif c.op == "SCMP_CMP_LT":
        hi_equal.append((jge, fail, ok, v_lo))
    else:  # LE
        hi_equal.append((jgt, fail, ok, v_lo))
    return out + hi_equal


def _leaf(rules: tuple[Rule, ...], default: int, *, wide: bool) -> list[Insn]:
    items: list[Item] = []
    for rule in rules:
        fail = Label()
        for c in rule.conds:
            ok = Label()
            items += [*_compare(c, ok, fail, wide=wide), ok]
        items += [_ret(rule.ret), fail]
    items.append(_ret(default))
    return _assemble(items)


#: What an interval of numbers does: their rules (None: the default).
_Mark = tuple[Rule, ...] | None


def _section(profile: Profile, abi: str, *, wide: bool) -> list[Insn]:
    by_nr = profile.rules[abi]
    intervals: list[tuple[int, _Mark]] = [(0, None)]
    for nr in sorted(by_nr):
        if intervals[-1][0] == nr:
            intervals[-1] = (nr, by_nr[nr])
        else:
            intervals.append((nr, by_nr[nr]))
        intervals.append((nr + 1, None))
    # Neighbours that do the same are one interval (an allow-list's run of
    # allowed numbers is one leaf, not one per number).
    merged: list[tuple[int, _Mark]] = []
    for start, mark in intervals:
        if merged and merged[-1][0] == start:
            merged[-1] = (start, mark)
        elif not merged or merged[-1][1] != mark:
            merged.append((start, mark))
    code: list[Insn] = [(_LD, 0, 0, _OFF_NR)]
    if wide:
        # x32 numbers (and above, -1 included) are not x86_64's.
        x32 = profile.default if "x32" in profile.arches else SECCOMP_RET_KILL_THREAD
        code += [(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT), _ret(x32)]

    def leaf(rules: _Mark) -> list[Insn]:
        if rules is None:
            return [_ret(profile.default)]
        return _leaf(rules, profile.default, wide=wide)

    return code + search(merged, leaf)


def compile_profile(profile: Profile) -> bytes:
    """The program, as the bytes of a ``struct sock_filter`` array."""
    kill = _ret(SECCOMP_RET_KILL_THREAD)
    x86 = _section(profile, "x86_64", wide=True) if "x86_64" in profile.arches else [kill]
    ia32 = _section(profile, "i386", wide=False) if "i386" in profile.arches else [kill]
    jeq = BPF_JMP | BPF_JEQ | BPF_K
    prog: list[Insn] = [
        (_LD, 0, 0, _OFF_ARCH),
        (jeq, 0, 1, AUDIT_ARCH_X86_64),
        (BPF_JMP | BPF_JA, 0, 0, 3),  # -> x86_64
        (jeq, 0, 1, AUDIT_ARCH_I386),
        (BPF_JMP | BPF_JA, 0, 0, 1 + len(x86)),  # -> i386
        kill,  # an ABI the profile does not name
        *x86,
        *ia32,
    ]
    if len(prog) > MAX_INSNS:
        raise ProfileError(f"linux.seccomp: {len(prog)} instructions, past the kernel's 4096")
    return b"".join(struct.pack("=HBBI", *i) for i in prog)
