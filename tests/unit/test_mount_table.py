"""The guest's mount table as data (umld/core/sandbox.py Layout): the
embedded defaults, what options add, and the order the sandbox mounts
them in.  No namespaces are made here."""

from __future__ import annotations

from umld.core.sandbox import Layout, Mount


def _targets(layout: Layout) -> list[tuple[str, str]]:
    return [(m.kind, m.target) for m in layout.table()]


def test_the_embedded_defaults() -> None:
    # The host's tree, copy-on-write: the caller's /tmp and home included;
    # /run and /dev/shm are the machine's own.
    layout = Layout(root=None, root_readonly=False, mounts=[], home="/root", home_disk=None)
    assert layout.copy_on_write
    rows = layout.table()
    assert rows[0] == Mount("cow", "/", "/")
    assert _targets(layout)[1:] == [("dev", "/dev"), ("tmpfs", "/run"), ("tmpfs", "/dev/shm")]


def test_the_read_only_host_root_has_private_ramdisks() -> None:
    layout = Layout(root=None, root_readonly=True, mounts=[], home="/root", home_disk=None)
    assert not layout.copy_on_write
    rows = layout.table()
    assert rows[0] == Mount("bind", "/", "/", True)  # the host's /, read-only
    assert _targets(layout)[1:] == [
        ("dev", "/dev"),
        ("tmpfs", "/tmp"),
        ("tmpfs", "/run"),
        ("tmpfs", "/root"),
        ("tmpfs", "/dev/shm"),
    ]


def test_a_named_machine_keeps_its_home_on_a_disk_image_under_a_read_only_root() -> None:
    layout = Layout(
        root=None, root_readonly=True, mounts=[], home="/home/u", home_disk="/var/lib/x.img"
    )
    assert ("disk", "/home/u") in _targets(layout)
    assert Mount("disk", "/var/lib/x.img", "/home/u", size=1 << 30) in layout.table()


def test_a_named_machine_with_the_default_root_has_no_home_disk() -> None:
    from umld import Config

    assert Config(name="x").home_disk() is None
    assert Config(name="x", root_readonly=True).home_disk() is not None
    assert Config(name="x", root_readonly=True, root="/srv").home_disk() is None


def test_an_option_replaces_a_default_at_the_same_path_and_parents_come_first() -> None:
    asked = [Mount("bind", "/srv/a", "/tmp/deep/er"), Mount("tmpfs", "", "/tmp", size=1 << 20)]
    layout = Layout(root=None, root_readonly=True, mounts=asked, home=None, home_disk=None)
    rows = layout.table()
    assert [m for m in rows if m.target == "/tmp"] == [Mount("tmpfs", "", "/tmp", size=1 << 20)]
    depth = [m.target.rstrip("/").count("/") for m in rows[1:]]
    assert depth == sorted(depth)


def test_a_given_root_gets_its_own_dev_and_the_hosts_sys_only() -> None:
    layout = Layout(root="/srv/root", root_readonly=True, mounts=[], home="/root", home_disk=None)
    assert layout.table()[0] == Mount("bind", "/srv/root", "/", True)
    assert _targets(layout)[1:] == [("dev", "/dev"), ("bind", "/sys"), ("tmpfs", "/dev/shm")]
