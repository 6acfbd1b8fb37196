"""Port I/O, cli/sti and hlt of a guest, emulated at their fault (issue 15).

tests/guest/ioport.c does every form of in/out/ins/outs, cli/sti and hlt,
after ioperm(2), iopl(2) or neither.  Natively (this host's kernel has no
CONFIG_X86_IOPL_IOPERM: ioperm and iopl are ENOSYS) every one of them
dies of SIGSEGV; under umld, without the virtual right, the same
SIGSEGV; with it, the machine's I/O-port bus answers (all ones where no
device decodes the port).  A device attached through the Python API
(``m.iobus.attach``) sees the guest's accesses.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

import umld
from tests.conftest import GUEST_SRC, Compare, CountingDevice, run, umld_argv

pytestmark = pytest.mark.uses_ptrace

SIGSEGV_STATUS = 128 + signal.SIGSEGV

#: What ``ioport GRANT forms`` prints when no device decodes 0xe0-0xef.
UNKNOWN_FORMS = """\
inb_imm=0x11223344556677ff
inw_imm=0x112233445566ffff
inl_imm=0xffffffff
inb_dx=0x11223344556677ff
inw_dx=0x112233445566ffff
inl_dx=0xffffffff
out done
insb=ffffffaaaaaaaaaaaaaaaaaaaaaaaaaa moved=3 rcx=0
insw=ffffffffffffaaaaaaaaaaaaaaaaaaaa moved=6 rcx=0
insl=ffffffffffffffffffffffffaaaaaaaa moved=12 rcx=0
insb_df=ffffffaaaaaaaaaaaaaaaaaaaaaaaaaa moved=-3 rcx=0
insb_a32=ffffaaaaaaaaaaaaaaaaaaaaaaaaaaaa moved=2 rcx=0
insw_one=ffffaaaaaaaaaaaaaaaaaaaaaaaaaaaa moved=2 rcx=7
outsb moved=3 rcx=0
outsw moved=6 rcx=0
outsl moved=12 rcx=0
outsb_df moved=-3 rcx=0
outsb_zero moved=0 rcx=0
"""


@pytest.fixture(scope="module")
def ioport(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ioport") / "ioport"
    cc = ["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread"]
    subprocess.run([*cc, "-o", str(out), str(GUEST_SRC / "ioport.c")], check=True)
    return out


@pytest.mark.parametrize(
    "args", [("none", "forms"), ("none", "inb"), ("none", "cli"), ("none", "hlt")]
)
def test_without_a_right_port_io_is_sigsegv_as_natively(
    compare: Compare, ioport: Path, args: tuple[str, str]
) -> None:
    r = compare([str(ioport), *args])
    assert r.returncode == SIGSEGV_STATUS


@pytest.mark.parametrize("grant", ["ioperm", "iopl"])
def test_every_form_against_an_unknown_port(backend: str, ioport: Path, grant: str) -> None:
    native = run([str(ioport), grant, "forms"])
    # This host's kernel: no ioperm/iopl (ENOSYS); elsewhere the ports
    # would be real ones, and are not touched here.
    assert native.returncode == 3 and native.stdout == f"grant errno={38}\n"
    r = run([*umld_argv(backend), str(ioport), grant, "forms"])
    assert (r.returncode, r.stdout) == (0, UNKNOWN_FORMS), r.stderr


def test_ioperm_grants_only_its_ports(backend: str, ioport: Path) -> None:
    """ioperm(0xe0, 1): inb at 0xe0 works, inw (0xe0 and 0xe1) faults."""
    r = run([*umld_argv(backend), str(ioport), "partial", "inb"])
    assert (r.returncode, r.stdout) == (0, "in=0x11223344556677ff\n"), r.stderr
    r = run([*umld_argv(backend), str(ioport), "partial", "inw"])
    assert (r.returncode, r.stdout) == (SIGSEGV_STATUS, "")


ERRORS_ROOT = """\
ioperm_past_end=-1/22
ioperm_empty=-1/22
ioperm_last=0/0
ioperm_off=0/0
iopl_4=-1/22
iopl_3=0/0
iopl_0=0/0
"""


def test_argument_checks_and_the_capability(backend: str, ioport: Path) -> None:
    """EINVAL as the kernel checks; EPERM to grant without CAP_SYS_RAWIO
    in the machine (a guest user other than root); turning ports off or
    lowering the level needs nothing."""
    r = run([*umld_argv(backend), str(ioport), "none", "errors"])
    assert (r.returncode, r.stdout) == (0, ERRORS_ROOT), r.stderr
    user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
    r = run([*umld_argv(backend), *user, str(ioport), "none", "errors"])
    expected = ERRORS_ROOT.replace("ioperm_last=0/0", "ioperm_last=-1/1")
    expected = expected.replace("iopl_3=0/0", "iopl_3=-1/1")
    assert (r.returncode, r.stdout) == (0, expected), r.stderr


def test_cli_holds_a_signal_until_sti(backend: str, ioport: Path) -> None:
    r = run([*umld_argv(backend), str(ioport), "iopl", "cli"])
    assert (r.returncode, r.stdout) == (0, "cli before_sti=0 after_sti=1\n"), r.stderr


def test_held_signals_keep_their_siginfo(backend: str, ioport: Path) -> None:
    """While IF is clear the signals stay pending in the kernel, as blocked
    ones (sigpending(2) shows them, no handler runs); at sti each arrives
    as a blocked signal does when natively unblocked: the standard one
    once (SI_TKILL), each queued real-time one with its value (SI_QUEUE),
    in the kernel's order; the mask is the one before cli again."""
    native = run([str(ioport), "none", "maskinfo"])
    assert native.returncode == 0, native.stderr
    assert native.stdout.startswith("pending usr2=1 rt=1 handled=0\n")
    assert sorted(native.stdout.splitlines()[1:4]) == [
        "rtmin code=-1 value=7",
        "rtmin code=-1 value=8",
        "usr2 code=-6 value=0",
    ]
    r = run([*umld_argv(backend), str(ioport), "iopl", "cliinfo"])
    assert (r.returncode, r.stdout) == (0, native.stdout), r.stderr


def test_a_held_signal_reaches_the_program_execve_starts(backend: str, ioport: Path) -> None:
    """execve starts the new program with IF set: what cli held is
    delivered to it (here SIGUSR1, whose default action ends it)."""
    r = run([*umld_argv(backend), str(ioport), "iopl", "cliexec"])
    assert (r.returncode, r.stdout) == (128 + signal.SIGUSR1, "held\n"), r.stderr


@pytest.mark.parametrize(
    ("mode", "code"), [("insro", 2), ("insnone", 2), ("insgone", 1), ("outsnone", 2)]
)
def test_a_string_form_on_a_page_it_may_not_touch(
    backend: str, ioport: Path, mode: str, code: int
) -> None:
    """The page fault the CPU would raise, with its si_code: SEGV_ACCERR
    (2) for a mapped page the access may not make, SEGV_MAPERR (1) for an
    unmapped one, at the page's address; nothing is written through the
    protection."""
    r = run([*umld_argv(backend), str(ioport), "ioperm", mode])
    assert (r.returncode, r.stdout) == (0, f"segv code={code} at_page=1\n"), r.stderr


def test_cli_needs_iopl_3(backend: str, ioport: Path) -> None:
    """ioperm opens ports, not the interrupt flag."""
    r = run([*umld_argv(backend), str(ioport), "ioperm", "cli"])
    assert r.returncode == SIGSEGV_STATUS


def test_hlt_returns_when_a_signal_arrives(backend: str, ioport: Path) -> None:
    r = run([*umld_argv(backend), str(ioport), "iopl", "hlt"])
    assert (r.returncode, r.stdout) == (0, "hlt woke handled=1\n"), r.stderr


@pytest.mark.parametrize("mode", ["gp", "null"])
def test_a_real_segfault_is_still_delivered(compare: Compare, ioport: Path, mode: str) -> None:
    """With every right, a fault that is not port I/O is the guest's: a
    #GP of a non-canonical address (SI_KERNEL too) and a null load."""
    assert run([str(ioport), "iopl", mode]).returncode == 3  # natively: no iopl here
    r = run([*umld_argv(compare.backend), str(ioport), "iopl", mode])
    assert (r.returncode, r.stdout) == (SIGSEGV_STATUS, "")
    assert compare([str(ioport), "none", mode]).returncode == SIGSEGV_STATUS


# -- a device on the bus, through the Python API ---------------------------------


@pytest.fixture(autouse=True)
def _signal_mask() -> Iterator[None]:
    """The API blocks SIGCHLD in the calling thread; other tests' children
    must not inherit that."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


_serial = itertools.count()


@pytest.mark.trio
async def test_a_device_attached_from_the_api(ioport: Path, tmp_path: Path) -> None:
    """The imm8 forms reach the device at 0xe0; the dx forms at 0xe4 reach
    no device: all ones, and one ``ioport pid=N unknown 0x00e4`` event."""
    import trio

    # A test device on 0xe0-0xe3.
    latch = CountingDevice("latch", range(0xE0, 0xE4))
    config = umld.Config(
        name=f"ioport-{os.getpid()}-{next(_serial)}",
        state_dir=str(tmp_path),
        bind=[str(ioport.parent)],
    )
    async with umld.open_machine(config) as m:
        m.iobus.attach(latch)
        seen: list[umld.GuestEvent] = []
        subscribed = trio.Event()
        unknown = trio.Event()

        async def watch() -> None:
            async with aclosing(m.events()) as events:
                async for ev in events:
                    seen.append(ev)
                    if ev.kind == "exec":
                        subscribed.set()
                    if ev.kind == "ioport" and ev.text.startswith("unknown"):
                        unknown.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.fail_after(20):
                while not subscribed.is_set():
                    await m.run(["true"])
            r = await m.run([str(ioport), "ioperm", "forms"], capture_output=True)
            with trio.fail_after(20):
                await unknown.wait()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[:3] == [
        "inb_imm=0x1122334455667701",
        "inw_imm=0x1122334455660202",
        "inl_imm=0x3030303",
    ]
    assert lines[3] == "inb_dx=0x11223344556677ff"
    assert latch.n == 3
    assert latch.writes == [(0xE0, 1, 0x5A), (0xE0, 2, 0x5A5B), (0xE0, 4, 0x5A5B5C5D)]
    (event,) = [e for e in seen if e.kind == "ioport" and e.text.startswith("unknown")]
    assert event.text == "unknown 0x00e4" and event.pid > 1


def test_a_32_bit_program(backend: str, tmp_path: Path) -> None:
    """i386 ioperm(2), and in/ins of a 32-bit thread (32-bit addresses)."""
    out = tmp_path / "ioport32"
    built = subprocess.run(
        ["gcc", "-m32", "-O1", "-Wall", "-Werror", "-o", str(out), str(GUEST_SRC / "ioport32.c")],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build 32-bit programs (gcc-multilib): {built.stderr.strip()}")
    assert run([str(out)]).returncode == 3  # natively: no ioperm on this kernel
    r = run([*umld_argv(backend), str(out)])
    assert (r.returncode, r.stdout) == (
        0,
        "inb=0x112233ff insw moved=6 rcx=0 buf=ffffffffffffaaaa\n",
    )
