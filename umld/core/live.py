"""How a live setting's change applies to a running machine.

Each function takes the machine's control and a value its row in
:mod:`umld.core.settings` has already parsed, applies it (the machine's
policy, its generated /proc and /sys files, its processes' limits, its
cgroups), and raises :class:`~umld.core.settings.SettingError` to refuse
it, leaving everything as it was.  The control records the value and
reports the change in the event stream.

A setting of a later feature brings its apply function in the module of
that feature; these are the first machine's own.
"""

from __future__ import annotations

import os
import resource
import threading
from typing import TYPE_CHECKING

from umld.core.sandbox import cpu_list, cpuinfo_for, meminfo_for, names_argv, stat_for
from umld.errors import get_logger

if TYPE_CHECKING:
    from umld.core.control import MachineControl
    from umld.core.sandbox import MachineFiles

log = get_logger("umld.live")


def _refuse(text: str) -> Exception:
    from umld.core.settings import SettingError

    return SettingError(text)


def hostname(control: MachineControl) -> str:
    """The guest's host name now (the guest may have set it itself)."""
    return control.policy.uts.nodename.decode(errors="replace")


def set_hostname(control: MachineControl, value: str) -> None:
    raw = value.encode()
    control.policy.uts.nodename = raw
    # And in the guest's own UTS namespace, where /proc/sys/kernel/hostname
    # and uname(2) without umld read it.
    _set_guest_uts(control, "sethostname", raw)


def domainname(control: MachineControl) -> str:
    """The guest's NIS domain name now (the guest may have set it)."""
    return control.policy.uts.domainname.decode(errors="replace")


def set_domainname(control: MachineControl, value: str) -> None:
    raw = value.encode()
    control.policy.uts.domainname = raw
    _set_guest_uts(control, "setdomainname", raw)


def fixed_id(control: MachineControl, value: int) -> None:
    """uid and gid: shown, never changed (the credentials of running
    processes cannot change from outside without lying to the guest)."""
    raise _refuse("the ids of running processes cannot change; start the machine with --uid/--gid")


def set_vcpus(control: MachineControl, value: int) -> None:
    """The guest's views, and its cgroup's CPU bandwidth, weight and
    cpuset (cgroups.MachineCgroup.set_cpus): the quota holds from the next
    CFS period (100 ms)."""
    from umld.core.cpushare import KEEPER

    cgroup = control.files.cgroup
    if cgroup is not None:
        try:
            cgroup.set_cpus(value)
        except OSError as exc:
            raise _refuse(f"the machine's cpu cgroup refused it: {exc.strerror}") from None
        control.policy.cpus = cgroup.cpus
        KEEPER.changed(control)
    control.policy.vcpus = value
    write_cpu_views(control.files, value, control.policy.host_cpus())


def set_cpu_weight(control: MachineControl, value: int) -> None:
    """The machine's cgroup weight (cgroups.MachineCgroup.set_weight),
    which cpushare's keeper splits a busy host by from its next pass."""
    from umld.core.cpushare import KEEPER

    cgroup = control.files.cgroup
    try:
        if cgroup is None or not cgroup.set_weight(value):
            raise _refuse("the machine has no cpu cgroup of its own here")
    except OSError as exc:
        raise _refuse(f"the machine's cpu cgroup refused it: {exc.strerror}") from None
    KEEPER.changed(control)


def write_cpu_views(files: MachineFiles, vcpus: int, host_cpus: list[int]) -> None:
    """What the guest reads of its CPUs: /proc/cpuinfo, /proc/stat (kept
    fresh by cpushare's keeper) and the cpulists of /sys/devices/system/cpu
    (the kernel's sysfs-devices-system-cpu ABI: online, possible and
    present are all the machine's vCPUs)."""
    files.write("/proc/cpuinfo", cpuinfo_for(vcpus))
    files.write("/proc/stat", stat_for(vcpus, host_cpus))
    for name in ("online", "possible", "present"):
        files.write(f"/sys/devices/system/cpu/{name}", cpu_list(vcpus))


def set_memory(control: MachineControl, value: int) -> None:
    """The cgroup's limit (cgroups.MachineCgroup.set_memory) and the
    guest's /proc/meminfo; refused below what the machine uses now (the
    kernel would reclaim, and OOM-kill the guest, to get there)."""
    cgroup = control.files.cgroup
    if cgroup is not None:
        used = cgroup.memory_usage()
        if used is not None and value < used:
            raise _refuse(f"below the machine's current use ({used >> 20} MiB)")
        try:
            cgroup.set_memory(value)
        except OSError as exc:
            raise _refuse(f"the machine's memory cgroup refused it: {exc.strerror}") from None
        control.watch_oom()
    control.files.write("/proc/meminfo", meminfo_for(value, cgroup_usage(control)))


def cgroup_usage(control: MachineControl) -> int | None:
    cgroup = control.files.cgroup
    return None if cgroup is None else cgroup.memory_usage()


def set_trace(control: MachineControl, value: str) -> None:
    control.policy.trace_events = value == "syscalls"


def set_net_accept(control: MachineControl, value: str) -> None:
    """Closing applies to the next accept(2); opening also releases the
    threads waiting at one (on the tracer thread, before this returns)."""
    is_open = value == "open"
    control.policy.net_accept_open = is_open
    if is_open:
        control.on_tracer(control.release_held_accepts)


def set_net_connect(control: MachineControl, value: str) -> None:
    control.policy.net_connect = value


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def _prlimit_all(control: MachineControl, which: int, value: int) -> None:
    # Limits are per process and inherited (getrlimit(2)): set on every
    # guest process now; later ones inherit them, and the sandbox gives
    # them to the first process (MachineControl.spawn_limits).
    for pid in control.guest_host_pids():
        try:
            resource.prlimit(pid, which, (value, value))
        except (ProcessLookupError, PermissionError):
            continue


def set_nproc(control: MachineControl, value: int) -> None:
    """RLIMIT_NPROC (counted per user namespace: the guest's processes
    only) and the machine's pids cgroup, which bounds it whatever its ids
    (the kernel never applies the rlimit to a root that is the host's);
    fork(2) fails with EAGAIN either way."""
    _prlimit_all(control, resource.RLIMIT_NPROC, value)
    cgroup = control.files.cgroup
    if cgroup is not None:
        try:
            cgroup.set_pids_max(None if value == resource.RLIM_INFINITY else value)
        except OSError as exc:
            log.warning("pids cgroup of %s: %s", control.name, exc)


def set_nofile(control: MachineControl, value: int) -> None:
    if value != resource.RLIM_INFINITY and value > _nr_open():
        raise _refuse(f"more than the kernel's nr_open ({_nr_open()})")
    if value == resource.RLIM_INFINITY:
        raise _refuse(f"a number up to the kernel's nr_open ({_nr_open()})")
    _prlimit_all(control, resource.RLIMIT_NOFILE, value)


def _set_guest_uts(control: MachineControl, call: str, name: bytes) -> None:
    """sethostname(2) or setdomainname(2) in the guest's UTS namespace,
    where /proc/sys/kernel/hostname and a native uname(2) read it.

    Joining that namespace needs CAP_SYS_ADMIN in its owner, the guest's
    user namespace, and in the caller's own (setns(2)): root has both, an
    ordinary user only once it is in the guest's user namespace, which a
    multithreaded process cannot join.  So a helper process does it
    (``umld-sandbox names``, see sandbox.c), for root and for everyone
    else alike, started from a thread of its own: the tracer thread reaps
    every child of its own (waitpid(2) with __WNOTHREAD), and this one is
    not a guest's.  Waits for it; a failure is logged with its reason."""
    import subprocess

    pid = control.guest_process()
    if pid is None:
        return  # not running its program yet (the sandbox names it) or any more
    argv = names_argv(pid, **{call.removeprefix("set"): os.fsdecode(name)})

    def work() -> None:
        try:
            r = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("guest %s: %s", call, exc)
            return
        if r.returncode != 0 and pid == control.guest_process():
            why = r.stderr.strip().removeprefix("umld: ") or f"status {r.returncode}"
            log.warning("guest %s: %s", call, why)

    t = threading.Thread(target=work, name="umld-uts")
    t.start()
    t.join(10)
