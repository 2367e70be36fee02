"""The parsers on Stripe events and Telegram updates shaped as the providers send them.

Every other test's payloads come from our own generator (`paylayer trigger`); if it and the
parser shared a wrong idea of a provider's shape, only these fixtures would notice. They are
in tests/fixtures/ (README there: where each shape comes from), at two Stripe API versions.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.settings import REPO_ROOT
from payments_service import stripe_events, telegram_updates
from payments_service.intents import (
    ChannelUpdate,
    Grant,
    Ignore,
    LinkInvoicePayment,
    PaymentNote,
    Reinstate,
    Revoke,
    SubscriptionChange,
)

FIXTURES = REPO_ROOT / "tests" / "fixtures"
API_VERSIONS = ["2024-06-20", "2025-03-31.basil"]
BUYER = 123456789  # the Telegram id every fixture's buyer has


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(REPO_ROOT / "tests" / "catalogue.yaml")


def fixture(*parts: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(Path(FIXTURES, *parts).read_text())
    return loaded


def stripe(version: str, name: str) -> dict[str, Any]:
    event = fixture("stripe", version, f"{name}.json")
    assert event["api_version"] == version  # a fixture filed under the wrong version misleads
    return event


def handled_stripe_types() -> set[str]:
    """Every type `stripe_events.interpret` acts on, read from the code itself: its GRANTING and
    SUBSCRIPTION_EVENTS sets and each `event_type == "..."` it tests. A type added there without
    a fixture here fails the test below."""
    tree = ast.parse(inspect.getsource(stripe_events))
    compared = {
        comparator.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and isinstance(node.left, ast.Name)
        and node.left.id == "event_type"
        for comparator in node.comparators
        if isinstance(comparator, ast.Constant) and isinstance(comparator.value, str)
    }
    return compared | stripe_events.GRANTING | stripe_events.SUBSCRIPTION_EVENTS


# InvoicePayment objects, and their events, exist from basil on.
NOT_YET = {"2024-06-20": {"invoice_payment.paid"}}


def test_every_handled_stripe_type_has_a_fixture_at_each_version() -> None:
    handled = handled_stripe_types()
    assert {"charge.refunded", "invoice.paid", "checkout.session.completed"} <= handled
    for version in API_VERSIONS:
        present = {
            json.loads(path.read_text())["type"]
            for path in (FIXTURES / "stripe" / version).glob("*.json")
        }
        missing = handled - NOT_YET.get(version, set()) - present
        assert not missing, (version, missing)


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize(
    "name", ["checkout.session.completed", "payment_intent.succeeded", "charge.succeeded"]
)
def test_one_purchase_seen_three_ways_grants_the_buyer_its_sku_under_one_key(
    catalogue: Catalogue, version: str, name: str
) -> None:
    """Checkout, its payment intent and its charge: the same buyer, sku and key each time, so
    entitlements counts the purchase once whichever arrives first."""
    purchase_key = stripe(version, "payment_intent.succeeded")["data"]["object"]["id"]
    intent = stripe_events.interpret(stripe(version, name), catalogue)
    assert isinstance(intent, Grant)
    assert (intent.payer.telegram_user_id, intent.sku.name) == (BUYER, "premium_30d")
    assert intent.payment_key == purchase_key
    assert (intent.amount, intent.currency) == (2900, "usd")


@pytest.mark.parametrize("version", API_VERSIONS)
def test_a_declined_charge_is_recorded_and_grants_nothing(
    catalogue: Catalogue, version: str
) -> None:
    event = stripe(version, "charge.failed")
    intent = stripe_events.interpret(event, catalogue)
    assert isinstance(intent, PaymentNote)
    assert (intent.status, intent.payment_key) == (
        "failed",
        event["data"]["object"]["payment_intent"],
    )


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize(
    ("name", "status"), [("charge.refunded", "refunded"), ("charge.dispute.created", "disputed")]
)
def test_a_full_refund_or_a_dispute_revokes_the_purchase_it_belongs_to(
    catalogue: Catalogue, version: str, name: str, status: str
) -> None:
    purchase_key = stripe(version, "payment_intent.succeeded")["data"]["object"]["id"]
    intent = stripe_events.interpret(stripe(version, name), catalogue)
    assert isinstance(intent, Revoke)
    assert (intent.payment_key, intent.status) == (purchase_key, status)


@pytest.mark.parametrize("version", API_VERSIONS)
def test_a_paid_subscription_invoice_grants_until_its_period_end(
    catalogue: Catalogue, version: str
) -> None:
    event = stripe(version, "invoice.paid")
    invoice = event["data"]["object"]
    intent = stripe_events.interpret(event, catalogue)
    assert isinstance(intent, Grant)
    assert (intent.payer.telegram_user_id, intent.sku.name) == (BUYER, "premium_30d")
    assert intent.until is not None
    assert intent.until.timestamp() == invoice["lines"]["data"][0]["period"]["end"]
    subscription = stripe(version, "customer.subscription.deleted")["data"]["object"]["id"]
    assert intent.subscription_id == subscription


def test_an_invoice_of_api_2024_06_20_is_keyed_by_the_payment_that_paid_it(
    catalogue: Catalogue,
) -> None:
    """So a refund or dispute of that charge revokes the subscription's grant."""
    version = "2024-06-20"
    intent = stripe_events.interpret(stripe(version, "invoice.paid"), catalogue)
    charge = stripe(version, "charge.succeeded.subscription")["data"]["object"]
    assert isinstance(intent, Grant) and intent.payment_key == charge["payment_intent"]


def test_the_charge_of_a_subscription_invoice_is_not_a_second_grant(catalogue: Catalogue) -> None:
    """One payment, one grant: up to 2024-06-20 the charge names its invoice, whose
    invoice.paid grants; the charge itself grants nothing."""
    intent = stripe_events.interpret(
        stripe("2024-06-20", "charge.succeeded.subscription"), catalogue
    )
    assert isinstance(intent, Ignore)


def test_a_basil_subscription_charge_is_keyed_by_the_intent_its_invoice_payment_names(
    catalogue: Catalogue,
) -> None:
    """From basil on a charge no longer names its invoice, so alone it looks like a purchase.
    It is keyed by its payment intent: the key an invoice_payment.paid links to the invoice,
    after which the charge grants nothing (or its grant is undone). The end-to-end proof is
    tests/payments/test_money_matches_access.py::test_a_basil_subscription_charge_and_its_invoice_grant_once.
    """
    charge = stripe("2025-03-31.basil", "charge.succeeded.subscription")["data"]["object"]
    intent = stripe_events.interpret(
        stripe("2025-03-31.basil", "charge.succeeded.subscription"), catalogue
    )
    assert isinstance(intent, Grant) and intent.payment_key == charge["payment_intent"]


@pytest.mark.parametrize("version", API_VERSIONS)
def test_a_deleted_subscription_stops_renewals(catalogue: Catalogue, version: str) -> None:
    event = stripe(version, "customer.subscription.deleted")
    intent = stripe_events.interpret(event, catalogue)
    assert isinstance(intent, SubscriptionChange)
    assert (intent.subscription_id, intent.status) == (event["data"]["object"]["id"], "canceled")
    assert intent.ended_at is not None


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize("name", ["charge.captured", "checkout.session.async_payment_succeeded"])
def test_a_late_capture_or_a_delayed_payment_grants_the_same_purchase(
    catalogue: Catalogue, version: str, name: str
) -> None:
    purchase_key = stripe(version, "payment_intent.succeeded")["data"]["object"]["id"]
    intent = stripe_events.interpret(stripe(version, name), catalogue)
    assert isinstance(intent, Grant)
    assert (intent.payer.telegram_user_id, intent.sku.name) == (BUYER, "premium_30d")
    assert (intent.payment_key, intent.amount, intent.currency) == (purchase_key, 2900, "usd")


@pytest.mark.parametrize("version", API_VERSIONS)
def test_a_dispute_won_reinstates_the_purchase_it_belongs_to(
    catalogue: Catalogue, version: str
) -> None:
    purchase_key = stripe(version, "payment_intent.succeeded")["data"]["object"]["id"]
    intent = stripe_events.interpret(stripe(version, "charge.dispute.closed"), catalogue)
    assert isinstance(intent, Reinstate) and intent.payment_key == purchase_key


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize(
    ("name", "cancel_at_period_end"),
    [("customer.subscription.created", False), ("customer.subscription.updated", True)],
)
def test_a_created_or_updated_subscription_is_tracked_for_its_buyer(
    catalogue: Catalogue, version: str, name: str, cancel_at_period_end: bool
) -> None:
    event = stripe(version, name)
    intent = stripe_events.interpret(event, catalogue)
    assert isinstance(intent, SubscriptionChange)
    assert (intent.subscription_id, intent.status) == (event["data"]["object"]["id"], "active")
    assert (intent.payer.telegram_user_id, intent.sku.name) == (BUYER, "premium_30d")
    assert intent.cancel_at_period_end is cancel_at_period_end
    assert intent.current_period_end is not None and intent.ended_at is None


@pytest.mark.parametrize("version", API_VERSIONS)
def test_a_failed_renewal_puts_the_subscription_past_due_from_its_period_start(
    catalogue: Catalogue, version: str
) -> None:
    event = stripe(version, "invoice.payment_failed")
    invoice = event["data"]["object"]
    intent = stripe_events.interpret(event, catalogue)
    subscription = stripe(version, "customer.subscription.deleted")["data"]["object"]["id"]
    assert isinstance(intent, SubscriptionChange)
    assert (intent.subscription_id, intent.status) == (subscription, "past_due")
    assert intent.payer.telegram_user_id == BUYER
    assert intent.grace_from is not None
    assert intent.grace_from.timestamp() == invoice["lines"]["data"][0]["period"]["start"]


def test_a_basil_invoice_payment_links_the_subscription_charge_to_its_invoice(
    catalogue: Catalogue,
) -> None:
    version = "2025-03-31.basil"
    charge = stripe(version, "charge.succeeded.subscription")["data"]["object"]
    invoice = stripe(version, "invoice.paid")["data"]["object"]
    intent = stripe_events.interpret(stripe(version, "invoice_payment.paid"), catalogue)
    assert isinstance(intent, LinkInvoicePayment)
    assert (intent.payment_key, intent.invoice_id) == (charge["payment_intent"], invoice["id"])


# --- Telegram Bot API updates -----------------------------------------------------------------


def test_a_real_pre_checkout_query_for_a_catalogue_sku_is_accepted(catalogue: Catalogue) -> None:
    update = fixture("telegram", "pre_checkout_query.json")
    assert telegram_updates.update_kind(update) == "pre_checkout_query"
    assert telegram_updates.pre_checkout(catalogue, update["pre_checkout_query"]).ok


def test_a_real_stars_payment_grants_its_buyer_the_sku_of_its_payload(
    catalogue: Catalogue,
) -> None:
    update = fixture("telegram", "successful_payment.json")
    intent = telegram_updates.interpret(update, catalogue)
    payment = update["message"]["successful_payment"]
    assert isinstance(intent, Grant)
    assert (intent.payer.telegram_user_id, intent.sku.name, intent.payment_key) == (
        BUYER,
        "premium_30d",
        payment["telegram_payment_charge_id"],
    )
    assert intent.until is None and intent.subscription_id is None


def test_a_real_recurring_stars_payment_grants_until_the_subscription_expires(
    catalogue: Catalogue,
) -> None:
    update = fixture("telegram", "successful_payment.recurring.json")
    intent = telegram_updates.interpret(update, catalogue)
    payment = update["message"]["successful_payment"]
    assert isinstance(intent, Grant) and intent.sku.name == "premium_monthly"
    assert intent.until is not None
    assert intent.until.timestamp() == payment["subscription_expiration_date"]
    assert intent.subscription_id == f"{BUYER}:premium_monthly"


def test_a_real_stars_refund_revokes_the_charge_it_names(catalogue: Catalogue) -> None:
    paid = fixture("telegram", "successful_payment.json")["message"]["successful_payment"]
    intent = telegram_updates.interpret(fixture("telegram", "refunded_payment.json"), catalogue)
    assert isinstance(intent, Revoke)
    assert (intent.payment_key, intent.amount_refunded) == (
        paid["telegram_payment_charge_id"],
        paid["total_amount"],
    )


@pytest.mark.parametrize(
    ("name", "user_at"),
    [
        ("chat_join_request", ("chat_join_request", "from", "id")),
        ("chat_member", ("chat_member", "new_chat_member", "user", "id")),
    ],
)
def test_real_channel_updates_reach_channel_access_with_their_chat_and_user(
    catalogue: Catalogue, name: str, user_at: tuple[str, ...]
) -> None:
    """Channel access reads the chat and the user where the Bot API puts them."""
    update = fixture("telegram", f"{name}.json")
    assert telegram_updates.update_kind(update) == name
    intent = telegram_updates.interpret(update, catalogue)
    assert isinstance(intent, ChannelUpdate) and intent.kind == name
    found: Any = intent.update
    for key in user_at:
        found = found[key]
    assert found == BUYER
    assert intent.update[name]["chat"]["id"] < 0  # a channel's id, as Telegram gives it
