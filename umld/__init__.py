"""umld: run unmodified Linux programs under a user-space guest kernel."""

from umld.core import Config as Config, Machine as Machine, RunResult as RunResult
from umld.errors import GuestError as GuestError, UmldError as UmldError, UsageError as UsageError

__version__ = "0.1.0"
