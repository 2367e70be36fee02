"""Money matches access, through the real gateway and services: what was not paid for is never
granted, what was paid back is revoked, whatever the order the events come in."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.tables import grants
from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event, telegram_update
from payments_service import telegram_updates
from payments_service.tables import payments
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.payments.helpers import (
    check,
    days_left,
    eventually,
    new_buyer,
    post_stripe,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack
from tests.test_metrics import scrape, value


@pytest.fixture
async def payments_stub(stack: Stack) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceStub]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


async def listed(stack: Stack, provider: str, event_id: str) -> payments_pb2.Event:
    """The event as an operator sees it in ListEvents (newest first, so a recent one is in the
    first page)."""
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).ListEvents(
            payments_pb2.ListEventsRequest(provider=provider, page_size=200)
        )
    return next(event for event in reply.events if event.event_id == event_id)


def listed_status(status: str) -> int:
    """The ListEvents status of an inbox status (processed, failed …)."""
    return int(payments_pb2.EventStatus.Value(f"EVENT_STATUS_{status.upper()}"))


async def deliver(
    http: aiohttp.ClientSession, stack: Stack, engine: AsyncEngine, event: dict[str, Any]
) -> str:
    """Post a signed event and wait until it is applied (or kept failed): its status, the same
    in the inbox and in ListEvents."""
    status, _ = await post_stripe(http, stack, event)
    assert status == 200
    settled = (await wait_settled(engine, "stripe", [event["id"]]))[event["id"]]
    assert (await listed(stack, "stripe", event["id"])).status == listed_status(settled)
    return settled


async def active_grants(engine: AsyncEngine, references: list[str]) -> int:
    """Grants of these payments that stand (not revoked), straight from entitlements' table."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).where(
                grants.c.provider == "stripe",
                grants.c.reference.in_(references),
                grants.c.user_id.is_not(None),
                grants.c.revoked_at.is_(None),
            )
        )
    return int(count or 0)


async def ledger_status(engine: AsyncEngine, payment_key: str) -> str | None:
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(payments.c.status).where(payments.c.payment_key == payment_key)
        )
    return str(found) if found is not None else None


async def event_error(
    stub: payments_pb2_grpc.PaymentsServiceStub, event_id: str, event_type: str
) -> payments_pb2.Event:
    """The event as an operator sees it in ListEvents."""
    reply = await stub.ListEvents(
        payments_pb2.ListEventsRequest(
            provider="stripe", event_type=event_type, status=payments_pb2.EVENT_STATUS_FAILED
        )
    )
    return next(event for event in reply.events if event.event_id == event_id)


def failed_count(samples: dict, reason: str) -> float:  # type: ignore[type-arg]
    return value(samples, "paylayer_payments_events_failed_total", provider="stripe", reason=reason)


def pi() -> str:
    return f"pi_{secrets.token_hex(8)}"


# --- what was not paid for grants nothing -------------------------------------------------


def underpaid_vip(catalogue: Catalogue, buyer: int) -> dict[str, Any]:
    return stripe_event(
        "charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer, amount=100
    )


def premium_in_eur(catalogue: Catalogue, buyer: int) -> dict[str, Any]:
    return stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer, currency="eur"
    )


def lifetime_for_one_yen(catalogue: Catalogue, buyer: int) -> dict[str, Any]:
    return stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_life",
        telegram_user_id=buyer,
        amount=1,
        currency="jpy",
    )


def live_event_in_test_mode(catalogue: Catalogue, buyer: int) -> dict[str, Any]:
    return stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer, livemode=True
    )


@pytest.mark.parametrize(
    ("build", "entitlement", "reason"),
    [
        (underpaid_vip, "vip", "price_mismatch"),
        (premium_in_eur, "premium", "price_mismatch"),
        (lifetime_for_one_yen, "premium", "price_mismatch"),
        (live_event_in_test_mode, "premium", "livemode_mismatch"),
    ],
)
async def test_a_signed_event_that_did_not_pay_the_price_grants_nothing(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
    build: Any,
    entitlement: str,
    reason: str,
) -> None:
    metrics_url = f"http://{stack.metrics_addrs['payments']}/metrics"
    before = await scrape(metrics_url)
    buyer = new_buyer()
    event = build(catalogue, buyer)
    assert await deliver(http, stack, engine, event) == "failed"
    shown = await event_error(payments_stub, event["id"], event["type"])
    assert shown.error.startswith(f"[{reason}]")
    key = event["data"]["object"].get("payment_intent") or event["data"]["object"]["id"]
    assert await active_grants(engine, [key]) == 0
    user_id = await user_of_telegram(stack, buyer)
    assert not (await check(stack, user_id, entitlement)).active
    # The counter rose by this one event, and the gauge of failed events waiting for an
    # operator with it (it is refreshed on its own schedule: wait for both).
    gauge = "paylayer_payments_inbox_failed"
    after = await eventually(
        lambda: scrape(metrics_url),
        lambda samples: (
            failed_count(samples, reason) > failed_count(before, reason)
            and value(samples, gauge) > value(before, gauge)
        ),
    )
    assert failed_count(after, reason) - failed_count(before, reason) == 1
    assert value(after, gauge) >= value(before, gauge) + 1


async def test_the_right_price_still_grants_lifetime_and_a_second_currency_grants(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    lifetime = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_life", telegram_user_id=buyer
    )
    vip_in_eur = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="vip_30d",
        telegram_user_id=buyer,
        amount=8900,
        currency="eur",
    )
    for event in (lifetime, vip_in_eur):
        assert await deliver(http, stack, engine, event) == "processed"
    user_id = await user_of_telegram(stack, buyer)
    premium = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.lifetime)
    assert premium.active and premium.lifetime
    vip = await eventually(lambda: check(stack, user_id, "vip"), lambda r: r.active)
    assert 29.9 < days_left(vip) <= 30


async def test_an_authorised_charge_grants_only_once_captured_and_once(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), pi()
    authorised = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    authorised["data"]["object"].update(captured=False, amount_captured=0)
    assert await deliver(http, stack, engine, authorised) == "processed"
    assert await ledger_status(engine, intent) == "authorized"
    assert await active_grants(engine, [intent]) == 0
    views = [
        stripe_event(
            kind, catalogue, sku="premium_30d", telegram_user_id=buyer, payment_intent=intent
        )
        for kind in ("charge.captured", "payment_intent.succeeded")
    ]
    for event in views:
        assert await deliver(http, stack, engine, event) == "processed"
    assert await ledger_status(engine, intent) == "succeeded"
    assert await active_grants(engine, [intent]) == 1
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert len(reply.grants) == 1 and 29.9 < days_left(reply) <= 30


# --- subscription payments: the refund reaches the invoice's grant in any order ---------------


def invoice_paid(
    catalogue: Catalogue, buyer: int, *, basil: bool, intent: str, invoice_id: str
) -> dict[str, Any]:
    event = stripe_event(
        "invoice.paid", catalogue, sku="premium_30d", telegram_user_id=buyer, payment_intent=intent
    )
    invoice = event["data"]["object"]
    invoice["id"] = invoice_id
    if basil:
        # 2025-03-31.basil: the invoice no longer names its payment intent.
        event["api_version"] = "2025-03-31.basil"
        subscription = invoice.pop("subscription")
        invoice.pop("payment_intent")
        invoice["parent"] = {
            "type": "subscription_details",
            "subscription_details": {
                "subscription": subscription,
                "metadata": invoice.pop("subscription_details")["metadata"],
            },
        }
    return event


def invoice_payment_paid(intent: str, invoice_id: str) -> dict[str, Any]:
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": 1_700_000_000,
        "livemode": False,
        "type": "invoice_payment.paid",
        "data": {
            "object": {
                "id": f"inpay_{secrets.token_hex(8)}",
                "object": "invoice_payment",
                "invoice": invoice_id,
                "status": "paid",
                "payment": {"type": "payment_intent", "payment_intent": intent},
                "livemode": False,
            }
        },
    }


def money_back(catalogue: Catalogue, kind: str, intent: str) -> dict[str, Any]:
    event_type = "charge.refunded" if kind == "refund" else "charge.dispute.created"
    return stripe_event(event_type, catalogue, sku="premium_30d", payment_intent=intent)


@pytest.mark.parametrize("kind", ["refund", "dispute"])
@pytest.mark.parametrize("order", list(itertools.permutations(["invoice", "link", "money_back"])))
async def test_basil_subscription_refund_or_dispute_revokes_the_invoice_grant_in_any_order(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    kind: str,
    order: tuple[str, ...],
) -> None:
    buyer, intent, invoice_id = new_buyer(), pi(), f"in_{secrets.token_hex(8)}"
    events = {
        "invoice": invoice_paid(catalogue, buyer, basil=True, intent=intent, invoice_id=invoice_id),
        "link": invoice_payment_paid(intent, invoice_id),
        "money_back": money_back(catalogue, kind, intent),
    }
    for name in order:
        assert await deliver(http, stack, engine, events[name]) == "processed", name
    assert await active_grants(engine, [intent, invoice_id]) == 0
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: not r.active)
    assert not reply.active


@pytest.mark.parametrize("kind", ["refund", "dispute"])
@pytest.mark.parametrize("order", list(itertools.permutations(["invoice", "charge", "money_back"])))
async def test_pre_basil_subscription_refund_or_dispute_revokes_in_any_order(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    kind: str,
    order: tuple[str, ...],
) -> None:
    """Up to 2024-06-20 the invoice names its payment intent, and its charge names the invoice:
    the link travels inside the events themselves."""
    buyer, intent, invoice_id = new_buyer(), pi(), f"in_{secrets.token_hex(8)}"
    charge = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    charge["data"]["object"]["invoice"] = invoice_id
    events = {
        "invoice": invoice_paid(
            catalogue, buyer, basil=False, intent=intent, invoice_id=invoice_id
        ),
        "charge": charge,
        "money_back": money_back(catalogue, kind, intent),
    }
    outcomes = {"invoice": "processed", "charge": "ignored", "money_back": "processed"}
    for name in order:
        assert await deliver(http, stack, engine, events[name]) == outcomes[name], name
    assert await active_grants(engine, [intent, invoice_id]) == 0
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: not r.active)
    assert not reply.active


@pytest.mark.parametrize("order", [("charge", "invoice", "link"), ("link", "charge", "invoice")])
async def test_a_basil_subscription_charge_and_its_invoice_grant_once(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    order: tuple[str, ...],
) -> None:
    """From basil on a subscription's charge no longer names its invoice; once the link is
    known, the invoice's grant is the only one that stands."""
    buyer, intent, invoice_id = new_buyer(), pi(), f"in_{secrets.token_hex(8)}"
    events = {
        "charge": stripe_event(
            "charge.succeeded",
            catalogue,
            sku="premium_30d",
            telegram_user_id=buyer,
            payment_intent=intent,
        ),
        "invoice": invoice_paid(catalogue, buyer, basil=True, intent=intent, invoice_id=invoice_id),
        "link": invoice_payment_paid(intent, invoice_id),
    }
    for name in order:
        assert await deliver(http, stack, engine, events[name]) in ("processed", "ignored")
    assert await active_grants(engine, [invoice_id]) == 1
    assert await active_grants(engine, [intent]) == 0
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(
        lambda: check(stack, user_id, "premium"), lambda r: r.active and len(r.grants) == 1
    )
    assert len(reply.grants) == 1 and reply.grants[0].source.reference == invoice_id


# --- disputes: won gives the time back, lost keeps it revoked --------------------------------


def dispute_closed(catalogue: Catalogue, intent: str, status: str) -> dict[str, Any]:
    event = stripe_event("charge.dispute.closed", catalogue, payment_intent=intent)
    event["data"]["object"]["status"] = status
    return event


async def test_a_won_dispute_gives_the_time_back_and_a_lost_one_does_not(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    won_buyer, lost_buyer = new_buyer(), new_buyer()
    won_intent, lost_intent = pi(), pi()
    for buyer, intent, outcome in (
        (won_buyer, won_intent, "won"),
        (lost_buyer, lost_intent, "lost"),
    ):
        for event in (
            stripe_event(
                "charge.succeeded",
                catalogue,
                sku="vip_30d",
                telegram_user_id=buyer,
                payment_intent=intent,
            ),
            stripe_event("charge.dispute.created", catalogue, payment_intent=intent),
            dispute_closed(catalogue, intent, outcome),
        ):
            assert await deliver(http, stack, engine, event) == "processed"
    won_user = await user_of_telegram(stack, won_buyer)
    reply = await eventually(lambda: check(stack, won_user, "vip"), lambda r: r.active)
    assert 29.9 < days_left(reply) <= 30
    assert await ledger_status(engine, won_intent) == "dispute_won"
    lost_user = await user_of_telegram(stack, lost_buyer)
    assert not (await check(stack, lost_user, "vip")).active
    assert await ledger_status(engine, lost_intent) == "dispute_lost"
    assert await active_grants(engine, [lost_intent, f"{lost_intent}:dispute_won"]) == 0


async def test_a_won_dispute_that_arrives_first_waits_for_its_payment(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), pi()
    won = dispute_closed(catalogue, intent, "won")
    status, _ = await post_stripe(http, stack, won)
    assert status == 200
    for event in (
        stripe_event("charge.dispute.created", catalogue, payment_intent=intent),
        stripe_event(
            "charge.succeeded",
            catalogue,
            sku="premium_30d",
            telegram_user_id=buyer,
            payment_intent=intent,
        ),
    ):
        assert await deliver(http, stack, engine, event) == "processed"
    assert (await wait_settled(engine, "stripe", [won["id"]], within=60))[won["id"]] == "processed"
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert 29.9 < days_left(reply) <= 30


# --- Telegram: a payment is its charge, whatever its update_id ------------------------------


async def test_a_new_stars_charge_under_a_reused_update_id_is_granted(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    metrics_url = f"http://{stack.metrics_addrs['payments']}/metrics"
    labels = {"provider": "telegram", "type": "successful_payment", "outcome": "processed"}
    before = await scrape(metrics_url)
    buyer = new_buyer()
    update_id = 1 + secrets.randbelow(1000)  # as after Telegram restarts its count
    first, second = (
        telegram_update(
            "payment", catalogue, telegram_user_id=buyer, sku="premium_30d", update_id=update_id
        )
        for _ in range(2)
    )
    keys = []
    for update in (first, second, first):  # the first delivered twice: it counts once
        assert (await post_telegram(http, stack, update))[0] == 200
        keys.append(telegram_updates.event_key(update, "successful_payment"))
    statuses = await wait_settled(engine, "telegram", keys)
    assert set(statuses.values()) == {"processed"} and len(statuses) == 2
    for key in set(keys):
        shown = await listed(stack, "telegram", key)
        assert shown.status == payments_pb2.EVENT_STATUS_PROCESSED, shown
    finished = "paylayer_payments_events_finished_total"
    after = await eventually(
        lambda: scrape(metrics_url),
        lambda samples: value(samples, finished, **labels) >= value(before, finished, **labels) + 2,
    )
    # Two charges processed; the repeated delivery of the first is not a third.
    assert value(after, finished, **labels) == value(before, finished, **labels) + 2
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: len(r.grants) == 2)
    assert len(reply.grants) == 2 and 59.9 < days_left(reply) <= 60


# --- a payload the database refuses fails at once, and says why ------------------------------


async def test_a_payload_the_database_refuses_is_failed_at_once_with_its_reason(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    event = stripe_event("charge.failed", catalogue, payment_intent="pi_\u0000nul")
    assert await deliver(http, stack, engine, event) == "failed"
    shown = await event_error(payments_stub, event["id"], "charge.failed")
    assert shown.error.startswith("[database_refused]") and shown.attempts == 1
