"""The settings table (umld/core/settings.py) and what is generated from it:
no ptrace, no mount."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from umld.core import settings
from umld.core.machine import Config
from umld.core.settings import SettingError
from umld.errors import UsageError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_names_are_unique() -> None:
    settings.check_names()


def test_readme_table_is_generated_from_the_rows() -> None:
    text = README.read_text()
    m = re.search(r"<!-- settings:begin[^>]*-->\n(.*?)<!-- settings:end -->", text, re.S)
    assert m is not None, "README has no settings block"
    assert m.group(1) == settings.markdown()


def test_config_declares_one_field_per_start_setting() -> None:
    hints = typing.get_type_hints(Config)
    assert set(hints) == {row.attr for row in settings.START}
    cfg = Config()
    for row in settings.START:
        value = getattr(cfg, row.attr)
        assert value == (list(row.default) if isinstance(row.default, tuple) else row.default)


def test_config_parses_text_and_python_values_alike() -> None:
    a = Config(memory="512M", vcpus="3", limits_nproc="unlimited", net_connect="deny")
    b = Config(memory=512 << 20, vcpus=3, limits_nproc=settings.UNLIMITED, net_connect="deny")
    assert (a.memory, a.vcpus, a.limits_nproc) == (b.memory, b.vcpus, b.limits_nproc)
    with pytest.raises(SettingError):
        Config(vcpus=0)
    with pytest.raises(SettingError):
        Config(memory="lots")
    with pytest.raises(TypeError):
        Config(no_such_setting=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("vcpus", "1025"),
        ("vcpus", "x" * 5000),
        ("memory", "1k"),
        ("memory", "9" * 400),
        ("hostname", ""),
        ("hostname", "a" * 65),
        ("hostname", "two\nlines"),
        ("net/accept", "ajar"),
        ("limits/nproc", "-1"),
        ("limits/nproc", True),
        ("name", "../etc"),
        ("read_only_root", "false"),
        ("uid", 1 << 32),
    ],
)
def test_every_bad_value_is_one_setting_error(key: str, bad: object) -> None:
    with pytest.raises(SettingError):
        settings.BY_KEY[key].type.parse(bad)


def test_settings_files_take_tables_and_name_the_bad_key() -> None:
    kw = settings.from_mapping(
        {"hostname": "box", "net": {"connect": "loopback"}, "limits": {"nproc": 64}},
        where="m.toml",
    )
    assert kw == {"hostname": "box", "net_connect": "loopback", "limits_nproc": 64}
    with pytest.raises(UsageError, match=r"^m.toml: net/connect: "):
        settings.from_mapping({"net": {"connect": "sometimes"}}, where="m.toml")
    with pytest.raises(UsageError, match="unknown settings: colour"):
        settings.from_mapping({"colour": "blue"}, where="m.toml")
    with pytest.raises(UsageError, match="unknown settings: trace"):
        settings.from_mapping({"trace": "syscalls"}, where="m.toml")  # live only


def test_options_are_generated_and_add_to_a_file() -> None:
    p = argparse.ArgumentParser()
    settings.add_options(p.add_argument_group("machine"))
    args = p.parse_args(
        ["--net-connect", "deny", "--bind", "/usr", "--limits-nproc", "9", "--read-only-root"]
    )
    given = settings.options_mapping(args)
    assert given == {
        "read_only_root": True,
        "bind": ["/usr"],
        "net/connect": "deny",
        "limits/nproc": "9",
    }
    merged = settings.merge({"bind": "/etc", "net": {"connect": "allow"}}, given)
    assert merged["bind"] == ["/etc", "/usr"] and merged["net/connect"] == "deny"
    kw = settings.from_mapping(merged, where="options")
    assert [m.target for m in kw["bind"]] == ["/etc", "/usr"]


def test_live_rows_apply_and_the_rest_do_not() -> None:
    for row in settings.SETTINGS:
        assert (row.apply is not None) == row.live, row.key
        assert row.start or row.live, row.key
