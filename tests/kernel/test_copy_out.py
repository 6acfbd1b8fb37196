"""Results the guest kernel writes into guest memory fail where Linux's
copy_to_user fails (issue 17, LTP uname02): EFAULT at a read-only,
PROT_NONE or unmapped page, and nothing is written through a protection.

The tracer's fallback through /proc/PID/mem writes as a debugger does
(FOLL_FORCE); only debuggers ask for it (``write_memory(force=True)``).
The same program natively and under umld, the outputs compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Compare

pytestmark = pytest.mark.uses_ptrace

#: Calls the guest kernel answers itself (uname, sysinfo and getresuid
#: always; sched_getaffinity with --vcpus).
CALLS = ("uname", "sysinfo", "getresuid", "sched_getaffinity")


def test_results_are_not_written_through_page_protections(
    compare: Compare, guest_bin: Path
) -> None:
    argv = [str(guest_bin / "copy_out"), *CALLS]
    native = compare.native(argv)
    assert native.stdout.count("EFAULT ro-page intact") == 4 * len(CALLS), native.stdout
    guest = compare.guest(argv, "--vcpus=1", f"--bind={guest_bin}")
    assert (guest.returncode, guest.stdout) == (0, native.stdout), guest.stderr
