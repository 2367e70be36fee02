"""The accounts rules on their own: drawdown over snapshots, and which links a cap leaves active."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from accounts_service import rules
from paylayer.catalogue import load_catalogue
from paylayer.settings import DEFAULT_CATALOGUE_PATH

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(**changes: object) -> rules.Snapshot:
    values: dict[str, object] = {
        "time": NOW,
        "balance": 1000.0,
        "equity": 1000.0,
        "margin": 0.0,
        "free_margin": 1000.0,
        "margin_level": 0.0,
        "currency": "USD",
        "leverage": 100,
    }
    values.update(changes)
    return rules.Snapshot(**values)  # type: ignore[arg-type]


def test_drawdown_follows_the_peak_and_max_drawdown_never_falls() -> None:
    state = rules.DrawdownState()
    seen = []
    for equity in (1000.0, 1200.0, 900.0, 1100.0, 600.0, 1300.0):
        state = rules.after_snapshot(state, equity)
        seen.append((state.peak_equity, state.drawdown, state.max_drawdown))

    assert seen[0] == (1000.0, 0.0, 0.0)
    assert seen[1] == (1200.0, 0.0, 0.0)
    assert seen[2] == (1200.0, pytest.approx(0.25), pytest.approx(0.25))
    assert seen[3][1] == pytest.approx(100 / 1200) and seen[3][2] == pytest.approx(0.25)
    assert seen[4] == (1200.0, pytest.approx(0.5), pytest.approx(0.5))
    assert seen[5] == (1300.0, 0.0, pytest.approx(0.5))


def test_an_account_that_never_held_equity_has_no_drawdown() -> None:
    state = rules.after_snapshot(rules.DrawdownState(), 0.0)
    assert (state.drawdown, state.max_drawdown) == (0.0, 0.0)


def test_only_a_strictly_newer_snapshot_applies() -> None:
    assert rules.is_newer(NOW, None)
    assert rules.is_newer(NOW + timedelta(seconds=1), NOW)
    assert not rules.is_newer(NOW, NOW)
    assert not rules.is_newer(NOW - timedelta(seconds=1), NOW)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"balance": math.nan}, "balance must be a finite number"),
        ({"equity": math.inf}, "equity must be a finite number"),
        ({"margin_level": -math.inf}, "margin_level must be a finite number"),
        ({"balance": -0.01}, "balance must not be negative"),
        ({"equity": -1.0}, "equity must not be negative"),
        ({"leverage": -1}, "leverage must not be negative"),
        ({"time": NOW + timedelta(hours=1)}, "snapshot time is in the future"),
    ],
)
def test_impossible_snapshots_are_refused(changes: dict[str, object], problem: str) -> None:
    assert rules.snapshot_problem(snapshot(**changes), NOW) == problem


def test_a_negative_free_margin_and_a_slightly_fast_clock_are_fine() -> None:
    fine = snapshot(free_margin=-50.0, time=NOW + timedelta(minutes=1))
    assert rules.snapshot_problem(fine, NOW) is None


def test_the_cap_follows_the_best_tier_in_the_catalogue() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
    assert rules.account_cap(catalogue, set()) == 1
    assert rules.account_cap(catalogue, {"premium"}) == 3
    assert rules.account_cap(catalogue, {"premium", "vip"}) == 10


def test_the_oldest_links_stay_active_under_a_cap() -> None:
    assert rules.suspended_flags(4, 1) == [False, True, True, True]
    assert rules.suspended_flags(2, 3) == [False, False]
    assert [rules.is_suspended(older, 3) for older in range(5)] == [False] * 3 + [True] * 2
    assert rules.may_link_another(2, 3) and not rules.may_link_another(3, 3)
