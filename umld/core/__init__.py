"""The guest kernel.  This module is the API the other layers may use."""

from typing import TYPE_CHECKING, Any

from umld.core.changes import Change as Change, Unit as Unit, is_whiteout as is_whiteout
from umld.core.control import (
    MachineControl as MachineControl,
    NoTerminal as NoTerminal,
    ProcessInfo as ProcessInfo,
)
from umld.core.events import GuestEvent as GuestEvent
from umld.core.kernel import GuestKernel as GuestKernel
from umld.core.machine import Config as Config, Machine as Machine, RunResult as RunResult
from umld.core.paths import default_mountpoint as default_mountpoint
from umld.core.procfs import returncode as returncode, shell_status as shell_status
from umld.core.settings import SettingError as SettingError, live_keys as live_keys
from umld.core.syscalls import lookup_table as lookup_table
from umld.core.syscalls.table import (
    Disposition as Disposition,
    Family as Family,
    Syscall as Syscall,
)

if TYPE_CHECKING:
    from umld.core.configdir import ConfigDir as ConfigDir


def __getattr__(name: str) -> Any:
    # ConfigDir pulls in ctypes: loaded on first use, not by every start.
    if name == "ConfigDir":
        from umld.core.configdir import ConfigDir

        return ConfigDir
    raise AttributeError(f"module 'umld.core' has no attribute {name!r}")
