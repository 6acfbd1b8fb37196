"""What the guest kernel's handlers consult about their machine.

The machine's names (uname(2)), its CPU count, its network gate and how
much of its activity goes to the event stream: state that live settings
change (from the export, --config-dir, the daemon, the API: any thread)
and that handlers read at each call (the tracer thread).  Each field is
one value, replaced whole (a bytes, an int, a str, a bool), so a reader
sees the old value or the new one, never a mix, under the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from umld.core.loopdev import MachineLoops


class LazyNetwork(Protocol):
    """A machine's network that comes up at its first use (net.MachineNet)."""

    @property
    def is_up(self) -> bool:
        """Whether it is up (or failed to come up: it will not be more)."""

    def bring_up(self, then: Callable[[], None], pid: int | None = None, *, why: str) -> bool:
        """True when it is up already; otherwise start bringing it up and
        call ``then`` (from any thread) once it is (``pid``: the asking
        guest process, in the network's namespace; ``why``: the use, for
        the event that it came up)."""


@final
class UtsState:
    """The guest's struct new_utsname (uname(2))."""

    __slots__ = ("domainname", "machine", "nodename", "release", "sysname", "version")

    def __init__(
        self,
        sysname: bytes,
        nodename: bytes,
        release: bytes,
        version: bytes,
        machine: bytes,
        domainname: bytes,
    ) -> None:
        self.sysname = sysname
        self.nodename = nodename
        self.release = release
        self.version = version
        self.machine = machine
        self.domainname = domainname

    @classmethod
    def from_host(cls) -> UtsState:
        u = os.uname()
        try:
            with open("/proc/sys/kernel/domainname", "rb") as f:
                domain = f.read().rstrip(b"\n")
        except OSError:
            domain = b"(none)"
        enc = os.fsencode
        return cls(
            enc(u.sysname), enc(u.nodename), enc(u.release), enc(u.version), enc(u.machine), domain
        )


@final
class MachinePolicy:
    """One machine's policy, as its handlers see it (``ctx.policy``)."""

    __slots__ = (
        "affinity",
        "cpuid_own",
        "cpus",
        "loops",
        "net_accept_open",
        "net_connect",
        "network",
        "trace_events",
        "uts",
        "vcpus",
    )

    def __init__(self, uts: UtsState | None = None, vcpus: int | None = None) -> None:
        self.uts = uts or UtsState.from_host()
        #: The machine's CPU count when it differs from the host's.
        self.vcpus = vcpus
        #: net/accept: while False, accept(2) waits at its stop.
        self.net_accept_open = True
        #: net/connect: allow | loopback | deny, read at each call.
        self.net_connect = "allow"
        #: trace = syscalls: each trapped call goes to the event stream.
        self.trace_events = False
        #: Host tid -> the guest CPUs its thread was bound to with
        #: sched_setaffinity(2) (inherited by its clones, dropped at exit).
        self.affinity: dict[int, frozenset[int]] = {}
        #: The host CPUs the machine runs on (its cpuset, chosen by
        #: cgroups.MachineCgroup.set_cpus); None: umld's own affinity.
        self.cpus: list[int] | None = None
        #: cpuid = own: the guest's CPUID is emulated (privileged.py).
        self.cpuid_own = False
        #: devices/loop: the loop devices leased to the machine; None
        #: without the setting.
        self.loops: MachineLoops | None = None
        #: A network that comes up at the first socket(2) that needs it;
        #: None when there is none or it came up with the machine.
        self.network: LazyNetwork | None = None

    def cpu_count(self) -> int:
        """The machine's CPUs, as the guest counts them."""
        return self.vcpus or os.cpu_count() or 1

    def host_cpus(self) -> list[int]:
        """The host CPUs the machine's guest CPUs map onto: guest CPU k
        runs on the (k mod len)-th.  A machine with fewer vCPUs than the
        host has its own cpuset of that many CPUs (the least used by other
        machines); the others run on all of umld's CPUs, where guest CPU
        k is host CPU k for every k below the host's count, so that what
        the vDSO's getcpu and rseq report (the host CPU, which no filter
        sees) agrees with getcpu(2)."""
        if self.cpus:
            return self.cpus
        return sorted(os.sched_getaffinity(0))
