"""Subscription payments through the real gateway and services, as Stripe sends them: a basil
charge that names only its customer, an invoice with its payments expanded, a pre-basil payment
intent of an invoice, a renewal paid partly from credit, and a dispute won on a renewal."""

from __future__ import annotations

import itertools
import json
import secrets
import time
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.ops.factories import stripe_event
from paylayer.settings import REPO_ROOT
from protos.payments.v1 import payments_pb2_grpc
from tests.payments.helpers import (
    DAY,
    check,
    days_left,
    eventually,
    new_buyer,
    post_stripe,
    user_of_telegram,
    wait_settled,
)
from tests.payments.test_money_matches_access import (
    active_grants,
    deliver,
    dispute_closed,
    event_error,
    invoice_payment_paid,
    ledger_status,
    payments_stub,
    pi,
)
from tests.stack import Stack

__all__ = ["payments_stub"]  # the fixture, shared

BASIL = REPO_ROOT / "tests" / "fixtures" / "stripe" / "2025-03-31.basil"


def basil_payload(name: str, buyer: int, ids: dict[str, str], period_days: int = 30) -> Any:
    """A basil fixture with this test's own ids, buyer and times (now, and a period ahead)."""
    text = (BASIL / f"{name}.json").read_text()
    now = int(time.time())
    replacements = {
        "cus_QBbuyer00001": ids["customer"],
        "in_1QBsubscr000001": ids["invoice"],
        "sub_1QBmonthly0001": ids["subscription"],
        "pi_3QBsubscr0000000001": ids["intent"],
        "ch_3QBsubscr0000000001": f"ch_{secrets.token_hex(8)}",
        '"123456789"': f'"{buyer}"',
        "1769817600": str(now + period_days * DAY),
        "1767225602": str(now),
        "1767225600": str(now),
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    event = json.loads(text)
    event["id"] = f"evt_{secrets.token_hex(12)}"
    return event


def basil_ids() -> dict[str, str]:
    return {
        "customer": f"cus_{secrets.token_hex(8)}",
        "invoice": f"in_{secrets.token_hex(8)}",
        "subscription": f"sub_{secrets.token_hex(8)}",
        "intent": pi(),
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["charge", "invoice", "link"])))
async def test_a_basil_charge_naming_only_its_customer_ends_granted_once_in_any_order(
    stack: Stack,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    order: tuple[str, ...],
) -> None:
    """From basil on a subscription's charge has empty metadata and a customer nobody has
    linked yet: it waits for its invoice (which links the customer) instead of failing."""
    buyer, ids = new_buyer(), basil_ids()
    events = {
        "charge": basil_payload("charge.succeeded.subscription", buyer, ids),
        "invoice": basil_payload("invoice.paid", buyer, ids),
        "link": invoice_payment_paid(ids["intent"], ids["invoice"]),
    }
    assert events["charge"]["data"]["object"]["metadata"] == {}
    for name in order:
        assert (await post_stripe(http, stack, events[name]))[0] == 200, name
        if name != "charge":
            # The charge may be waiting for the invoice; the others settle at once.
            await wait_settled(engine, "stripe", [events[name]["id"]])
    statuses = await wait_settled(
        engine, "stripe", [event["id"] for event in events.values()], within=90
    )
    assert statuses[events["charge"]["id"]] in ("processed", "ignored"), statuses
    assert statuses[events["invoice"]["id"]] == "processed"
    assert await active_grants(engine, [ids["invoice"]]) == 1
    assert await active_grants(engine, [ids["intent"]]) == 0
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(
        lambda: check(stack, user_id, "premium"), lambda r: r.active and len(r.grants) == 1
    )
    assert len(reply.grants) == 1 and reply.grants[0].source.reference == ids["invoice"]
    assert 29.9 < days_left(reply) <= 30


async def test_an_invoice_with_payments_expanded_and_its_charge_grant_once_and_refund(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    """A basil invoice fetched with `expand[]=payments` names its payment intent: the charge
    of that intent is the same purchase, and its refund revokes the invoice's grant."""
    buyer, ids = new_buyer(), basil_ids()
    invoice = basil_payload("invoice.paid", buyer, ids)
    invoice["data"]["object"]["payments"] = {
        "object": "list",
        "data": [
            {
                "id": f"inpay_{secrets.token_hex(8)}",
                "object": "invoice_payment",
                "status": "paid",
                "payment": {"type": "payment_intent", "payment_intent": ids["intent"]},
            }
        ],
        "has_more": False,
    }
    charge = basil_payload("charge.succeeded.subscription", buyer, ids)
    assert await deliver(http, stack, engine, invoice) == "processed"
    assert await deliver(http, stack, engine, charge) in ("processed", "ignored")
    assert await active_grants(engine, [ids["intent"]]) == 1
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert len(reply.grants) == 1 and 29.9 < days_left(reply) <= 30
    refund = stripe_event("charge.refunded", catalogue, payment_intent=ids["intent"])
    assert await deliver(http, stack, engine, refund) == "processed"
    assert await active_grants(engine, [ids["intent"], ids["invoice"]]) == 0
    assert not (await check(stack, user_id, "premium")).active


async def test_a_won_dispute_of_a_basil_renewal_gives_its_period_back(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, ids = new_buyer(), basil_ids()
    for event in (
        basil_payload("invoice.paid", buyer, ids),
        invoice_payment_paid(ids["intent"], ids["invoice"]),
        stripe_event("charge.dispute.created", catalogue, payment_intent=ids["intent"]),
    ):
        assert await deliver(http, stack, engine, event) == "processed"
    user_id = await user_of_telegram(stack, buyer)
    assert not (await check(stack, user_id, "premium")).active
    won = dispute_closed(catalogue, ids["intent"], "won")
    assert await deliver(http, stack, engine, won) == "processed"
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert 29.9 < days_left(reply) <= 30
    assert await ledger_status(engine, ids["invoice"]) == "dispute_won"


async def test_a_pre_basil_payment_intent_of_an_invoice_leaves_the_grant_to_the_invoice(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    """Up to 2024-06-20 `payment_intent.succeeded` names its invoice and shares its key: arriving
    first, it must not grant the sku's 30 days from its own date (the period here is 10)."""
    buyer, intent, invoice_id = new_buyer(), pi(), f"in_{secrets.token_hex(8)}"
    payment = stripe_event(
        "payment_intent.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    payment["data"]["object"]["invoice"] = invoice_id
    invoice = stripe_event(
        "invoice.paid",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
        period_end=int(time.time()) + 10 * DAY,
    )
    invoice["data"]["object"]["id"] = invoice_id
    assert await deliver(http, stack, engine, payment) == "ignored"
    assert await active_grants(engine, [intent]) == 0
    assert await deliver(http, stack, engine, invoice) == "processed"
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert len(reply.grants) == 1 and 9.9 < days_left(reply) <= 10


async def test_a_renewal_is_priced_by_its_line_not_by_what_was_left_to_pay(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    """A renewal paid partly from the customer's credit balance, with an upgrade's proration
    line, grants; an invoice whose subscription line is below the price does not."""
    buyer = new_buyer()
    renewal = stripe_event("invoice.paid", catalogue, sku="premium_30d", telegram_user_id=buyer)
    invoice = renewal["data"]["object"]
    invoice["amount_paid"] = 400
    invoice["lines"]["data"].insert(
        0,
        {
            "id": f"il_{secrets.token_hex(8)}",
            "object": "line_item",
            "amount": -1500,
            "currency": "usd",
            "proration": True,
            "period": invoice["lines"]["data"][0]["period"],
        },
    )
    assert await deliver(http, stack, engine, renewal) == "processed"
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert reply.active

    underpaid = stripe_event(
        "invoice.paid", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    underpaid["data"]["object"]["lines"]["data"][0]["amount"] = 100
    assert await deliver(http, stack, engine, underpaid) == "failed"
    shown = await event_error(payments_stub, underpaid["id"], "invoice.paid")
    assert shown.error.startswith("[price_mismatch]"), shown.error
