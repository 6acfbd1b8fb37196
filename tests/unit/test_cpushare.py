"""The fair-share arithmetic of umld.core.cpushare, on made-up figures
(the behaviour on real cgroups is tests/kernel/test_smp.py's)."""

from __future__ import annotations

import pytest

from umld.core.cpushare import SLACK, Want, _quota, fair_shares


def test_busy_machines_share_by_weight() -> None:
    shares = fair_shares(2.0, {"a": Want(1, 1), "b": Want(2, 2)})
    assert shares == pytest.approx({"a": 2 / 3, "b": 4 / 3})


def test_a_machine_wanting_less_keeps_it_and_the_rest_is_split() -> None:
    shares = fair_shares(2.0, {"idle": Want(4, 0.1), "a": Want(1, 1), "b": Want(2, 2)})
    assert shares["idle"] == pytest.approx(0.1)
    assert shares["b"] == pytest.approx(2 * shares["a"])
    assert sum(shares.values()) == pytest.approx(2.0)


def test_no_contention_means_no_share_quota() -> None:
    wants = {"a": Want(1, 0.5, 0.4), "b": Want(2, 1.2, 1.1)}
    assert _quota(2.0, wants, "a", 1, None) is None


def test_quota_starts_at_the_share_and_never_exceeds_vcpus() -> None:
    wants = {"a": Want(1, 1, 0.67), "b": Want(2, 2, 1.33)}
    assert _quota(2.0, wants, "a", 1, None) == pytest.approx(0.67)
    wants = {"a": Want(4, 2, 1.0), "b": Want(1, 1, 1.0)}
    assert _quota(2.0, wants, "a", 1, None) == pytest.approx(1.0)


def test_a_machine_past_its_share_is_steered_down() -> None:
    # b used 1.45 CPUs on a quota of 1.33 (bandwidth slices): lowered.
    wants = {"a": Want(1, 1, 0.6, 0.67), "b": Want(2, 2, 1.45, 1.33)}
    assert _quota(2.0, wants, "b", 2, 1.33) < 1.33


def test_others_give_way_to_a_machine_short_for_another_reason() -> None:
    # a has quota 0.67 but gets 0.55 (its CPU shared by weight): b yields.
    wants = {"a": Want(1, 1, 0.55, 0.67), "b": Want(2, 2, 1.33, 1.33)}
    assert _quota(2.0, wants, "b", 2, 1.33) < 1.33 - SLACK
    # An idle machine does not give way: it uses nothing to give.
    wants["idle"] = Want(4, 0.1, 0.0, 0.1)
    assert _quota(2.0, wants, "idle", 4, 0.1) == pytest.approx(0.1)


def test_a_machine_held_short_by_its_own_quota_gets_it_back() -> None:
    wants = {"a": Want(1, 1, 0.5, 0.5), "b": Want(2, 2, 1.3, 1.33)}
    assert _quota(2.0, wants, "a", 1, 0.5) > 0.5


def test_a_held_machine_short_of_its_part_is_steered_up_whatever_held_it() -> None:
    # a got 0.55 of the 1.85 CPUs the two used, under a quota of 0.67 that
    # did not bind: its part is a third, so its quota rises (and b's falls).
    wants = {"a": Want(1, 1, 0.55, 0.67), "b": Want(2, 2, 1.30, 1.33)}
    assert _quota(2.0, wants, "a", 1, 0.67) > 0.67
    assert _quota(2.0, wants, "b", 2, 1.33) < 1.33
    # Within SLACK of its part: nothing moves (a steady state writes nothing).
    wants = {"a": Want(1, 1, 0.62, 0.67), "b": Want(2, 2, 1.245, 1.33)}
    assert _quota(2.0, wants, "a", 1, 0.67) == pytest.approx(0.67)
