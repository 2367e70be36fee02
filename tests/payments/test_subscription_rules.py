"""The subscription rules, pure: any order of changes gives one state; both API shapes read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import permutations

import pytest

from paylayer.catalogue import Catalogue, Price, Sku
from payments_service import subscriptions
from payments_service.intents import Payer, SubscriptionChange, Unprocessable
from payments_service.stripe_events import _subscription_sku

SKU = Sku("premium_monthly", "premium", timedelta(days=30), (), 1000, recurring=True)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
PAYER = Payer(telegram_user_id=1)


def change(minutes: int, **fields: object) -> SubscriptionChange:
    return SubscriptionChange(
        "stripe",
        "sub_1",
        T0 + timedelta(minutes=minutes),
        PAYER,
        SKU,
        **fields,  # type: ignore[arg-type]
    )


def test_any_order_of_changes_merges_to_the_same_state() -> None:
    end = T0 + timedelta(days=30)
    story = [
        change(1, status="active", current_period_end=end, cancel_at_period_end=False),
        change(2, cancel_at_period_end=True),
        change(3, status="past_due", grace_from=T0),
        change(4, status="active", current_period_end=end + timedelta(days=30)),
        change(5, status="canceled", ended_at=end),
    ]
    finals = set()
    for order in permutations(story):
        state = None
        for each in order:
            state = subscriptions.merge("stripe", state, each)
        finals.add(state)
    assert len(finals) == 1
    (final,) = finals
    assert final is not None
    assert (final.status, final.cancel_at_period_end, final.ended_at) == ("canceled", True, end)
    assert final.current_period_end == end + timedelta(days=30)


def test_an_ended_stripe_subscription_never_comes_back_but_a_stars_one_may() -> None:
    ended = subscriptions.merge("stripe", None, change(1, status="canceled", ended_at=T0))
    later = subscriptions.merge("stripe", ended, change(9, status="active"))
    assert later.status == "canceled" and later.ended_at == T0
    stars = subscriptions.merge("telegram", None, change(1, status="canceled"))
    assert subscriptions.merge("telegram", stars, change(2, status="active")).status == "active"


def test_the_period_is_read_from_the_subscription_or_from_its_items() -> None:
    start, end = 1_900_000_000, 1_902_592_000
    legacy = {"current_period_start": start, "current_period_end": end}
    basil = {"items": {"data": [{"current_period_start": start, "current_period_end": end}]}}
    assert subscriptions.current_period(legacy) == subscriptions.current_period(basil)
    assert subscriptions.current_period(basil)[1] == datetime.fromtimestamp(end, UTC)


def test_grace_is_the_skus_days_past_the_paid_end_and_never_past_the_subscriptions_end() -> None:
    assert subscriptions.grace_until(SKU, T0, None) == T0 + timedelta(days=3)
    assert subscriptions.grace_until(SKU, T0, T0 + timedelta(days=1)) == T0 + timedelta(days=1)
    assert subscriptions.grace_until(SKU, T0, T0 - timedelta(days=1)) is None
    assert subscriptions.grace_key("sub_1", T0) == f"sub_1:grace:{int(T0.timestamp())}"


def test_a_price_without_an_id_is_not_taken_for_the_one_sku_that_names_none() -> None:
    """Told apart by price id, then by amount: an item price with no id and an amount no sku
    has tells nothing, even when only one sku in the catalogue names no Stripe price."""

    def monthly(name: str, price_id: str | None, amount: int) -> Sku:
        return Sku(
            name=name,
            grants="premium",
            duration=timedelta(days=30),
            stripe_prices=(Price(amount, "usd"),),
            stars=None,
            recurring=True,
            stripe_price_id=price_id,
        )

    catalogue = Catalogue(
        skus={
            "by_price": monthly("by_price", "price_1Named", 2900),
            "inline": monthly("inline", None, 1900),
        },
        tier_closure={"premium": frozenset({"premium"})},
        max_accounts_by_tier={},
        max_accounts_without_tier=1,
    )
    unknown_item = {"items": {"data": [{"price": {"unit_amount": 100, "currency": "usd"}}]}}
    with pytest.raises(Unprocessable, match=r"^\[unknown_sku\]"):
        _subscription_sku(catalogue, unknown_item, {})
    inline_item = {"items": {"data": [{"price": {"unit_amount": 1900, "currency": "usd"}}]}}
    assert _subscription_sku(catalogue, inline_item, {}).name == "inline"
