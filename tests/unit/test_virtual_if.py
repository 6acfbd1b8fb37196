"""The virtual interrupt flag (umld/core/privileged.py) on a fake tracer:
cli blocks the holdable signals the thread did not block, sti unblocks
exactly those, a signal that reaches its delivery stop meanwhile is held
and sent on at sti, an execve mends the mask at an interrupt stop."""

from __future__ import annotations

import signal
import struct

from tests.unit.fake_tracer import FakeTracer
from tests.unit.test_dispatch import FIRST, booted
from umld.core.kernel import GuestKernel
from umld.core.privileged import HOLDABLE, SI_KERNEL, ThreadIo
from umld.tracer.events import Execed, Interrupted, SignalStop
from umld.tracer.platform import NREGS, SIGINFO_SIZE, Regs, SigInfo

CODE = 0x400000
CLI, STI = 0xFA, 0xFB
SI_TKILL = -6


def bit(*sigs: int) -> int:
    return sum(1 << (s - 1) for s in sigs)


def siginfo(signo: int, code: int) -> SigInfo:
    raw = bytearray(SIGINFO_SIZE)
    struct.pack_into("=iii", raw, 0, signo, 0, code)
    return SigInfo.from_raw(bytes(raw))


def machine(blocked: int = 0) -> tuple[GuestKernel, FakeTracer]:
    kernel, fake = booted()
    kernel.tasks[FIRST].io = ThreadIo(iopl=3)
    fake.memory[CODE] = bytes([CLI, STI, 0x90, 0x90])
    fake.sigmask[FIRST] = blocked
    return kernel, fake


def execute(kernel: GuestKernel, fake: FakeTracer, opcode: int) -> None:
    """The thread faults on ``opcode`` (SIGSEGV, SI_KERNEL)."""
    fake.regs[FIRST] = Regs._make([0] * NREGS)._replace(rip=CODE + (opcode == STI), cs=0x33)
    fake.siginfo[FIRST] = siginfo(signal.SIGSEGV, SI_KERNEL)
    kernel.handle(SignalStop(FIRST, signal.SIGSEGV))
    assert fake.last()[:2] == ("resume", FIRST)
    assert fake.regs[FIRST].rip == CODE + (opcode == STI) + 1


def test_holdable_leaves_out_faults_kill_stop_and_glibcs_own() -> None:
    for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP):
        assert not HOLDABLE & bit(s)
    for s in (signal.SIGSYS, signal.SIGKILL, signal.SIGSTOP, 32, 33):
        assert not HOLDABLE & bit(s)
    for s in (signal.SIGUSR1, signal.SIGALRM, signal.SIGCHLD, signal.SIGINT, 34, 64):
        assert HOLDABLE & bit(s)


def test_cli_blocks_what_was_not_blocked_and_sti_unblocks_only_that() -> None:
    kernel, fake = machine(blocked=bit(signal.SIGUSR1, signal.SIGSEGV))
    execute(kernel, fake, CLI)
    assert fake.sigmask[FIRST] == HOLDABLE | bit(signal.SIGUSR1, signal.SIGSEGV)
    assert not kernel.tasks[FIRST].io.vif  # type: ignore[union-attr]
    execute(kernel, fake, CLI)  # twice: nothing more, nothing lost
    assert fake.sigmask[FIRST] == HOLDABLE | bit(signal.SIGUSR1, signal.SIGSEGV)
    execute(kernel, fake, STI)
    assert fake.sigmask[FIRST] == bit(signal.SIGUSR1, signal.SIGSEGV)
    assert kernel.tasks[FIRST].io.vif  # type: ignore[union-attr]
    assert fake.last() == ("resume", FIRST, 0, False)


def test_a_signal_reaching_its_delivery_stop_under_cli_is_held_until_sti() -> None:
    """An asynchronous SIGSEGV (never blocked) and a signal the guest
    unblocked itself: held at their stop, the first sent on at sti with
    its own siginfo, the next with tgkill; a fault SIGSEGV is not held."""
    kernel, fake = machine()
    execute(kernel, fake, CLI)
    fake.siginfo[FIRST] = siginfo(signal.SIGSEGV, SI_TKILL)
    kernel.handle(SignalStop(FIRST, signal.SIGSEGV))
    assert fake.last() == ("resume", FIRST, 0, False)
    fake.siginfo[FIRST] = siginfo(signal.SIGUSR2, SI_TKILL)
    kernel.handle(SignalStop(FIRST, signal.SIGUSR2))
    assert fake.last() == ("resume", FIRST, 0, False)
    fake.siginfo[FIRST] = siginfo(signal.SIGSEGV, 1)  # SEGV_MAPERR: a real fault
    kernel.handle(SignalStop(FIRST, signal.SIGSEGV))
    assert fake.last() == ("resume", FIRST, signal.SIGSEGV, False)
    fake.answers.clear()
    execute(kernel, fake, STI)
    assert fake.answers[-3:] == [
        ("set_siginfo", FIRST, signal.SIGSEGV),
        ("kill", FIRST, signal.SIGUSR2),
        ("resume", FIRST, signal.SIGSEGV, False),
    ]


def test_a_clone_inherits_the_flag_and_what_cli_blocked() -> None:
    io = ThreadIo(ports=5, iopl=3, vif=False, masked=bit(signal.SIGUSR1))
    io.held.append(siginfo(signal.SIGUSR2, SI_TKILL))
    clone = io.copy()
    assert (clone.ports, clone.iopl, clone.vif, clone.masked, clone.held) == (
        5,
        3,
        False,
        bit(signal.SIGUSR1),
        [],
    )


def test_execve_sets_if_and_mends_the_mask_at_an_interrupt() -> None:
    kernel, fake = machine(blocked=bit(signal.SIGUSR1))
    execute(kernel, fake, CLI)
    fake.answers.clear()
    kernel.handle(Execed(FIRST, FIRST))
    assert ("interrupt", FIRST) in fake.answers
    assert kernel.tasks[FIRST].io.vif  # type: ignore[union-attr]
    assert fake.sigmask[FIRST] == HOLDABLE | bit(signal.SIGUSR1)  # not yet: it runs
    kernel.handle(Interrupted(FIRST))
    assert fake.sigmask[FIRST] == bit(signal.SIGUSR1)
    assert fake.last() == ("resume", FIRST, 0, False)
    fake.answers.clear()
    kernel.handle(Interrupted(FIRST))  # another one: just resumed
    assert fake.answers == [("resume", FIRST, 0, False)]


def test_execve_with_nothing_held_asks_no_interrupt() -> None:
    kernel, fake = machine()
    kernel.handle(Execed(FIRST, FIRST))
    assert ("interrupt", FIRST) not in fake.answers
