"""umld: run unmodified Linux programs under a user-space guest kernel.

The public API is what this module exports.  Names are loaded on first use
(PEP 562) so that the ``umld`` command starts without importing what it
does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from umld.errors import GuestError as GuestError, UmldError as UmldError, UsageError as UsageError

if TYPE_CHECKING:
    from umld.core import Config as Config, Machine as Machine, RunResult as RunResult

__version__ = "0.1.0"
__all__ = ["Config", "GuestError", "Machine", "RunResult", "UmldError", "UsageError"]

_LAZY = {"Config", "Machine", "RunResult"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import umld.core

        return getattr(umld.core, name)
    raise AttributeError(f"module 'umld' has no attribute {name!r}")
