"""The caller's terminal and job control, in one place.

``umld run`` gives the guest the terminal the way a shell gives it to a
foreground job (termios(3), "job control"): the guest's process group
becomes the terminal's foreground group, Ctrl-C and Ctrl-Z reach it, and
when the guest's first process is stopped umld stops too, so the shell
that started umld sees its job stopped; ``fg`` gives the terminal back
to the guest and continues it.  Without such a terminal the guest runs in
a session of its own (SpawnSpec.new_session), where /dev/tty is ENXIO.
"""

from __future__ import annotations

import os
import signal


def controlling_tty() -> int | None:
    """A terminal fd (0, 1 or 2) whose foreground group is ours: then the
    guest gets the terminal, as a shell gives it to a foreground job."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            continue
    return None


def set_foreground(fd: int, pgrp: int) -> None:
    """Make ``pgrp`` the terminal's foreground group.  tcsetpgrp(3) from a
    background group raises SIGTTOU unless it is blocked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, pgrp)
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def suspend_with_guest(pgrp: int, tty: int) -> None:
    """The guest's first process was stopped (Ctrl-Z): take the terminal
    back and stop umld; once continued (fg), hand the terminal to the
    guest again and continue it."""
    set_foreground(tty, os.getpgrp())
    os.kill(os.getpid(), signal.SIGSTOP)
    # Here after SIGCONT.
    set_foreground(tty, pgrp)
    try:
        os.killpg(pgrp, signal.SIGCONT)
    except OSError:
        pass
