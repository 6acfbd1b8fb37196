"""Unit tests of the host-side pieces of a machine's containment: the
subordinate id ranges (umld/core/ids.py), the cgroup hierarchies
(umld/core/cgroups.py) and where a host path shows in a guest
(umld/core/sandbox.py).  No ptrace, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from umld.core import ids
from umld.core.cgroups import hierarchies
from umld.core.sandbox import Mount, guest_paths, ramdisk_size
from umld.errors import UmldError


def test_subordinate_ranges_are_read_for_the_umld_user(tmp_path: Path) -> None:
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\numld:2147483648:1073741824\n# junk\nbad:line\n")
    assert ids.read_subordinate(str(f)) == [ids.Subrange(2147483648, 1073741824)]
    assert ids.read_subordinate(str(f), "alice") == [ids.Subrange(100000, 65536)]
    assert ids.usable([ids.Subrange(5, 100), ids.Subrange(10 << 20, 3 * ids.SLOT + 7)]) == (
        ids.Subrange(10 << 20, 3 * ids.SLOT)
    )


def test_a_range_of_another_user_over_the_default_is_refused(tmp_path: Path) -> None:
    sub = tmp_path / "subuid"
    sub.write_text(f"mallory:{ids.DEFAULT_RANGE[0] + 5}:10\n")
    with pytest.raises(UmldError, match="another user"):
        ids.machine_ranges(str(sub), str(sub))
    sub.write_text("alice:100000:65536\n")
    r = ids.machine_ranges(str(sub), str(sub))
    assert r[0] == ids.Subrange(*ids.DEFAULT_RANGE)


def test_leases_never_share_a_slot(tmp_path: Path) -> None:
    ranges = (ids.Subrange(1 << 20, 2 * ids.SLOT), ids.Subrange(2 << 20, 2 * ids.SLOT))
    a = ids.lease(str(tmp_path), ranges)
    b = ids.lease(str(tmp_path), ranges)
    assert {a.ids.uid, b.ids.uid} == {1 << 20, (1 << 20) + ids.SLOT}
    assert b.ids.gid - (2 << 20) == b.ids.uid - (1 << 20)
    with pytest.raises(UmldError, match="in use"):
        ids.lease(str(tmp_path), ranges)
    a.close()
    c = ids.lease(str(tmp_path), ranges)
    assert c.ids == a.ids
    b.close()
    c.close()


def test_cgroup_hierarchies_of_a_hybrid_host(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("8:pids:/\n5:devices:/\n4:memory:/box/abc\n2:cpu,cpuacct:/\n0::/user.slice\n")
    assert hierarchies(str(mountinfo), str(cgroup)) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory/box/abc",
        "pids": "/sys/fs/cgroup/pids",
        "v2": "/sys/fs/cgroup/unified/user.slice",
    }


def test_a_host_path_shows_where_the_binds_put_it() -> None:
    table = [
        Mount("bind", "/", "/", True),
        Mount("tmpfs", "", "/tmp"),
        Mount("bind", "/srv/data", "/data"),
    ]
    assert guest_paths(table, "/var/lib/x.sock") == ["/var/lib/x.sock"]
    assert guest_paths(table, "/srv/data/d.sock") == ["/srv/data/d.sock", "/data/d.sock"]
    # Under the guest's own /tmp: out of sight already.
    assert guest_paths(table, "/tmp/d.sock") == []


def test_default_ramdisks_take_at_most_55_percent_of_memory() -> None:
    mem = 8 << 30
    sizes = [ramdisk_size(t, mem, "/root") for t in ("/tmp", "/run", "/dev/shm", "/root")]
    assert sizes[1] == 32 << 20
    assert sum(sizes) <= 0.55 * mem
    assert ramdisk_size("/tmp", 1 << 20, None) == 1 << 20  # never below 1 MiB
