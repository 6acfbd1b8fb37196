"""The guest kernel.  This module is the API the other layers may use."""

from umld.core.events import GuestEvent as GuestEvent
from umld.core.kernel import GuestKernel as GuestKernel
from umld.core.machine import Config as Config
from umld.core.machine import Machine as Machine
from umld.core.machine import RunResult as RunResult
from umld.core.syscalls import lookup_table as lookup_table
from umld.core.syscalls.table import Disposition as Disposition
from umld.core.syscalls.table import Family as Family
from umld.core.syscalls.table import Syscall as Syscall
