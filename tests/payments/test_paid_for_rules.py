"""Grant only what was paid for: price, currency, mode and capture, as plain functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from gateway.stripe_webhook import Rejected, _signed_at, verify
from paylayer.catalogue import Catalogue, Price, load_catalogue
from paylayer.ops.factories import sign_stripe, stripe_event
from paylayer.settings import REPO_ROOT, ConfigError, Settings
from payments_service.intents import (
    Grant,
    Ignore,
    LinkInvoicePayment,
    PaymentNote,
    Reinstate,
    Unprocessable,
)
from payments_service.stripe_events import interpret


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    # vip_30d is sold in usd and eur there, and allows discounts.
    return load_catalogue(REPO_ROOT / "tests" / "catalogue.yaml")


def refused_with(event: dict[str, Any], catalogue: Catalogue, *, livemode: bool = False) -> str:
    with pytest.raises(Unprocessable) as refused:
        interpret(event, catalogue, livemode=livemode)
    return refused.value.code


@pytest.mark.parametrize(
    "event_type", ["charge.succeeded", "payment_intent.succeeded", "checkout.session.completed"]
)
def test_an_underpayment_is_a_price_mismatch_on_every_granting_path(
    catalogue: Catalogue, event_type: str
) -> None:
    event = stripe_event(event_type, catalogue, sku="vip_30d", telegram_user_id=1, amount=100)
    assert refused_with(event, catalogue) == "price_mismatch"


def test_a_currency_the_sku_is_not_sold_in_is_a_price_mismatch(catalogue: Catalogue) -> None:
    eur = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=1, currency="eur"
    )
    assert refused_with(eur, catalogue) == "price_mismatch"
    yen = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_life",
        telegram_user_id=1,
        amount=1,
        currency="jpy",
    )
    assert refused_with(yen, catalogue) == "price_mismatch"


def test_a_second_currency_at_its_own_price_grants(catalogue: Catalogue) -> None:
    event = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="vip_30d",
        telegram_user_id=1,
        amount=8900,
        currency="EUR",
    )
    intent = interpret(event, catalogue)
    assert isinstance(intent, Grant) and intent.sku.name == "vip_30d"
    # The usd price in eur is not the eur price.
    event = stripe_event(
        "charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=1, currency="eur"
    )
    assert refused_with(event, catalogue) == "price_mismatch"


def test_a_price_match_alone_tells_what_was_bought(catalogue: Catalogue) -> None:
    event = stripe_event("charge.succeeded", catalogue, telegram_user_id=1, amount=8900)
    event["data"]["object"]["currency"] = "eur"
    intent = interpret(event, catalogue)
    assert isinstance(intent, Grant) and intent.sku.name == "vip_30d"


def checkout(catalogue: Catalogue, sku: str, **totals: int) -> dict[str, Any]:
    event = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku=sku,
        telegram_user_id=1,
        amount=totals.pop("amount_total"),
    )
    event["data"]["object"]["total_details"] = {"amount_discount": 0, "amount_tax": 0, **totals}
    return event


def test_tax_reported_apart_is_not_part_of_the_price(catalogue: Catalogue) -> None:
    taxed = checkout(catalogue, "premium_30d", amount_total=3190, amount_tax=290)
    assert isinstance(interpret(taxed, catalogue), Grant)
    untaxed_extra = checkout(catalogue, "premium_30d", amount_total=3190)
    assert refused_with(untaxed_extra, catalogue) == "price_mismatch"


def test_a_discount_counts_only_for_a_sku_that_allows_discounts(catalogue: Catalogue) -> None:
    allowed = checkout(catalogue, "vip_30d", amount_total=7900, amount_discount=2000)
    assert isinstance(interpret(allowed, catalogue), Grant)
    refused = checkout(catalogue, "premium_30d", amount_total=900, amount_discount=2000)
    assert refused_with(refused, catalogue) == "price_mismatch"
    # A discount must account for the whole difference, no more and no less.
    short = checkout(catalogue, "vip_30d", amount_total=100, amount_discount=2000)
    assert refused_with(short, catalogue) == "price_mismatch"


@pytest.mark.parametrize(("event_live", "deployment_live"), [(True, False), (False, True)])
def test_an_event_of_the_other_mode_is_refused(
    catalogue: Catalogue, event_live: bool, deployment_live: bool
) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=1, livemode=event_live
    )
    assert refused_with(event, catalogue, livemode=deployment_live) == "livemode_mismatch"
    assert isinstance(interpret(event, catalogue, livemode=event_live), Grant)


def test_livemode_follows_the_setting_else_the_api_key() -> None:
    assert Settings.from_env({"STRIPE_API_KEY": "sk_live_x"}).stripe_livemode
    assert Settings.from_env({"STRIPE_API_KEY": "rk_live_x"}).stripe_livemode
    assert not Settings.from_env({"STRIPE_API_KEY": "sk_test_x"}).stripe_livemode
    assert not Settings.from_env({}).stripe_livemode
    assert not Settings.from_env(
        {"STRIPE_API_KEY": "sk_live_x", "STRIPE_LIVEMODE": "false"}
    ).stripe_livemode
    assert Settings.from_env({"STRIPE_LIVEMODE": "true"}).stripe_livemode
    with pytest.raises(ConfigError):
        Settings.from_env({"STRIPE_LIVEMODE": "maybe"})


def test_an_uncaptured_charge_is_authorized_and_its_capture_grants(catalogue: Catalogue) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=1, payment_intent="pi_1"
    )
    event["data"]["object"].update(captured=False, amount_captured=0)
    intent = interpret(event, catalogue)
    assert isinstance(intent, PaymentNote) and intent.status == "authorized"
    captured = stripe_event(
        "charge.captured", catalogue, sku="premium_30d", telegram_user_id=1, payment_intent="pi_1"
    )
    granted = interpret(captured, catalogue)
    assert isinstance(granted, Grant) and granted.payment_key == "pi_1"
    # A partial capture did not pay the price.
    captured["data"]["object"]["amount_captured"] = 1000
    assert refused_with(captured, catalogue) == "price_mismatch"


def basil_invoice(catalogue: Catalogue, **overrides: Any) -> dict[str, Any]:
    """invoice.paid as API 2025-03-31.basil sends it: no payment_intent, subscription under
    parent, taxes in total_taxes."""
    event = stripe_event("invoice.paid", catalogue, sku="premium_30d", telegram_user_id=1)
    invoice = event["data"]["object"]
    for gone in ("payment_intent", "subscription", "subscription_details"):
        invoice.pop(gone)
    invoice["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_1", "metadata": {"sku": "premium_30d"}},
    }
    invoice.update(overrides)
    event["api_version"] = "2025-03-31.basil"
    return event


def test_a_basil_invoice_is_keyed_by_its_id_and_its_payment_links_to_it(
    catalogue: Catalogue,
) -> None:
    event = basil_invoice(catalogue)
    intent = interpret(event, catalogue)
    assert isinstance(intent, Grant)
    assert intent.payment_key == event["data"]["object"]["id"] == intent.invoice_id
    assert intent.subscription_id == "sub_1"
    link = {
        **event,
        "type": "invoice_payment.paid",
        "data": {
            "object": {
                "id": "inpay_1",
                "object": "invoice_payment",
                "invoice": intent.invoice_id,
                "status": "paid",
                "payment": {"type": "payment_intent", "payment_intent": "pi_9"},
            }
        },
    }
    assert interpret(link, catalogue) == LinkInvoicePayment("stripe", "pi_9", intent.invoice_id)


def test_invoice_tax_is_not_part_of_the_price_on_either_api_version(catalogue: Catalogue) -> None:
    # Exclusive tax is billed outside the line: the invoice's total is more than the price.
    basil = basil_invoice(catalogue, amount_paid=3190, total_taxes=[{"amount": 290}])
    assert isinstance(interpret(basil, catalogue), Grant)
    older = stripe_event("invoice.paid", catalogue, sku="premium_30d", telegram_user_id=1)
    older["data"]["object"].update(amount_paid=3190, tax=290)
    assert isinstance(interpret(older, catalogue), Grant)
    # Inclusive tax is inside the line's amount, and set apart: 3190 with 290 of it tax.
    line = older["data"]["object"]["lines"]["data"][0]
    line.update(amount=3190, tax_amounts=[{"amount": 290, "inclusive": True}])
    assert isinstance(interpret(older, catalogue), Grant)
    basil_line = basil["data"]["object"]["lines"]["data"][0]
    basil_line.update(amount=3190, taxes=[{"amount": 290, "tax_behavior": "inclusive"}])
    assert isinstance(interpret(basil, catalogue), Grant)
    # The same 3190 with no tax in it is not the price.
    line["tax_amounts"] = [{"amount": 290, "inclusive": False}]
    assert refused_with(older, catalogue) == "price_mismatch"
    basil_line["taxes"] = []
    assert refused_with(basil, catalogue) == "price_mismatch"


def proration(amount: int, *, basil: bool) -> dict[str, Any]:
    """An upgrade's proration line, in either version's shape."""
    line: dict[str, Any] = {
        "id": "il_proration",
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "period": {"start": 1_900_000_000, "end": 1_902_592_000},
    }
    if basil:
        line["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": {"proration": True, "subscription": "sub_1"},
        }
        line["pricing"] = {"type": "price_details", "price_details": {"price": "price_old"}}
    else:
        line.update(proration=True, price={"id": "price_old", "unit_amount": 900})
    return line


@pytest.mark.parametrize("basil", [False, True])
def test_the_subscription_line_is_the_price_not_the_whole_invoice(
    catalogue: Catalogue, basil: bool
) -> None:
    """A renewal paid partly from the customer's credit balance, and one with a proration line:
    `amount_paid` is not the price, the subscription's line is."""
    event = (
        basil_invoice(catalogue)
        if basil
        else stripe_event("invoice.paid", catalogue, sku="premium_30d", telegram_user_id=1)
    )
    invoice = event["data"]["object"]
    invoice["amount_paid"] = 900  # 2000 of the 2900 came from the credit balance
    assert isinstance(interpret(event, catalogue), Grant)
    invoice["lines"]["data"].insert(0, proration(-1500, basil=basil))
    invoice["amount_paid"] = 1400
    granted = interpret(event, catalogue)
    assert isinstance(granted, Grant) and granted.sku.name == "premium_30d"
    # Without metadata.sku the line's own price tells the sku, the proration is passed over.
    details = (
        invoice["parent"]["subscription_details"] if basil else invoice["subscription_details"]
    )
    details["metadata"] = {}
    invoice["metadata"] = {"telegram_user_id": "1"}
    invoice["lines"]["data"][1]["metadata"] = {}
    granted = interpret(event, catalogue)
    assert isinstance(granted, Grant) and granted.sku.name == "premium_30d"
    # The subscription's line itself underpaid: refused, whatever the invoice's total.
    invoice["lines"]["data"][1]["amount"] = 100
    invoice["amount_paid"] = 2900
    assert refused_with(event, catalogue) == "unknown_sku"
    invoice["metadata"] = {"telegram_user_id": "1", "sku": "premium_30d"}
    assert refused_with(event, catalogue) == "price_mismatch"


def test_an_invoice_with_payments_expanded_is_keyed_by_its_payment_intent(
    catalogue: Catalogue,
) -> None:
    """Basil with `expand[]=payments`: the invoice names the intent that paid it after all."""
    event = basil_invoice(catalogue)
    event["data"]["object"]["payments"] = {
        "object": "list",
        "data": [
            {
                "id": "inpay_1",
                "object": "invoice_payment",
                "status": "paid",
                "payment": {"type": "payment_intent", "payment_intent": "pi_expanded"},
            }
        ],
    }
    granted = interpret(event, catalogue)
    assert isinstance(granted, Grant) and granted.payment_key == "pi_expanded"
    assert granted.invoice_id == event["data"]["object"]["id"]


@pytest.mark.parametrize("event_type", ["payment_intent.succeeded", "charge.succeeded"])
def test_a_pre_basil_payment_of_an_invoice_is_left_to_the_invoice(
    catalogue: Catalogue, event_type: str
) -> None:
    """Up to 2024-06-20 a subscription's payment intent and charge name their invoice, and share
    its key: granting on them would grant the sku's days from their own date instead."""
    event = stripe_event(event_type, catalogue, sku="premium_30d", telegram_user_id=1)
    event["data"]["object"]["invoice"] = "in_1"
    assert isinstance(interpret(event, catalogue), Ignore)
    event["data"]["object"]["invoice"] = None
    assert isinstance(interpret(event, catalogue), Grant)


def test_a_dispute_closed_as_won_gives_back_and_lost_records(catalogue: Catalogue) -> None:
    event = stripe_event(
        "charge.dispute.created", catalogue, telegram_user_id=1, payment_intent="pi_5"
    )
    event["type"] = "charge.dispute.closed"
    event["data"]["object"]["status"] = "won"
    assert interpret(event, catalogue) == Reinstate("stripe", "pi_5")
    event["data"]["object"]["status"] = "lost"
    lost = interpret(event, catalogue)
    assert isinstance(lost, PaymentNote) and lost.status == "dispute_lost"
    event["data"]["object"]["status"] = "warning_closed"
    assert isinstance(interpret(event, catalogue), Ignore)


# --- the Stripe-Signature header, read as the stripe library reads it -----------------------

SECRET = "whsec_rules_" + "0" * 16
BODY = b'{"id": "evt_1", "object": "event", "type": "ping", "data": {"object": {}}}'
NOW = 1_900_000_000


def test_the_future_check_reads_the_timestamp_the_library_verified() -> None:
    good = sign_stripe(BODY.decode(), SECRET, NOW)
    # A leading " t=" key is not the library's "t": it verifies the later one, and so do we.
    for stray in (f" t={NOW + 10_000}", " t=abc", "t =1", "v1=zz"):
        assert verify(BODY, f"{stray},{good}", (SECRET,), NOW)["id"] == "evt_1"
    with pytest.raises(Rejected) as refused:
        verify(BODY, sign_stripe(BODY.decode(), SECRET, NOW + 301), (SECRET,), NOW)
    assert refused.value.reason == "future_timestamp"


header_parts = st.lists(
    st.one_of(
        st.sampled_from(["t", "v1", " t", "t ", "v0", "T", ""]).flatmap(
            lambda key: st.text(max_size=20).map(lambda value: f"{key}={value}")
        ),
        st.text(max_size=30),
        st.just(f"t={NOW}"),
        st.just("v1=" + "a" * 64),
    ),
    max_size=6,
)


@given(
    parts=header_parts,
    signed=st.booleans(),
    secrets=st.lists(st.sampled_from([SECRET, "whsec_other"]), min_size=1),
)
def test_any_header_is_verified_or_refused_never_an_error(
    parts: list[str], signed: bool, secrets: list[str]
) -> None:
    # With a valid signature among the noise, what follows verification is exercised too.
    good = [sign_stripe(BODY.decode(), SECRET, NOW)] if signed else []
    header = ",".join(parts + good)
    try:
        verify(BODY, header, tuple(secrets), NOW)
    except Rejected as rejection:
        assert rejection.status == 400


def test_the_stripe_library_still_has_the_header_parser_the_gateway_uses() -> None:
    """The gateway's future-timestamp check reads the verified timestamp with the library's own
    parser, a private function (`_signed_at` in gateway/stripe_webhook.py). An upgrade of
    `stripe` that removes or changes it fails here, by name, not as 500s on live webhooks."""
    parse = getattr(stripe.WebhookSignature, "_get_timestamp_and_signatures", None)
    assert callable(parse), (
        "stripe.WebhookSignature._get_timestamp_and_signatures is gone: rewrite _signed_at in "
        "gateway/stripe_webhook.py to parse the header as this stripe version does"
    )
    scheme = stripe.WebhookSignature.EXPECTED_SCHEME
    assert parse(f" t=1,t={NOW},v1=ab,v0=cd,v1=ef", scheme) == (NOW, ["ab", "ef"])
    good = sign_stripe(BODY.decode(), SECRET, NOW)
    assert _signed_at(f"{good},t={NOW + 10_000}") == NOW


# --- the catalogue's prices ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stripe_prices", "refusal"),
    [
        ("[{amount: 2900, currency: usd}, {amount: 2700, currency: USD}]", "one Stripe price"),
        ("{amount: 0, currency: usd}", "positive amount"),
        ("{amount: -5, currency: usd}", "positive amount"),
        ("{amount: '2900', currency: usd}", "positive amount"),
        ("{amount: 29.5, currency: usd}", "positive amount"),
        ("{amount: 2900}", "positive amount"),
        ("[{amount: 2900, currency: usd}, 7]", "positive amount"),
    ],
)
def test_the_catalogue_refuses_two_prices_in_a_currency_or_a_bad_price(
    tmp_path: Path, stripe_prices: str, refusal: str
) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(
        "tiers: {premium: {}}\n"
        f"skus:\n  premium_30d: {{grants: premium, days: 30, stripe: {stripe_prices}}}\n"
    )
    with pytest.raises(ValueError, match=refusal):
        load_catalogue(path)
    path.write_text(
        "tiers: {premium: {}}\nskus:\n  premium_30d: {grants: premium, days: 30, "
        "stripe: [{amount: 2900, currency: usd}, {amount: 2700, currency: eur}]}\n"
    )
    sold = load_catalogue(path).skus["premium_30d"]
    assert sold.stripe_price("EUR") == Price(2700, "eur")
