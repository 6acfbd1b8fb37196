"""Handlers for the SCHED family: the machine's CPU view."""

from __future__ import annotations

import errno
import os

from umld.core import procfs
from umld.core.syscalls.context import SyscallContext
from umld.core.syscalls.table import Outcome
from umld.errors import GuestError

#: sizeof(unsigned long): the unit of a CPU mask (sched_getaffinity(2)),
#: by ABI: compat_sys_sched_getaffinity counts in 32-bit longs.
_LONG = {False: 8, True: 4}


def sched_getaffinity(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sched_getaffinity(2).

    With ``--vcpus N`` every guest thread may run on CPUs 0..N-1 (what
    nproc(1) and os.sched_getaffinity count).  The raw call returns the
    size of the kernel's mask in bytes; EINVAL when the buffer cannot hold
    it or is not a multiple of a long, as kernel/sched/syscalls.c checks.
    Without --vcpus the call runs natively.
    """
    vcpus = ctx.policy.vcpus
    if vcpus is None:
        return None
    size = ctx.args[1] & 0xFFFFFFFF if ctx.compat else ctx.args[1]
    unit = _LONG[ctx.compat]
    bits = unit * 8
    need = max(unit, (vcpus + bits - 1) // bits * unit)
    if size * 8 < vcpus or size & (unit - 1):
        raise GuestError(errno.EINVAL)
    bound = ctx.policy.affinity.get(_target(ctx), frozenset(range(vcpus)))
    mask = sum(1 << k for k in bound if k < vcpus) or (1 << vcpus) - 1
    ctx.write(ctx.args[2], mask.to_bytes(need, "little"))
    return need


def sched_setaffinity(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall sched_setaffinity(2).

    With ``--vcpus N`` a thread may be bound to any of the guest's CPUs
    0..N-1, more than the host has: guest CPU k runs on host CPU
    ``host[k mod H]`` (MachinePolicy.host_cpus, the H CPUs the machine may
    use), and sched_getaffinity(2) and getcpu(2) then show the guest's
    mask.  EINVAL when the mask names none of the guest's CPUs, as the
    kernel does for a mask with no allowed CPU; ESRCH for an unknown pid.
    Without --vcpus the call runs natively.
    """
    vcpus = ctx.policy.vcpus
    if vcpus is None:
        return None
    size = ctx.args[1] & 0xFFFFFFFF if ctx.compat else ctx.args[1]
    # The kernel reads at most its own mask's size, zero-filling a shorter
    # one (get_user_cpu_mask); bits past the guest's CPUs are ignored.
    raw = ctx.read(ctx.args[2], min(size, (vcpus + 7) // 8))
    bits = int.from_bytes(raw, "little")
    guest = frozenset(k for k in range(vcpus) if bits >> k & 1)
    if not guest:
        raise GuestError(errno.EINVAL)
    host = ctx.policy.host_cpus()
    tid = _target(ctx)
    try:
        os.sched_setaffinity(tid, {host[k % len(host)] for k in guest})
    except ProcessLookupError:
        raise GuestError(errno.ESRCH) from None
    except OSError as exc:
        raise GuestError(exc.errno or errno.EINVAL) from None
    ctx.policy.affinity[tid] = guest
    return 0


def getcpu(ctx: SyscallContext) -> Outcome:
    """Implements Linux syscall getcpu(2).

    With ``--vcpus N`` the CPU is a guest CPU in 0..N-1: the one of the
    thread's guest mask that maps to the host CPU it last ran on, or, for
    an unbound thread on a machine with more vCPUs than host CPUs, one of
    the guest CPUs that host CPU stands for, chosen by thread id so that a
    machine's threads spread over all of them.  The node is 0 (one NUMA
    node).  glibc's sched_getcpu(3) reads rseq or the vDSO, which no
    seccomp filter sees: it shows the host CPU, which is guest CPU k for
    every k below the host's count (MachinePolicy.host_cpus).
    """
    vcpus = ctx.policy.vcpus
    if vcpus is None:
        return None
    tid = int(ctx.task.tid)
    host = ctx.policy.host_cpus()
    on = _last_cpu(int(ctx.task.tgid), tid)
    idx = host.index(on) if on in host else 0
    candidates = [k for k in range(idx, vcpus, len(host))] or [0]
    bound = ctx.policy.affinity.get(tid)
    if bound is not None:
        mine = [k for k in candidates if k in bound]
        cpu = mine[0] if mine else min(bound)
    else:
        cpu = candidates[tid % len(candidates)]
    for addr in (ctx.args[0], ctx.args[1]):
        if addr:
            ctx.write(addr, (cpu if addr == ctx.args[0] else 0).to_bytes(4, "little"))
    return 0


def _target(ctx: SyscallContext) -> int:
    """The host tid of a sched_*affinity pid argument (0: the caller), or
    ESRCH when no thread of the machine has that guest id."""
    pid = ctx.arg_int(0)
    if pid == 0:
        return int(ctx.task.tid)
    if pid < 0:
        raise GuestError(errno.ESRCH)
    for task in list(ctx.kernel.tasks.values()):
        if procfs.guest_pid(f"{task.tgid}/task/{task.tid}") == pid:
            return int(task.tid)
    raise GuestError(errno.ESRCH)


def _last_cpu(pid: int, tid: int) -> int:
    """The CPU a thread last ran on (field 39 of /proc/PID/task/TID/stat,
    proc(5)); 0 when gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return 0
