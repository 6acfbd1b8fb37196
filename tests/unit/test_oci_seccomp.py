"""The OCI seccomp compiler: every program it makes returns, for every
call, what :func:`decide` says the profile means (run through the same
BPF interpreter as umld's own filter's tests), and what cannot be
honoured is refused in one line."""

from __future__ import annotations

import random
from typing import Any

import pytest

from umld.oci import _seccomp as S
from umld.tracer.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    X32_SYSCALL_BIT,
    run_bpf,
    seccomp_data,
)

EPERM_RET = S.SECCOMP_RET_ERRNO | 1


def _agree(profile: S.Profile, calls: list[tuple[int, int, list[int]]]) -> None:
    program = S.compile_profile(profile)
    for arch, nr, args in calls:
        got = run_bpf(program, seccomp_data(nr, arch, 0, args))
        assert got == S.decide(profile, arch, nr, args), (arch, nr, [hex(a) for a in args])


def test_podman_like_profile() -> None:
    """An allow-list with an ERRNO default and argument rules of the
    kinds podman's default profile has (personality values, clone flags
    masked, socket families)."""
    data: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write", "openat", "close", "exit_group", "no_such_call"],
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 1, "op": "SCMP_CMP_GT"}]},
        ],
    }  # fmt: skip
    profile = S.parse(data)
    assert profile.default == S.SECCOMP_RET_ERRNO | 38
    x = AUDIT_ARCH_X86_64
    calls = [
        (x, 0, [0] * 6), (x, 1, [0] * 6), (x, 257, [0] * 6), (x, 83, [0] * 6),
        (x, 135, [0] + [0] * 5), (x, 135, [0xFFFFFFFF] + [0] * 5), (x, 135, [8] + [0] * 5),
        (x, 135, [0xFFFFFFFF_FFFFFFFF] + [0] * 5),
        (x, 56, [0x11] + [0] * 5), (x, 56, [0x10000000] + [0] * 5),
        (x, 41, [40] + [0] * 5), (x, 41, [2] + [0] * 5), (x, 41, [(1 << 32) | 40] + [0] * 5),
        (x, 62, [5, 9, 0, 0, 0, 0]), (x, 62, [1, 9, 0, 0, 0, 0]), (x, 62, [5, 15, 0, 0, 0, 0]),
        (x, X32_SYSCALL_BIT | 0, [0] * 6), (x, 0xFFFFFFFF, [0] * 6),
        (AUDIT_ARCH_I386, 3, [0] * 6), (AUDIT_ARCH_I386, 136, [0xFFFFFFFF] + [0] * 5),
        (AUDIT_ARCH_I386, 39, [0] * 6), (0xC00000B7, 0, [0] * 6),
    ]  # fmt: skip
    _agree(profile, calls)
    program = S.compile_profile(profile)
    assert run_bpf(program, seccomp_data(41, x, 0, [40, 0, 0, 0, 0, 0])) == S.SECCOMP_RET_ERRNO | 97
    assert run_bpf(program, seccomp_data(0, x)) == SECCOMP_RET_ALLOW
    assert run_bpf(program, seccomp_data(83, x)) == S.SECCOMP_RET_ERRNO | 38


@pytest.mark.parametrize("seed", range(12))
def test_random_profiles_agree_with_their_meaning(seed: int) -> None:
    """Random rules over a few calls, every comparison, values at the
    edges of both 32-bit words: the program and decide() agree."""
    rng = random.Random(seed)
    edges = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1,
             0xFFFFFFFF_FFFFFFFF, 0x80000000_00000000, 0x1_0000_0005]  # fmt: skip
    names = ["read", "write", "close", "mmap", "ioctl", "kill", "socket", "getpid"]
    actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
               "SCMP_ACT_LOG", "SCMP_ACT_KILL_THREAD"]  # fmt: skip
    syscalls = []
    for _ in range(rng.randint(1, 12)):
        args = [
            {"index": rng.randint(0, 5), "op": rng.choice(S.OPS), "value": rng.choice(edges),
             "valueTwo": rng.choice(edges)}
            for _ in range(rng.randint(0, 3))
        ]  # fmt: skip
        syscalls.append({"names": rng.sample(names, rng.randint(1, 3)),
                         "action": rng.choice(actions), "errnoRet": rng.randint(1, 200),
                         "args": args})  # fmt: skip
    arches = rng.sample(sorted(S.ARCHES), rng.randint(1, 3))
    profile = S.parse({"defaultAction": rng.choice(actions), "architectures": arches,
                       "syscalls": syscalls})  # fmt: skip
    nrs = {0, 1, 3, 4, 6, 9, 16, 20, 37, 39, 41, 54, 62, 102, 500}
    calls = []
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386):
        for nr in nrs:
            for _ in range(6):
                calls.append((arch, nr, [rng.choice(edges) for _ in range(6)]))
    _agree(profile, calls)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"defaultAction": "SCMP_ACT_TRACE"}, "its stops would be umld's own"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}, "seccomp agent"),
        ({"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}, "seccomp agent"),
        ({"defaultAction": "SCMP_ACT_DANCE"}, "unknown action"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "not an errno"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]},
         "not supported"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "0 to 5"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}, "unknown"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_refused(data: dict[str, Any], why: str) -> None:
    with pytest.raises(S.ProfileError, match=why):
        S.parse(data)
