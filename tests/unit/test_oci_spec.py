"""config.json's mapping onto a machine, below the runtime: capability
names, id mappings and what is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from umld.core.sandbox import Caps
from umld.core.settings import IdMap, SettingError
from umld.oci import _spec

HEADER = Path("/usr/include/linux/capability.h")


@pytest.mark.skipif(not HEADER.exists(), reason="linux-libc-dev is not installed")
def test_capability_names_are_the_kernel_headers() -> None:
    found = dict(re.findall(r"^#define (CAP_[A-Z_]+)\s+(\d+)\s*$", HEADER.read_text(), re.M))
    assert {name: int(n) for name, n in found.items()} == _spec.CAP_NUMBER


def test_capabilities_become_masks_and_unknown_names_are_left_out() -> None:
    caps = _spec.capabilities(
        {"bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NOT_YET"], "ambient": ["CAP_KILL"]}, "x"
    )
    assert caps == Caps(bounding=1 << 5 | 1, effective=0, permitted=0, inheritable=0,
                        ambient=1 << 5)  # fmt: skip
    assert caps.masks() == ("21", "0", "0", "0", "20")
    assert _spec.capabilities(None, "x") is None
    with pytest.raises(_spec.SpecError, match=r"x\.effective"):
        _spec.capabilities({"effective": "CAP_KILL"}, "x")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0:100000:65536", ((0, 100000, 65536),)),
        ("0:5:1,1:100000:1000", ((0, 5, 1), (1, 100000, 1000))),
        ([[0, 1, 2], [2, 10, 3]], ((0, 1, 2), (2, 10, 3))),
    ],
)
def test_an_id_map_is_read(text: Any, value: Any) -> None:
    assert IdMap().parse(text) == value
    assert IdMap().parse(IdMap().text(value)) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0:1", "GUEST:HOST:COUNT"),
        ("a:b:c", "GUEST:HOST:COUNT"),
        ("0:1:0", "a count of 1 or more"),
        ("65000:1:1000", "guest ids 0 to 65535"),
        ("0:4294967295:2", "host ids end"),
        ("0:100:10,5:200:10", "overlap"),
        ("0:100:10,20:105:10", "overlap"),
        (",".join(f"{k}:{k}:1" for k in range(341)), "at most 340"),
    ],
)
def test_a_bad_id_map_says_why(text: str, why: str) -> None:
    with pytest.raises(SettingError, match=why):
        IdMap().parse(text)


def _config(**linux: Any) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["true"], "cwd": "/"},
        "linux": linux,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="id mappings are for root-run machines")
def test_id_mappings_are_the_roots_owners(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    maps = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    plan = _spec.plan(tmp_path, _config(uidMappings=maps), default_mount=None)
    assert plan.settings["root_uids"] == ((0, 300000, 65536),)
    assert "root_gids" not in plan.settings


def test_an_ordinary_users_machine_refuses_id_mappings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spec.os, "geteuid", lambda: 1000)
    (tmp_path / "rootfs").mkdir()
    maps = [{"containerID": 0, "hostID": 1000, "size": 1}]
    with pytest.raises(_spec.SpecError, match="rootless engines"):
        _spec.plan(tmp_path, _config(gidMappings=maps), default_mount=None)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("vm.swappiness=1", "not in a namespace of the machine's own"),
        ("kernel.hostname=x", "the hostname and domainname settings"),
        ("kernel.shmmax", "KEY=VALUE"),
        ("../../etc/passwd=1", "not a sysctl name"),
        ("kernel..shmmax=1", "not a sysctl name"),
    ],
)
def test_a_sysctl_outside_the_machines_namespaces_is_refused(value: str, why: str) -> None:
    from umld.core.settings import Sysctls

    with pytest.raises(SettingError, match=why):
        Sysctls().parse(value)


def test_sysctls_are_read_as_runc_reads_them() -> None:
    from umld.core.settings import Sysctls

    got = Sysctls().parse(["kernel.shmmni=4001", "net/ipv4/ping_group_range=0 0", "fs.mqueue.x=1"])
    assert got == [("kernel.shmmni", "4001"), ("net.ipv4.ping_group_range", "0 0"),
                   ("fs.mqueue.x", "1")]  # fmt: skip
