"""A tracer platform that replays a script of events and records what the
guest kernel answers: the bottom of the test pyramid, where dispatch, the
task bookkeeping and the handlers' outcomes are checked with no ptrace,
no process and no sleep.

It implements :class:`umld.tracer.platform.TracerPlatform` the way the
contract suite (tests/tracer/test_platform.py) pins the real backends
down: events come in the order given, each answer to a stop is recorded
as a tuple, and guest memory is a dict of address -> bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from umld.tracer.events import Event, Tid
from umld.tracer.platform import NREGS, Regs, SigInfo, SpawnSpec, TracerError


class FakeTracer:
    name = "fake"

    def __init__(self, events: Iterable[Event] = (), *, first_tid: int = 100) -> None:
        self.events: deque[Event] = deque(events)
        #: ("resume", tid, signo, stop_at_exit) | ("complete", tid, result)
        #: | ("rewrite", tid, nr, args) | ("set_result", tid, result)
        #: | ("kill", tid, signo) | ("spawn", path) | ("interrupt", tid)
        #: | ("set_sigmask", tid, mask) | ("set_siginfo", tid, signo)
        self.answers: list[tuple[object, ...]] = []
        #: Guest memory: address -> bytes (a read inside a region works).
        self.memory: dict[int, bytes] = {}
        self._next_tid = first_tid
        self.spawned: list[SpawnSpec] = []
        #: Per thread: registers (all zero until set), signal mask, and
        #: the siginfo of its current signal stop.
        self.regs: dict[Tid, Regs] = {}
        self.sigmask: dict[Tid, int] = {}
        self.siginfo: dict[Tid, SigInfo] = {}

    # -- what a test drives ---------------------------------------------------------

    def feed(self, *events: Event) -> None:
        self.events.extend(events)

    def last(self) -> tuple[object, ...]:
        return self.answers[-1]

    # -- TracerPlatform ----------------------------------------------------------------

    def spawn(self, spec: SpawnSpec) -> Tid:
        self.spawned.append(spec)
        tid = Tid(self._next_tid)
        self._next_tid += 1
        self.answers.append(("spawn", spec.path))
        return tid

    def set_host_signals(self, signals: Sequence[int]) -> None:
        pass

    def wait(self, timeout: float | None = None) -> Event | None:
        return self.events.popleft() if self.events else None

    def wake(self) -> None:
        pass

    def resume(self, tid: Tid, signo: int = 0, *, stop_at_exit: bool = False) -> None:
        self.answers.append(("resume", tid, signo, stop_at_exit))

    def complete(self, tid: Tid, result: int) -> None:
        self.answers.append(("complete", tid, result))

    def rewrite(
        self, tid: Tid, nr: int, args: Sequence[int], *, stop_at_exit: bool = False
    ) -> None:
        self.answers.append(("rewrite", tid, nr, tuple(args)))

    def set_result(self, tid: Tid, result: int) -> None:
        self.answers.append(("set_result", tid, result))

    def _region(self, addr: int) -> tuple[int, bytes]:
        for start, data in self.memory.items():
            if start <= addr < start + len(data):
                return start, data
        raise TracerError(f"no guest memory at {addr:#x}", 14)

    def read_memory(self, tid: Tid, addr: int, size: int) -> bytes:
        start, data = self._region(addr)
        return data[addr - start : addr - start + size]

    def write_memory(self, tid: Tid, addr: int, data: bytes, *, force: bool = False) -> None:
        start, old = self._region(addr)
        off = addr - start
        if off + len(data) > len(old):
            raise TracerError("write past the region", 14)
        self.memory[start] = old[:off] + data + old[off + len(data) :]

    def read_string(self, tid: Tid, addr: int, limit: int = 4096) -> bytes:
        start, data = self._region(addr)
        text = data[addr - start :]
        end = text.find(b"\0")
        if end < 0 or end > limit:
            raise TracerError("no NUL", 36)
        return text[:end]

    def get_regs(self, tid: Tid) -> Regs:
        return self.regs.get(tid, Regs._make([0] * NREGS))

    def set_regs(self, tid: Tid, regs: Regs) -> None:
        self.regs[tid] = regs

    def get_siginfo(self, tid: Tid) -> SigInfo:
        try:
            return self.siginfo[tid]
        except KeyError:
            raise TracerError(f"get_siginfo: thread {tid} is not in a signal stop", 22) from None

    def set_siginfo(self, tid: Tid, raw: bytes) -> None:
        info = SigInfo.from_raw(raw)
        self.siginfo[tid] = info
        self.answers.append(("set_siginfo", tid, info.signo))

    def get_sigmask(self, tid: Tid) -> int:
        return self.sigmask.get(tid, 0)

    def set_sigmask(self, tid: Tid, mask: int) -> None:
        # The kernel never lets SIGKILL (9) or SIGSTOP (19) be blocked.
        mask &= ~((1 << 8) | (1 << 18))
        self.sigmask[tid] = mask
        self.answers.append(("set_sigmask", tid, mask))

    def listen(self, tid: Tid) -> None:
        self.answers.append(("listen", tid))

    def interrupt(self, tid: Tid) -> None:
        self.answers.append(("interrupt", tid))

    def kill(self, tid: Tid, signo: int) -> None:
        self.answers.append(("kill", tid, signo))

    def tids(self) -> frozenset[Tid]:
        return frozenset()

    def close(self) -> None:
        pass
