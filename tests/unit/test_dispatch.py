"""The guest kernel's dispatch on a fake tracer: every outcome of a trapped
call (native, completed, refused, held, rewritten, a handler's bug), the
task bookkeeping (the sandbox, init and the first process, threads, an
exec from a non-leader thread, the end of the machine) and the events it
reports.  No ptrace, no process, no sleep: a few milliseconds."""

from __future__ import annotations

import errno
import signal
import struct

import pytest

from tests.unit.fake_tracer import FakeTracer
from umld.core.events import GuestEvent
from umld.core.kernel import GuestKernel
from umld.core.policy import MachinePolicy, UtsState
from umld.core.syscalls import lookup_table
from umld.core.syscalls.table import (
    Family,
    Outcome,
    Rewrite,
    SyscallTable,
    denied,
    emulated,
    passthrough,
)
from umld.errors import GuestError
from umld.tracer.events import (
    Arch,
    Cloned,
    CloneKind,
    Execed,
    Exited,
    SyscallStop,
    Tid,
)
from umld.tracer.platform import SpawnSpec

SANDBOX, INIT, FIRST = Tid(100), Tid(101), Tid(102)
NO_ARGS = (0, 0, 0, 0, 0, 0)


def stop(tid: int, nr: int, *args: int, arch: Arch = Arch.X86_64) -> SyscallStop:
    full = (*args, *NO_ARGS)[:6]
    return SyscallStop(Tid(tid), nr, full, arch)  # type: ignore[arg-type]


def booted(table: SyscallTable | None = None, **policy: object) -> tuple[GuestKernel, FakeTracer]:
    """A kernel whose machine is up: the sandbox (100) made init (101),
    whose first child (102) exec'd the guest's program."""
    fake = FakeTracer()
    uts = UtsState(b"Linux", b"guest", b"6.18", b"#1", b"x86_64", b"(none)")
    pol = MachinePolicy(uts, vcpus=None)
    for k, v in policy.items():
        setattr(pol, k, v)
    kernel = GuestKernel(fake, table or lookup_table("x86_64"), policy=pol)
    kernel.start(SpawnSpec(path=b"/sandbox", argv=[b"sandbox"]))
    for ev in (
        Cloned(SANDBOX, INIT, CloneKind.PROCESS),
        Cloned(INIT, FIRST, CloneKind.PROCESS),
        Execed(FIRST, FIRST),
    ):
        kernel.handle(ev)
    fake.answers.clear()
    return kernel, fake


def events(kernel: GuestKernel) -> list[GuestEvent]:
    seen: list[GuestEvent] = []
    kernel.listeners.append(seen.append)
    return seen


def test_the_machine_boots_as_the_kernel_expects() -> None:
    kernel, _ = booted()
    assert kernel.up.is_set()
    assert kernel.root_pid == FIRST and kernel.root_found
    assert kernel.internal == {SANDBOX, INIT}
    assert set(kernel.tasks) == {SANDBOX, INIT, FIRST}
    assert kernel.counters["processes"] == 1  # only the guest's own count


def test_an_untrapped_row_runs_natively() -> None:
    kernel, fake = booted()
    kernel.handle(stop(FIRST, 39))  # getpid: a passthrough row
    assert fake.answers == [("resume", FIRST, 0, False)]


def test_a_denied_call_is_refused_counted_and_reported() -> None:
    kernel, fake = booted()
    seen = events(kernel)
    kernel.handle(stop(FIRST, 167))  # swapon
    assert fake.answers == [("complete", FIRST, -errno.EPERM)]
    assert kernel.counters["denied"] == 1
    assert [(e.kind, e.text) for e in seen] == [("denied", "swapon: would change the host's swap")]


def test_an_i386_call_goes_through_the_i386_table() -> None:
    kernel, fake = booted()
    kernel.handle(stop(FIRST, 88, arch=Arch.I386))  # i386 reboot
    assert fake.answers == [("complete", FIRST, -errno.EPERM)]


def test_an_x32_call_is_refused() -> None:
    kernel, fake = booted()
    kernel.handle(stop(FIRST, 0x40000000 | 39, arch=Arch.X32))
    assert fake.answers == [("complete", FIRST, -errno.ENOSYS)]


def test_a_handler_result_is_written_to_guest_memory() -> None:
    kernel, fake = booted()
    fake.memory[0x1000] = bytes(6 * 65)
    kernel.handle(stop(FIRST, 63, 0x1000))  # uname
    assert fake.answers == [("complete", FIRST, 0)]
    assert fake.memory[0x1000][65 : 65 + 5] == b"guest"


def test_a_guest_error_becomes_minus_errno() -> None:
    kernel, fake = booted()
    kernel.handle(stop(FIRST, 63, 0x9999))  # uname to unmapped memory
    assert fake.answers == [("complete", FIRST, -errno.EFAULT)]


def test_a_held_accept_waits_until_released() -> None:
    # (The filter stops accept(2) only in live machines; dispatch does
    # whatever stops.)
    kernel, fake = booted(net_accept_open=False)
    kernel.handle(stop(FIRST, 43, 3))  # accept
    assert fake.answers == [] and FIRST in kernel.held
    kernel.policy.net_accept_open = True
    kernel.release_held_accepts()
    assert fake.answers == [("resume", FIRST, 0, False)] and not kernel.held


def _table_with(handler: object) -> SyscallTable:
    rows = [
        passthrough(0, "read", Family.DESC),
        emulated(1, "write", Family.DESC, handler),  # type: ignore[arg-type]
        denied(2, "open", Family.FILE, "no"),
    ]
    return SyscallTable("x86_64", rows)


def test_a_handler_bug_gives_eio_and_the_machine_goes_on() -> None:
    def broken(ctx: object) -> Outcome:
        raise RuntimeError("a bug")

    kernel, fake = booted(_table_with(broken))
    kernel.handle(stop(FIRST, 1))
    assert fake.answers == [("complete", FIRST, -errno.EIO)]
    kernel.handle(stop(FIRST, 0))
    assert fake.last() == ("resume", FIRST, 0, False)


@pytest.mark.parametrize(
    ("outcome", "answer"),
    [
        (None, ("resume", FIRST, 0, False)),
        (7, ("complete", FIRST, 7)),
        (Rewrite(0, (1, 2, 3)), ("rewrite", FIRST, 0, (1, 2, 3))),
    ],
)
def test_each_outcome_of_a_handler(outcome: Outcome, answer: tuple[object, ...]) -> None:
    kernel, fake = booted(_table_with(lambda ctx: outcome))
    kernel.handle(stop(FIRST, 1))
    assert fake.answers == [answer]


def test_guest_error_from_a_handler() -> None:
    def refuse(ctx: object) -> Outcome:
        raise GuestError(errno.EACCES)

    kernel, fake = booted(_table_with(refuse))
    kernel.handle(stop(FIRST, 1))
    assert fake.answers == [("complete", FIRST, -errno.EACCES)]


def test_exec_from_a_non_leader_thread_takes_the_leaders_id() -> None:
    kernel, _ = booted()
    kernel.handle(Cloned(FIRST, Tid(103), CloneKind.THREAD))
    kernel.handle(Cloned(FIRST, Tid(104), CloneKind.THREAD))
    assert set(kernel.processes[FIRST].threads) == {FIRST, 103, 104}  # type: ignore[index]
    # Thread 104 execs: the kernel kills the others and gives it pid 102.
    kernel.handle(Execed(FIRST, Tid(104)))
    group = kernel.processes[FIRST]  # type: ignore[index]
    assert set(group.threads) == {FIRST}
    assert set(kernel.tasks) == {SANDBOX, INIT, FIRST}


def test_the_first_process_ending_ends_the_machine() -> None:
    kernel, fake = booted()
    kernel.handle(Cloned(FIRST, Tid(105), CloneKind.PROCESS))
    kernel.handle(Exited(FIRST, 3 << 8))
    assert kernel.root_status == 3 << 8
    # Like a pid namespace's init: every other process is killed.
    assert ("kill", Tid(105), signal.SIGKILL) in fake.answers
    for tid in (Tid(105), INIT, SANDBOX):
        kernel.handle(Exited(tid, 0))
    assert kernel.finished


def test_sched_getaffinity_shows_the_machines_cpus() -> None:
    kernel, fake = booted(vcpus=3)
    fake.memory[0x3000] = bytes(128)
    kernel.handle(stop(FIRST, 204, 0, 128, 0x3000))
    (answer,) = fake.answers
    assert answer[:2] == ("complete", FIRST)
    mask = struct.unpack_from("<Q", fake.memory[0x3000])[0]
    assert mask == 0b111
