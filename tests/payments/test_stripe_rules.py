"""Stripe routing and attribution as plain functions: what each event means, in microseconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.ops.factories import stripe_event
from paylayer.settings import DEFAULT_CATALOGUE_PATH
from payments_service.intents import (
    Grant,
    Ignore,
    Payer,
    PaymentNote,
    Revoke,
    SubscriptionChange,
    Unprocessable,
)
from payments_service.stripe_events import interpret


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(DEFAULT_CATALOGUE_PATH)


@pytest.mark.parametrize(
    "event_type",
    [
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ],
)
def test_every_view_of_one_purchase_grants_under_its_payment_intent(
    catalogue: Catalogue, event_type: str
) -> None:
    intent = interpret(
        stripe_event(
            event_type, catalogue, sku="premium_30d", telegram_user_id=7, payment_intent="pi_1"
        ),
        catalogue,
    )
    assert isinstance(intent, Grant)
    assert intent.payment_key == "pi_1"
    assert intent.payer == Payer(telegram_user_id=7)
    assert intent.sku.name == "premium_30d"


def test_a_charge_without_payment_intent_is_keyed_by_the_charge(catalogue: Catalogue) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=1, charge="ch_9"
    )
    event["data"]["object"]["payment_intent"] = None
    intent = interpret(event, catalogue)
    assert isinstance(intent, Grant) and intent.payment_key == "ch_9"


def test_attribution_order_user_id_then_telegram_then_reference_then_customer(
    catalogue: Catalogue,
) -> None:
    event = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_30d",
        telegram_user_id=5,
        user_id="u-1",
        customer="cus_1",
    )
    assert interpret(event, catalogue).payer == Payer(user_id="u-1", customer="cus_1")  # type: ignore[union-attr]
    obj = event["data"]["object"]
    del obj["metadata"]["user_id"]
    assert interpret(event, catalogue).payer == Payer(telegram_user_id=5, customer="cus_1")  # type: ignore[union-attr]
    del obj["metadata"]["telegram_user_id"]
    obj["client_reference_id"] = "42"
    assert interpret(event, catalogue).payer == Payer(telegram_user_id=42, customer="cus_1")  # type: ignore[union-attr]
    obj["client_reference_id"] = None
    assert interpret(event, catalogue).payer == Payer(customer="cus_1")  # type: ignore[union-attr]
    obj["customer"] = None
    with pytest.raises(Unprocessable, match="cannot tell who paid"):
        interpret(event, catalogue)


def test_without_metadata_sku_the_price_tells_what_was_bought(catalogue: Catalogue) -> None:
    event = stripe_event("charge.succeeded", catalogue, telegram_user_id=1, amount=9900)
    intent = interpret(event, catalogue)
    assert isinstance(intent, Grant) and intent.sku.name == "vip_30d"
    with pytest.raises(Unprocessable, match="cannot tell what was bought"):
        interpret(
            stripe_event("charge.succeeded", catalogue, telegram_user_id=1, amount=1234), catalogue
        )
    with pytest.raises(Unprocessable, match="unknown sku"):
        interpret(
            stripe_event("charge.succeeded", catalogue, telegram_user_id=1, sku="premium_30d") | {},
            load_catalogue_without(catalogue, "premium_30d"),
        )


def load_catalogue_without(catalogue: Catalogue, sku: str) -> Catalogue:
    return Catalogue(
        skus={k: v for k, v in catalogue.skus.items() if k != sku},
        tier_closure=catalogue.tier_closure,
        max_accounts_by_tier=catalogue.max_accounts_by_tier,
        max_accounts_without_tier=catalogue.max_accounts_without_tier,
    )


def test_full_refund_revokes_and_partial_refund_is_recorded(catalogue: Catalogue) -> None:
    full = interpret(
        stripe_event("charge.refunded", catalogue, sku="premium_30d", payment_intent="pi_2"),
        catalogue,
    )
    assert full == Revoke("stripe", "pi_2", "refunded", 2900)
    partial = interpret(
        stripe_event(
            "charge.refunded",
            catalogue,
            sku="premium_30d",
            payment_intent="pi_2",
            amount_refunded=1000,
        ),
        catalogue,
    )
    assert (
        isinstance(partial, PaymentNote)
        and partial.status == "partially_refunded"
        and partial.amount_refunded == 1000
    )


def test_dispute_revokes_the_disputed_purchase(catalogue: Catalogue) -> None:
    intent = interpret(
        stripe_event("charge.dispute.created", catalogue, payment_intent="pi_3"), catalogue
    )
    assert intent == Revoke("stripe", "pi_3", "disputed")


def test_unpaid_checkout_waits_and_subscription_checkout_leaves_the_grant_to_the_invoice(
    catalogue: Catalogue,
) -> None:
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=1
    )
    event["data"]["object"]["payment_status"] = "unpaid"
    assert isinstance(interpret(event, catalogue), PaymentNote)
    event["data"]["object"].update(payment_status="paid", mode="subscription")
    assert isinstance(interpret(event, catalogue), Ignore)


def test_invoice_paid_grants_until_the_line_period_end(catalogue: Catalogue) -> None:
    end = 1_900_000_000
    intent = interpret(
        stripe_event(
            "invoice.paid",
            catalogue,
            sku="premium_30d",
            telegram_user_id=3,
            period_end=end,
            subscription="sub_1",
        ),
        catalogue,
    )
    assert isinstance(intent, Grant)
    assert intent.until == datetime.fromtimestamp(end, UTC)
    assert intent.subscription_id == "sub_1"


def test_subscription_deleted_stops_renewals_and_other_types_are_ignored(
    catalogue: Catalogue,
) -> None:
    deleted = interpret(
        stripe_event(
            "customer.subscription.deleted",
            catalogue,
            subscription="sub_1",
            sku="premium_monthly",
            telegram_user_id=7,
        ),
        catalogue,
    )
    assert isinstance(deleted, SubscriptionChange)
    assert (deleted.subscription_id, deleted.status) == ("sub_1", "canceled")
    assert deleted.ended_at is not None  # access ends when the subscription did
    assert isinstance(interpret(stripe_event("customer.created", catalogue), catalogue), Ignore)
