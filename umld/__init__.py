"""umld: run unmodified Linux programs under a user-space guest kernel."""

from umld.core import Config as Config
from umld.core import Machine as Machine
from umld.core import RunResult as RunResult
from umld.errors import GuestError as GuestError
from umld.errors import UmldError as UmldError
from umld.errors import UsageError as UsageError

__version__ = "0.1.0"
