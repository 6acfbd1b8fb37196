"""umld: run unmodified Linux programs under a user-space guest kernel.

The public API is what this module exports.  Names are loaded on first use
(PEP 562) so that the ``umld`` command starts without importing what it
does not need.
"""

import typing as _typing

from umld.errors import GuestError as GuestError, UmldError as UmldError, UsageError as UsageError

if _typing.TYPE_CHECKING:
    from umld._api import (
        CompletedProcess as CompletedProcess,
        LiveConfig as LiveConfig,
        RunningMachine as RunningMachine,
        SyncMachine as SyncMachine,
        machine as machine,
        open_machine as open_machine,
    )
    from umld.core import (
        Config as Config,
        GuestEvent as GuestEvent,
        Machine as Machine,
        ProcessInfo as ProcessInfo,
        RunResult as RunResult,
        SettingError as SettingError,
    )

__version__ = "0.1.0"
__all__ = [
    "CompletedProcess",
    "Config",
    "GuestError",
    "GuestEvent",
    "LiveConfig",
    "Machine",
    "ProcessInfo",
    "RunResult",
    "RunningMachine",
    "SettingError",
    "SyncMachine",
    "UmldError",
    "UsageError",
    "machine",
    "open_machine",
]

_CORE = {"Config", "GuestEvent", "Machine", "ProcessInfo", "RunResult", "SettingError"}
_API = {
    "CompletedProcess",
    "LiveConfig",
    "RunningMachine",
    "SyncMachine",
    "machine",
    "open_machine",
}


def __getattr__(name: str) -> _typing.Any:
    if name in _CORE:
        import umld.core

        return getattr(umld.core, name)
    if name in _API:
        import umld._api

        return getattr(umld._api, name)
    raise AttributeError(f"module 'umld' has no attribute {name!r}")
