"""Busy machines share the host's CPUs in proportion to their vCPUs.

A machine with ``vcpus = N`` has a CFS bandwidth quota of N CPUs and a
cgroup weight of N (cgroups.MachineCgroup.set_cpus).  The weight alone
shares a multi-CPU host only roughly: CFS honours group weights CPU by
CPU, and a machine bound to fewer host CPUs (its cpuset) meets the
others' threads on its CPUs only.  Measured on this project's 2-CPU host,
a 1-vCPU and a 2-vCPU machine with 3 busy processes each got CPU time in
ratios of 1.82 to 1.97 with weights alone, where 2 is fair; with the
keeper below, 1.98 to 2.06 once it has steered for a second (12 runs of
tests/kernel/test_smp.py::test_fair_share_by_vcpus).

So every umld process keeps one thread (the Keeper) that, every TICK,
reads the cgroups of all machines beside its own (every umld process's
machines below the same parent cgroup, the files are world-readable) and
sets its own machines' quotas to their fair shares when, and only when,
the machines want more CPU than the host has:

- a machine *waits* when it was throttled at its quota, or its threads
  waited for a CPU (PSI ``cpu.pressure``, where the kernel has PSI on;
  else more runnable threads than CPUs it used).  A waiting machine wants
  all its vCPUs; one that does not wants what it used, plus HEADROOM.
- when the wants add up to more than the host's CPUs, each machine gets
  its weighted share, water-filled: a machine that wants less than its
  share keeps what it wants, and the rest is split again by weight
  (max-min fairness, as a processor-sharing scheduler would).  Otherwise
  every machine's quota is its vCPUs again.

Every umld process computes the same shares from the same files and
writes only its own machines' quotas: there is no coordinator to start
or to lose, and a machine in a daemon and one of a separate ``umld run``
are treated alike.  The cost is one pass over a few cgroup files per
machine every TICK (not measured on its own; the bench's W0 to W7 include
it), and a machine that becomes busy waits one TICK or two for its share.

The same thread refreshes the generated files that follow the machine's
use: /proc/meminfo (MemFree and MemAvailable from the memory cgroup's
charge) and /proc/stat (one line per guest CPU).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, final

from umld.core import cgroups
from umld.core.sandbox import meminfo_for, stat_for
from umld.errors import get_logger

if TYPE_CHECKING:
    from umld.core.control import MachineControl

log = get_logger("umld.cpushare")

#: Seconds between two passes: two CFS periods.
TICK = 0.2
#: A machine whose threads waited for a CPU this share of the time (PSI
#: "some") wants more than it got.
PRESSURE_WAITING = 0.05
#: CPUs above its use that a machine that is not waiting is taken to want
#: (so that a machine that grows shows it).
HEADROOM = 0.1
#: CPUs by which a held machine's use may miss its part before its quota
#: moves.  The use of one TICK is noisy (about 0.05 CPUs here); the keeper
#: steers on its average over the last passes (SMOOTHING).
SLACK = 0.01
#: Weight of the newest pass in a machine's averaged use (an exponential
#: average: about the last 1 / SMOOTHING passes count).
SMOOTHING = 0.4
#: The least quota a machine is given, in CPUs (the kernel's least is 1 ms
#: a 100 ms period).
MIN_QUOTA = 0.05


class Want(NamedTuple):
    """What one machine asks of the host this pass: its weight (vCPUs)
    and how many CPUs it wants (at most its vCPUs)."""

    weight: float
    cpus: float
    #: CPUs it used in the last pass.
    used: float = 0.0
    #: Its quota now, in CPUs (None: none).
    quota: float | None = None


def fair_shares(capacity: float, wants: Mapping[str, Want]) -> dict[str, float]:
    """Max-min fair shares of ``capacity`` CPUs, weighted: each machine
    gets what it wants when that is below its weighted share of what is
    left, and the rest is split by weight among the others."""
    shares: dict[str, float] = {}
    left = dict(wants)
    while left:
        weight = sum(w.weight for w in left.values()) or 1.0
        sated = {k: w for k, w in left.items() if w.cpus <= capacity * w.weight / weight}
        if not sated:
            for k, w in left.items():
                shares[k] = capacity * w.weight / weight
            break
        for k, w in sated.items():
            shares[k] = w.cpus
            capacity -= w.cpus
            del left[k]
    return shares


class _Sample(NamedTuple):
    at: float
    usage_usec: int
    throttled: int
    pressure_usec: int | None


@final
class Keeper:
    """The one thread of a umld process that keeps its machines' CPU
    shares and their generated usage files (see the module's text)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machines: dict[int, MachineControl] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._samples: dict[str, _Sample] = {}
        #: Each machine's averaged use, in CPUs (see SMOOTHING).
        self._used: dict[str, float] = {}
        #: The quota this keeper last wrote per own machine (CPUs; None:
        #: its vCPUs, as set_cpus left it).
        self._quota: dict[str, float | None] = {}

    def add(self, control: MachineControl) -> None:
        with self._lock:
            self._machines[id(control)] = control
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="umld-keeper", daemon=True)
                self._thread.start()

    def remove(self, control: MachineControl) -> None:
        with self._lock:
            self._machines.pop(id(control), None)
            cgroup = control.files.cgroup
            if cgroup is not None:
                self._quota.pop(cgroup.paths[0], None)
        self._wake.set()

    def changed(self, control: MachineControl) -> None:
        """The machine's vCPUs were set anew (set_cpus wrote its quota)."""
        cgroup = control.files.cgroup
        if cgroup is not None:
            with self._lock:
                self._quota.pop(cgroup.paths[0], None)

    def stop(self) -> None:
        """Forget every machine and end the thread (at exit: a machine
        whose start failed is never removed)."""
        with self._lock:
            self._machines.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)

    def _run(self) -> None:
        while True:
            with self._lock:
                machines = list(self._machines.values())
                if not machines:
                    self._thread = None
                    return
            self.tick(machines)
            self._wake.wait(TICK)
            self._wake.clear()

    def tick(self, machines: list[MachineControl]) -> None:
        """One pass: each machine's files, then its quota."""
        now = time.monotonic()
        samples: dict[str, _Sample] = {}
        wants: dict[str, tuple[float, dict[str, Want]]] = {}
        for control in machines:
            try:
                refresh_files(control)
                cgroup = control.files.cgroup
                anchor = None if cgroup is None else _anchor(cgroup)
                if cgroup is None or anchor is None or cgroup.controller_dir("cpu") is None:
                    continue
                parent, leaf = os.path.split(anchor)
                if parent not in wants:
                    wants[parent] = self._wants(cgroup, now, samples)
                capacity, asked = wants[parent]
                paths = cgroup.paths
                if not paths:
                    continue  # removed meanwhile: the machine has ended (close())
                with self._lock:
                    now_quota = self._quota.get(paths[0])
                quota = _quota(capacity, asked, leaf, control.policy.vcpus, now_quota)
                self._apply(control, cgroup, quota)
            except OSError as exc:
                # A machine's cgroup or files gone as it ends.
                log.debug("keeper of %s: %s", control.name, exc)
        self._samples = samples
        self._used = {k: v for k, v in self._used.items() if k in samples}

    def _wants(
        self, own: cgroups.MachineCgroup, now: float, samples: dict[str, _Sample]
    ) -> tuple[float, dict[str, Want]]:
        """The host's CPUs for machines, and what each machine beside
        ``own`` (by leaf name) wants this pass."""
        capacity = float(len(own.host_cpus()))
        wants: dict[str, Want] = {}
        for leaf, cgroup in cgroups.siblings(own).items():
            sample = _sample(cgroup, now)
            if sample is None:
                continue
            key = cgroup.paths[0]
            samples[key] = sample
            prev = self._samples.get(key)
            if prev is None or sample.at <= prev.at:
                continue
            # Its weight (vCPUs unless cpu_weight says otherwise) splits a
            # busy host; its vCPUs (the CPUs of its cpuset) bound it.
            weight = cgroup.share() or capacity
            cap = min(cgroup.cpu_count() or weight, capacity)
            dt = sample.at - prev.at
            now_used = (sample.usage_usec - prev.usage_usec) / 1e6 / dt
            last = self._used.get(key)
            used = now_used if last is None else last + SMOOTHING * (now_used - last)
            self._used[key] = used
            waited = sample.throttled > prev.throttled
            if sample.pressure_usec is not None and prev.pressure_usec is not None:
                pressure = (sample.pressure_usec - prev.pressure_usec) / 1e6 / dt
                waited = waited or pressure > PRESSURE_WAITING
            elif not waited:
                waited = sum(map(len, cgroup.runnable().values())) > now_used + 0.5
            want = cap if waited else min(cap, used + HEADROOM)
            wants[leaf] = Want(weight, want, used, cgroup.quota())
        return capacity, wants

    def _apply(
        self, control: MachineControl, cgroup: cgroups.MachineCgroup, quota: float | None
    ) -> None:
        key = cgroup.paths[0]
        with self._lock:
            if id(control) not in self._machines:
                return
            first = key not in self._quota
            if (first and quota is None) or (not first and self._quota[key] == quota):
                self._quota[key] = quota
                return
            self._quota[key] = quota
        vcpus = control.policy.vcpus
        cgroup.set_quota(quota if quota is not None else None if vcpus is None else float(vcpus))
        if quota is not None:
            log.debug("machine %s: CPU share %.2f", control.name, quota)


def _anchor(cgroup: cgroups.MachineCgroup) -> str | None:
    return cgroup.controller_dir("cpu") or cgroup.dirs.get("v2")


def _quota(
    capacity: float,
    wants: Mapping[str, Want],
    leaf: str,
    vcpus: int | None,
    current: float | None,
) -> float | None:
    """A machine's quota in CPUs under contention; None when every
    machine's wants fit the host (its vCPUs bound it), or when it is not
    measured yet.

    A machine that wants no more than its fair share gets what it wants.
    The others are *held*: they want more than the host gives them, and
    what they use together is theirs to split by weight.  A quota is
    neither exact nor a guarantee, though: each CPU may run a machine one
    bandwidth slice (5 ms) past it, and a machine bound to fewer host CPUs
    gets less than its quota where another machine's threads share its
    CPUs by weight.  So a held machine's quota starts at its fair share
    and then steers what it *uses* toward its weighted part of what the
    held machines use, half the error a pass, down when it used more and
    up when it used less.  Both ways, whatever held it short: an earlier
    version raised a quota only when that quota itself bound, and the
    noise then pushed quotas down more often than up (ratios of 2.06 to
    2.24 where 2 is fair).  Each umld computes the same from the same
    files and writes its own machines' quotas only.
    """
    if leaf not in wants or sum(w.cpus for w in wants.values()) <= capacity:
        return None
    shares = fair_shares(capacity, wants)
    top = capacity if vcpus is None else min(capacity, float(vcpus))
    own = wants[leaf]
    held = {k: w for k, w in wants.items() if w.cpus > shares[k] + SLACK}
    if leaf not in held:
        return round(min(max(shares[leaf], MIN_QUOTA), top), 2)
    quota = shares[leaf] if current is None else current
    weight = sum(w.weight for w in held.values())
    target = sum(w.used for w in held.values()) * own.weight / weight
    error = target - own.used
    if abs(error) > SLACK:
        quota += 0.5 * error
    # Round to 1% of a CPU, so that a steady state writes nothing.
    return round(min(max(quota, MIN_QUOTA), top), 2)


def _sample(cgroup: cgroups.MachineCgroup, now: float) -> _Sample | None:
    stats = cgroup.cpu_stats()
    if "usage_usec" not in stats:
        return None
    return _Sample(
        now, stats["usage_usec"], stats.get("nr_throttled", 0), cgroup.cpu_pressure_usec()
    )


def refresh_files(control: MachineControl) -> None:
    """The generated files that follow the machine's use: /proc/meminfo
    (from its memory cgroup's charge) and /proc/stat (per guest CPU)."""
    files, cgroup = control.files, control.files.cgroup
    if "/proc/meminfo" in files.files and cgroup is not None:
        memory = control.memory_size()
        used = cgroup.memory_usage()
        if memory and used is not None:
            files.write_if_changed("/proc/meminfo", meminfo_for(memory, used))
    vcpus = control.policy.vcpus
    if "/proc/stat" in files.files and vcpus:
        files.write_if_changed("/proc/stat", stat_for(vcpus, control.policy.host_cpus()))


#: The keeper of this process.
KEEPER = Keeper()
atexit.register(KEEPER.stop)
