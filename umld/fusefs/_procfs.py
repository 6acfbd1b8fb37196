"""What /proc says about the process behind a FUSE request.

pyfuse3 hands read() neither the request's context nor its flags, and it
does not pass on FUSE_INTERRUPT (libfuse only sets a flag that pyfuse3
never reads).  A read that waits for new data therefore learns from
/proc, about the process that opened the file, the two things the kernel
would have told a C filesystem: that the reader got a signal, and that its
descriptor is in non-blocking mode.  Nothing here touches the mount
itself: reading these files never sends a request to the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def _fields(path: str, names: Iterable[str]) -> dict[str, str] | None:
    wanted = set(names)
    found: dict[str, str] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key in wanted:
                    found[key] = value.strip()
    except OSError:
        return None
    return found


def thread_group(tid: int) -> int | None:
    """The process id of thread ``tid``, None if it is gone."""
    got = _fields(f"/proc/{tid}/status", ("Tgid",))
    if not got or "Tgid" not in got:
        return None
    return int(got["Tgid"])


def signal_pending(tid: int) -> bool | None:
    """Whether thread ``tid`` has a signal waiting that it does not block.

    That is the condition under which the kernel sends FUSE_INTERRUPT for
    a request of the thread (request_wait_answer() in fs/fuse/dev.c): a
    fatal signal shows as SIGKILL in SigPnd of every thread (complete_signal()
    in kernel/signal.c), any other as a bit of SigPnd or ShdPnd outside
    SigBlk (proc(5)).  None: the thread is gone.
    """
    got = _fields(f"/proc/{tid}/status", ("SigPnd", "ShdPnd", "SigBlk"))
    if not got or len(got) != 3:
        return None
    pending = int(got["SigPnd"], 16) | int(got["ShdPnd"], 16)
    return bool(pending & ~int(got["SigBlk"], 16))


def descriptor_nonblocking(tid: int, ino: int, mnt_id: int, hint: int | None) -> tuple[bool, int]:
    """Whether ``tid`` holds inode ``ino`` of mount ``mnt_id`` with O_NONBLOCK.

    Looks through /proc/<tid>/fdinfo (proc(5): pos, flags in octal, mnt_id,
    ino), first at descriptor ``hint`` (the one found last time).  Returns
    (nonblocking, descriptor); descriptor is -1 when no match was found,
    in which case the answer is False (wait, the default of a read).
    """
    base = f"/proc/{tid}/fdinfo"

    def check(fd: int) -> bool | None:
        got = _fields(f"{base}/{fd}", ("flags", "mnt_id", "ino"))
        if not got or got.get("ino") != str(ino) or got.get("mnt_id") != str(mnt_id):
            return None
        return bool(int(got.get("flags", "0"), 8) & os.O_NONBLOCK)

    if hint is not None:
        answer = check(hint)
        if answer is not None:
            return answer, hint
    try:
        fds = [int(name) for name in os.listdir(base)]
    except (OSError, ValueError):
        return False, -1
    for fd in fds:
        answer = check(fd)
        if answer is not None:
            return answer, fd
    return False, -1
