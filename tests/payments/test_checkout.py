"""Selling by card from the bot, end to end: Checkout Sessions made through the `stripe`
library against a local Stripe, paid by the signed webhooks Stripe would then send; Stripe
refunds and reconcile; subscriptions on both channels, with access checked at every step."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event, telegram_update
from paylayer.settings import REPO_ROOT
from payments_service.tables import inbox
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import KNOWN_SECRETS, fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.fakes.stripe_api import FakeStripe, Recorded
from tests.payments.helpers import (
    DAY,
    check,
    event_statuses,
    new_buyer,
    post_stripe,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack

SUCCESS_URL = "https://bot.example/paid"
# A monthly sku sold by a Price made at Stripe (`stripe_price_id`), not by inline price data.
PRICED_SKU = "premium_monthly_by_price"


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[FakeStripe]:
    server = FakeStripe(api_key="sk_test_" + secrets.token_hex(12))
    KNOWN_SECRETS.append(server.api_key)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stripe_database_url(admin_database_url: str) -> Iterator[str]:
    """A database of its own: on the session's, that stack's workers (whose catalogue has no
    Price-sold sku) would claim these events too."""
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def engine(stripe_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(stripe_database_url, application_name="tests", pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def stripe_stack(
    stripe_database_url: str,
    bot_api: FakeBotApi,
    stripe_api: FakeStripe,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    settings = make_settings(stripe_database_url, bot_api)
    raw = yaml.safe_load((REPO_ROOT / "tests" / "catalogue.yaml").read_text())
    price_id = stripe_api.add_price(1900, "usd", interval="month")
    raw["skus"][PRICED_SKU] = {**raw["skus"]["premium_monthly"], "stripe_price_id": price_id}
    catalogue_path = tmp_path_factory.mktemp("stripe-catalogue") / "catalogue.yaml"
    catalogue_path.write_text(yaml.safe_dump(raw))
    extra = {
        "STRIPE_API_BASE": stripe_api.base_url,
        "STRIPE_API_KEY": stripe_api.api_key,
        "CHECKOUT_SUCCESS_URL": SUCCESS_URL,
        "CATALOGUE_PATH": str(catalogue_path),
    }
    log_dir: Path = tmp_path_factory.mktemp("stripe-stack-logs")
    with running_stack(settings, log_dir, extra_env=extra) as running:
        yield running


@pytest.fixture(scope="module")
def catalogue(stripe_stack: Stack) -> Catalogue:
    return load_catalogue(stripe_stack.settings.catalogue_path)


@pytest.fixture
async def payments(stripe_stack: Stack) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceStub]:
    async with open_channel(
        stripe_stack.addrs["payments"], stripe_stack.settings.internal_token
    ) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def deliver(
    http: aiohttp.ClientSession, stack: Stack, engine: AsyncEngine, event: dict[str, Any]
) -> str:
    """Post a signed event as Stripe would and wait until it is applied; its inbox status."""
    status, _ = await post_stripe(http, stack, event)
    assert status == 200
    return (await wait_settled(engine, "stripe", [event["id"]]))[event["id"]]


def idempotency_key_of(request: Recorded) -> str:
    """The Idempotency-Key a request carried ("" without one), however its case was sent."""
    return next((v for k, v in request.headers.items() if k.lower() == "idempotency-key"), "")


def event_of(event_type: str, obj: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created or int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "type": event_type,
    }


async def grants_of(stack: Stack, user_id: str) -> list[entitlements_pb2.Grant]:
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        reply = await entitlements_pb2_grpc.EntitlementsServiceStub(channel).ListEntitlements(
            entitlements_pb2.ListEntitlementsRequest(user_id=user_id)
        )
    return [grant for grant in reply.grants if not grant.revoked]


# --- Checkout -------------------------------------------------------------------------------


async def test_a_checkout_link_paid_grants_once_to_the_buyer_and_remembers_the_customer(
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
) -> None:
    buyer = new_buyer()
    reply = await payments.CreateCheckoutSession(
        payments_pb2.CreateCheckoutSessionRequest(
            telegram_user_id=buyer, sku="premium_30d", success_url=SUCCESS_URL
        )
    )
    assert reply.url.startswith("https://checkout.stripe.com/")
    user_id = await user_of_telegram(stripe_stack, buyer)
    made = stripe_api.seen("POST", "/v1/checkout/sessions")[-1]
    sent = made.params
    assert idempotency_key_of(made)
    expected_metadata = {"user_id": user_id, "telegram_user_id": str(buyer), "sku": "premium_30d"}
    assert sent["mode"] == "payment" and sent["client_reference_id"] == user_id
    assert sent["metadata"] == sent["payment_intent_data"]["metadata"] == expected_metadata
    assert sent["line_items"]["0"]["price_data"]["unit_amount"] == "2900"

    # The user pays: Stripe completes the session and sends its events, each signed.
    session = copy.deepcopy(stripe_api.sessions[reply.session_id])
    customer = stripe_api.add_customer()
    charge = stripe_api.add_charge(2900, metadata=expected_metadata, customer=customer)
    session.update(
        status="complete",
        payment_status="paid",
        payment_intent=charge["payment_intent"],
        customer=customer,
    )
    for event in (
        event_of("checkout.session.completed", session),
        event_of("charge.succeeded", charge),
    ):
        assert await deliver(http, stripe_stack, engine, event) == "processed"
    grants = await grants_of(stripe_stack, user_id)
    assert [g.source.reference for g in grants] == [charge["payment_intent"]]
    assert (await check(stripe_stack, user_id, "premium")).active

    # The next checkout reuses the customer Stripe made, and the portal opens for it.
    await payments.CreateCheckoutSession(
        payments_pb2.CreateCheckoutSessionRequest(user_id=user_id, sku="vip_30d"),
        metadata=(("x-request-id", secrets.token_hex(8)),),
    )
    again = stripe_api.seen("POST", "/v1/checkout/sessions")[-1].params
    assert again["customer"] == customer and "customer_creation" not in again
    portal = await payments.CreatePortalSession(
        payments_pb2.CreatePortalSessionRequest(user_id=user_id)
    )
    assert portal.url.startswith("https://billing.stripe.com/")
    assert stripe_api.seen("POST", "/v1/billing_portal/sessions")[-1].params == {
        "customer": customer,
        "return_url": SUCCESS_URL,
    }


async def test_a_retried_call_makes_one_session_and_a_new_request_another(
    stripe_api: FakeStripe, payments: payments_pb2_grpc.PaymentsServiceStub
) -> None:
    request = payments_pb2.CreateCheckoutSessionRequest(
        telegram_user_id=new_buyer(), sku="premium_monthly", success_url=SUCCESS_URL
    )
    retry = (("x-request-id", "bot-" + secrets.token_hex(6)),)
    before = len(stripe_api.sessions)
    first = await payments.CreateCheckoutSession(request, metadata=retry)
    second = await payments.CreateCheckoutSession(request, metadata=retry)
    assert first.session_id == second.session_id and len(stripe_api.sessions) == before + 1
    other = await payments.CreateCheckoutSession(
        request, metadata=(("x-request-id", "bot-" + secrets.token_hex(6)),)
    )
    assert other.session_id != first.session_id
    made = stripe_api.seen("POST", "/v1/checkout/sessions")[-3:]
    keys = [idempotency_key_of(r) for r in made]
    assert keys[0] and keys[0] == keys[1] != keys[2]
    sent = made[-1].params
    assert sent["mode"] == "subscription" and "payment_intent_data" not in sent
    assert sent["subscription_data"]["metadata"]["sku"] == "premium_monthly"
    assert sent["line_items"]["0"]["price_data"]["recurring"] == {"interval": "month"}


@pytest.mark.parametrize("sku", ["premium_monthly", PRICED_SKU])
async def test_a_subscription_checkout_paid_grants_once_to_the_buyer(
    sku: str,
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer = new_buyer()
    reply = await payments.CreateCheckoutSession(
        payments_pb2.CreateCheckoutSessionRequest(
            telegram_user_id=buyer, sku=sku, success_url=SUCCESS_URL
        )
    )
    user_id = await user_of_telegram(stripe_stack, buyer)
    made = stripe_api.seen("POST", "/v1/checkout/sessions")[-1]
    sent, line = made.params, made.params["line_items"]["0"]
    assert idempotency_key_of(made) and sent["mode"] == "subscription"
    price_id = catalogue.skus[sku].stripe_price_id
    if price_id:  # the Price made at Stripe, never inline data beside it
        assert price_id in stripe_api.prices
        assert line == {"price": price_id, "quantity": "1"}
    else:
        assert "price" not in line and line["price_data"]["recurring"] == {"interval": "month"}

    # The user pays: Stripe makes the subscription, carrying the metadata the session asked
    # for, and its first invoice; the events come as Stripe sends them (API basil).
    metadata = sent["subscription_data"]["metadata"]
    assert metadata == {"user_id": user_id, "telegram_user_id": str(buyer), "sku": sku}
    customer, sub, now = stripe_api.add_customer(), f"sub_{secrets.token_hex(10)}", int(time.time())
    period = (now, now + 30 * DAY)
    made_sub = subscription(sub, buyer, "active", period)
    made_sub.update(customer=customer, metadata=dict(metadata))
    if price_id:
        made_sub["items"]["data"][0]["price"]["id"] = price_id
    session = copy.deepcopy(stripe_api.sessions[reply.session_id])
    session.update(status="complete", payment_status="paid", customer=customer, subscription=sub)
    invoice = {
        "id": f"in_{secrets.token_hex(10)}",
        "object": "invoice",
        "amount_due": 1900,
        "amount_paid": 1900,
        "billing_reason": "subscription_create",
        "created": now,
        "currency": "usd",
        "customer": customer,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"metadata": dict(metadata), "subscription": sub},
        },
        "status": "paid",
        "status_transitions": {"paid_at": now},
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": f"il_{secrets.token_hex(8)}",
                    "object": "line_item",
                    "amount": 1900,
                    "currency": "usd",
                    "metadata": {},
                    "period": {"start": period[0], "end": period[1]},
                }
            ],
        },
    }
    # A subscription's session grants nothing itself: its invoice does.
    completed = event_of("checkout.session.completed", session)
    assert await deliver(http, stripe_stack, engine, completed) == "ignored"
    for event in (
        event_of("customer.subscription.created", made_sub),
        event_of("invoice.paid", invoice),
    ):
        assert await deliver(http, stripe_stack, engine, event) == "processed"
    grants = await grants_of(stripe_stack, user_id)
    assert [g.source.reference for g in grants] == [invoice["id"]]
    reply_check = await check(stripe_stack, user_id, "premium")
    assert reply_check.active and reply_check.expires_at.seconds == period[1]
    state = (
        await payments.GetSubscription(
            payments_pb2.GetSubscriptionRequest(provider="stripe", subscription_id=sub)
        )
    ).subscription
    assert (state.user_id, state.sku, state.status) == (user_id, sku, "active")


async def test_an_unknown_sku_is_invalid_and_a_stripe_that_is_down_is_unavailable(
    stripe_api: FakeStripe, payments: payments_pb2_grpc.PaymentsServiceStub
) -> None:
    seen = len(stripe_api.requests)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await payments.CreateCheckoutSession(
            payments_pb2.CreateCheckoutSessionRequest(
                telegram_user_id=new_buyer(), sku="gold_forever", success_url=SUCCESS_URL
            )
        )
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(stripe_api.requests) == seen
    stripe_api.down = True
    try:
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await payments.CreateCheckoutSession(
                payments_pb2.CreateCheckoutSessionRequest(
                    telegram_user_id=new_buyer(), sku="premium_30d", success_url=SUCCESS_URL
                ),
                timeout=30,
            )
    finally:
        stripe_api.down = False
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE


# --- Refunds and reconcile ------------------------------------------------------------------


async def test_a_stripe_refund_reaches_stripe_once_and_its_webhook_revokes(
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
) -> None:
    buyer = new_buyer()
    metadata = {"telegram_user_id": str(buyer), "sku": "premium_30d"}
    charge = stripe_api.add_charge(2900, metadata=metadata)
    await deliver(http, stripe_stack, engine, event_of("charge.succeeded", dict(charge)))
    user_id = await user_of_telegram(stripe_stack, buyer)
    assert (await check(stripe_stack, user_id, "premium")).active

    request = payments_pb2.RefundPaymentRequest(
        provider="stripe", payment_key=charge["payment_intent"]
    )
    await payments.RefundPayment(request)
    await payments.RefundPayment(request)  # a retry: the same refund, not a second one
    refunds = [r for r in stripe_api.refunds if r["payment_intent"] == charge["payment_intent"]]
    assert [r["amount"] for r in refunds] == [2900]
    asked = [
        r
        for r in stripe_api.seen("POST", "/v1/refunds")
        if r.params.get("payment_intent") == charge["payment_intent"]
    ]
    assert len(asked) == 2 and idempotency_key_of(asked[0]) == idempotency_key_of(asked[1]) != ""
    await deliver(http, stripe_stack, engine, event_of("charge.refunded", dict(charge)))
    assert not (await check(stripe_stack, user_id, "premium")).active


async def test_reconcile_records_what_an_outage_lost_once_across_pages(
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer, now = new_buyer(), int(time.time())
    # Four days ago (past Stripe's retry window) a purchase's events never reached us,
    # among more than a page of other events; one of them did reach us.
    purchase = stripe_event(
        "payment_intent.succeeded",
        catalogue,
        sku="vip_30d",
        telegram_user_id=buyer,
        created=now - 2 * DAY,
    )
    delivered = event_of("customer.created", {"id": "cus_x", "object": "customer"}, now - DAY)
    old = event_of("customer.created", {"id": "cus_y", "object": "customer"}, now - 10 * DAY)
    filler = [
        event_of("customer.created", {"id": f"cus_{i}", "object": "customer"}, now - 3 * DAY)
        for i in range(120)
    ]
    for event in (purchase, delivered, old, *filler):
        stripe_api.add_event(event)
    await deliver(http, stripe_stack, engine, delivered)

    since = Timestamp(seconds=now - 3 * DAY - 60)
    first = await payments.ReconcileStripe(payments_pb2.ReconcileStripeRequest(since=since))
    assert first.events_recorded >= 121 and first.events_seen >= 122
    await wait_settled(engine, "stripe", [purchase["id"]])
    user_id = await user_of_telegram(stripe_stack, buyer)
    assert (await check(stripe_stack, user_id, "vip")).active
    assert len(await grants_of(stripe_stack, user_id)) == 1
    second = await payments.ReconcileStripe(payments_pb2.ReconcileStripeRequest(since=since))
    assert second.events_recorded == 0 and second.events_seen == first.events_seen
    listed = stripe_api.seen("GET", "/v1/events")
    assert any("starting_after" in r.params for r in listed)


async def test_failed_events_replay_at_once_when_the_cause_is_fixed(
    stripe_stack: Stack,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    """A customer nobody knew paid twice; once linked, one replay applies both."""
    customer = f"cus_{secrets.token_hex(10)}"
    events = [
        stripe_event("payment_intent.succeeded", catalogue, sku="premium_30d", customer=customer)
        for _ in range(2)
    ]
    for event in events:
        assert await deliver(http, stripe_stack, engine, event) == "failed"
    user_id = await user_of_telegram(stripe_stack, new_buyer())
    async with open_channel(
        stripe_stack.addrs["accounts"], stripe_stack.settings.internal_token
    ) as channel:
        await accounts_pb2_grpc.AccountsServiceStub(channel).LinkIdentity(
            accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=customer)
        )
    reply = await payments.ReplayEvents(
        payments_pb2.ReplayEventsRequest(
            status=payments_pb2.EVENT_STATUS_FAILED,
            event_type="payment_intent.succeeded",
            since=Timestamp(seconds=int(time.time()) - 120),
        )
    )
    assert reply.replayed >= 2
    statuses = await wait_settled(engine, "stripe", [e["id"] for e in events])
    assert set(statuses.values()) == {"processed"}
    assert len(await grants_of(stripe_stack, user_id)) == 2


# --- Subscriptions --------------------------------------------------------------------------


def subscription(
    subscription_id: str,
    buyer: int,
    status: str,
    period: tuple[int, int],
    *,
    cancel_at_period_end: bool = False,
    ended_at: int | None = None,
) -> dict[str, Any]:
    """A Subscription as API 2025-03-31.basil and newer send it: the period on its items."""
    return {
        "id": subscription_id,
        "object": "subscription",
        "customer": None,
        "metadata": {"telegram_user_id": str(buyer), "sku": "premium_monthly"},
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": period[0] if cancel_at_period_end or ended_at else None,
        "ended_at": ended_at,
        "created": period[0],
        "livemode": False,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{secrets.token_hex(6)}",
                    "object": "subscription_item",
                    "current_period_start": period[0],
                    "current_period_end": period[1],
                    "price": {
                        "id": "price_monthly",
                        "object": "price",
                        "unit_amount": 1900,
                        "currency": "usd",
                        "recurring": {"interval": "month"},
                    },
                }
            ],
        },
    }


def invoice_event(
    catalogue: Catalogue,
    event_type: str,
    subscription_id: str,
    buyer: int,
    period: tuple[int, int],
) -> dict[str, Any]:
    event = stripe_event(
        "invoice.paid",
        catalogue,
        sku="premium_monthly",
        telegram_user_id=buyer,
        subscription=subscription_id,
        created=period[0],
        period_end=period[1],
    )
    if event_type == "invoice.payment_failed":
        event["type"] = event_type
        event["created"] = period[0] + 60
        event["data"]["object"].update(
            status="open", amount_paid=0, billing_reason="subscription_cycle"
        )
    return event


def expected_until(seen: set[str], t1: int, t2: int) -> int | None:
    """Access docs/PAYMENTS.md promises for the events seen so far, whatever their order."""
    ends = []
    if "inv1_paid" in seen:
        ends.append(t1)
    if seen & {"inv2_failed", "past_due"}:
        ends.append(t1 + 3 * DAY)  # the sku's grace_days past the paid period
    if "inv2_paid" in seen:
        ends.append(t2)
    end = max(ends, default=None)
    return end if end is not None and end > time.time() else None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_subscription_story_gives_the_same_access_in_any_order(
    seed: int,
    stripe_stack: Stack,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer, sub = new_buyer(), f"sub_{secrets.token_hex(10)}"
    t1 = int(time.time()) - DAY  # the first period ended yesterday; the second runs a month
    t0, t2 = t1 - 30 * DAY, t1 + 30 * DAY
    p1, p2 = (t0, t1), (t1, t2)
    story = {
        "created": event_of(
            "customer.subscription.created", subscription(sub, buyer, "active", p1), t0 + 60
        ),
        "inv1_paid": invoice_event(catalogue, "invoice.paid", sub, buyer, p1),
        "cancel_at_end": event_of(
            "customer.subscription.updated",
            subscription(sub, buyer, "active", p1, cancel_at_period_end=True),
            t0 + 3600,
        ),
        "resumed": event_of(
            "customer.subscription.updated", subscription(sub, buyer, "active", p1), t0 + 7200
        ),
        "inv2_failed": invoice_event(catalogue, "invoice.payment_failed", sub, buyer, p2),
        "past_due": event_of(
            "customer.subscription.updated", subscription(sub, buyer, "past_due", p2), t1 + 120
        ),
        "inv2_paid": invoice_event(catalogue, "invoice.paid", sub, buyer, (t1 + 3600, t2)),
        "active_again": event_of(
            "customer.subscription.updated",
            subscription(sub, buyer, "active", p2, cancel_at_period_end=True),
            t1 + 7200,
        ),
        "deleted": event_of(
            "customer.subscription.deleted",
            subscription(sub, buyer, "canceled", p2, cancel_at_period_end=True, ended_at=t2),
            t1 + 10800,
        ),
    }
    order = list(story)
    random.Random(seed).shuffle(order)
    user_id = await user_of_telegram(stripe_stack, buyer)
    seen: set[str] = set()
    for name in order:
        assert await deliver(http, stripe_stack, engine, story[name]) == "processed", name
        seen.add(name)
        reply = await check(stripe_stack, user_id, "premium")
        until = expected_until(seen, t1, t2)
        assert reply.active == (until is not None), (order, name)
        if until is not None:
            assert abs(reply.expires_at.seconds - until) <= 1, (order, name)
    state = (
        await payments.GetSubscription(
            payments_pb2.GetSubscriptionRequest(provider="stripe", subscription_id=sub)
        )
    ).subscription
    assert (state.status, state.cancel_at_period_end) == ("canceled", True)
    assert state.current_period_end.seconds == t2 and state.ended_at.seconds == t2
    assert state.user_id == user_id


async def test_cancel_at_period_end_keeps_access_and_an_immediate_cancel_ends_it(
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer, sub, now = new_buyer(), f"sub_{secrets.token_hex(10)}", int(time.time())
    period = (now - 3600, now + 30 * DAY - 3600)
    created = subscription(sub, buyer, "active", period)
    stripe_api.add_subscription(copy.deepcopy(created))
    await deliver(http, stripe_stack, engine, event_of("customer.subscription.created", created))
    await deliver(
        http, stripe_stack, engine, invoice_event(catalogue, "invoice.paid", sub, buyer, period)
    )
    user_id = await user_of_telegram(stripe_stack, buyer)
    assert (await check(stripe_stack, user_id, "premium")).expires_at.seconds == period[1]

    def ask(at_period_end: bool) -> payments_pb2.CancelSubscriptionRequest:
        return payments_pb2.CancelSubscriptionRequest(
            user_id=user_id, provider="stripe", subscription_id=sub, at_period_end=at_period_end
        )

    resume = payments_pb2.ResumeSubscriptionRequest(
        user_id=user_id, provider="stripe", subscription_id=sub
    )
    at_stripe = stripe_api.subscriptions[sub]

    ended_later = (await payments.CancelSubscription(ask(True))).subscription
    assert ended_later.cancel_at_period_end and ended_later.status == "active"
    assert stripe_api.seen("POST", f"/v1/subscriptions/{sub}")[-1].params == {
        "cancel_at_period_end": "true"
    }
    assert (await check(stripe_stack, user_id, "premium")).expires_at.seconds == period[1]
    resumed = await payments.ResumeSubscription(resume)
    assert not resumed.subscription.cancel_at_period_end
    assert at_stripe["cancel_at_period_end"] is False
    # The user changes their mind again: this cancel is a new one at Stripe, not a replay of
    # the first (which would answer "canceled" and leave the subscription renewing).
    again = (await payments.CancelSubscription(ask(True))).subscription
    assert again.cancel_at_period_end and at_stripe["cancel_at_period_end"] is True
    assert (await check(stripe_stack, user_id, "premium")).expires_at.seconds == period[1]
    resumed = await payments.ResumeSubscription(resume)
    assert not resumed.subscription.cancel_at_period_end
    assert at_stripe["cancel_at_period_end"] is False
    changes = stripe_api.seen("POST", f"/v1/subscriptions/{sub}")
    keys = [idempotency_key_of(r) for r in changes]
    assert [r.params["cancel_at_period_end"] for r in changes] == ["true", "false"] * 2
    assert all(keys) and len(set(keys)) == 4

    with pytest.raises(grpc.aio.AioRpcError) as not_theirs:
        await payments.CancelSubscription(
            payments_pb2.CancelSubscriptionRequest(
                user_id="someone-else", provider="stripe", subscription_id=sub
            )
        )
    assert not_theirs.value.code() == grpc.StatusCode.NOT_FOUND
    ended = (await payments.CancelSubscription(ask(False))).subscription
    assert ended.status == "canceled" and ended.HasField("ended_at")
    deleted = stripe_api.seen("DELETE", f"/v1/subscriptions/{sub}")
    assert len(deleted) == 1 and idempotency_key_of(deleted[0])
    assert not (await check(stripe_stack, user_id, "premium")).active
    # An invoice paid before the cancel but delivered after it grants nothing past the end.
    late = invoice_event(catalogue, "invoice.paid", sub, buyer, (now - 1800, now + 30 * DAY))
    await deliver(http, stripe_stack, engine, late)
    assert not (await check(stripe_stack, user_id, "premium")).active
    listed = await payments.ListSubscriptions(
        payments_pb2.ListSubscriptionsRequest(user_id=user_id)
    )
    assert [s.status for s in listed.subscriptions] == ["canceled"]


async def test_a_stars_subscription_renews_cancels_through_telegram_and_runs_to_its_end(
    stripe_stack: Stack,
    bot_api: FakeBotApi,
    payments: payments_pb2_grpc.PaymentsServiceStub,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer, now = new_buyer(), int(time.time())
    await payments.CreateInvoiceLink(
        payments_pb2.CreateInvoiceLinkRequest(user_id="u", sku="premium_monthly")
    )
    assert bot_api.calls_of("createInvoiceLink")[-1]["subscription_period"] == 30 * DAY
    charges = []
    for until, first in ((now + 30 * DAY, True), (now + 60 * DAY, False)):
        update = telegram_update(
            "payment",
            catalogue,
            telegram_user_id=buyer,
            sku="premium_monthly",
            recurring_until=until,
            first_recurring=first,
        )
        charges.append(update["message"]["successful_payment"]["telegram_payment_charge_id"])
        status, _ = await post_telegram(http, stripe_stack, update)
        assert status == 200
        await wait_settled(engine, "telegram", [f"payment:{charges[-1]}"])
    user_id = await user_of_telegram(stripe_stack, buyer)
    assert (await check(stripe_stack, user_id, "premium")).expires_at.seconds == now + 60 * DAY

    sub = f"{buyer}:premium_monthly"
    canceled = await payments.CancelSubscription(
        payments_pb2.CancelSubscriptionRequest(
            user_id=user_id, provider="telegram", subscription_id=sub, at_period_end=True
        )
    )
    assert canceled.subscription.status == "canceled"
    assert canceled.subscription.current_period_end.seconds == now + 60 * DAY
    edit = bot_api.calls_of("editUserStarSubscription")[-1]
    assert edit == {
        "user_id": buyer,
        "telegram_payment_charge_id": charges[-1],
        "is_canceled": True,
    }
    # Access runs to the end of the paid period: nothing paid for is taken back.
    reply = await check(stripe_stack, user_id, "premium")
    assert reply.active and reply.expires_at.seconds == now + 60 * DAY
    assert len(await grants_of(stripe_stack, user_id)) == 2
    resumed = await payments.ResumeSubscription(
        payments_pb2.ResumeSubscriptionRequest(
            user_id=user_id, provider="telegram", subscription_id=sub
        )
    )
    assert resumed.subscription.status == "active"
    assert bot_api.calls_of("editUserStarSubscription")[-1]["is_canceled"] is False
    # A second cancel (likely within the same second as the resume) is recorded too.
    again = await payments.CancelSubscription(
        payments_pb2.CancelSubscriptionRequest(
            user_id=user_id, provider="telegram", subscription_id=sub, at_period_end=True
        )
    )
    assert again.subscription.status == "canceled" and again.subscription.cancel_at_period_end
    assert bot_api.calls_of("editUserStarSubscription")[-1]["is_canceled"] is True
    reply = await check(stripe_stack, user_id, "premium")
    assert reply.active and reply.expires_at.seconds == now + 60 * DAY
    assert len(await grants_of(stripe_stack, user_id)) == 2


def test_the_cli_prints_a_checkout_link_lists_subscriptions_and_reconciles(
    stripe_stack: Stack, stripe_api: FakeStripe
) -> None:
    def paylayer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "paylayer.cli", *args],
            env=stripe_stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    link = paylayer(
        "checkout", "stripe", "--telegram-user", str(new_buyer()), "--sku", "premium_30d"
    )
    assert link.returncode == 0, link.stderr
    assert link.stdout.strip() == stripe_api.sessions[list(stripe_api.sessions)[-1]]["url"]
    listed = paylayer("subscriptions", "list", "--provider", "stripe")
    assert listed.returncode == 0 and "PERIOD_END" in listed.stdout, listed.stderr
    reconciled = paylayer("stripe", "reconcile", "--since", "3d")
    assert reconciled.returncode == 0 and "events seen" in reconciled.stdout, reconciled.stderr
    refused = paylayer("checkout", "stripe", "--telegram-user", "42", "--sku", "nope")
    assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr


async def paylayer_cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """The CLI as an operator runs it, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylayer.cli",
        *args,
        env=stack.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_cli_cancels_and_resumes_a_subscription_and_replays_failed_events(
    stripe_stack: Stack,
    stripe_api: FakeStripe,
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    catalogue: Catalogue,
) -> None:
    buyer, sub, now = new_buyer(), f"sub_{secrets.token_hex(10)}", int(time.time())
    created = subscription(sub, buyer, "active", (now - 3600, now + 30 * DAY - 3600))
    stripe_api.add_subscription(copy.deepcopy(created))
    await deliver(http, stripe_stack, engine, event_of("customer.subscription.created", created))
    user_id = await user_of_telegram(stripe_stack, buyer)
    at_stripe = stripe_api.subscriptions[sub]

    code, out, err = await paylayer_cli(
        stripe_stack, "subscriptions", "cancel", sub, "--user-id", user_id, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["cancel_at_period_end"] is True
    assert at_stripe["cancel_at_period_end"] is True
    code, out, err = await paylayer_cli(
        stripe_stack, "subscriptions", "resume", sub, "--user-id", user_id, "--json"
    )
    assert code == 0, err
    assert json.loads(out).get("cancel_at_period_end", False) is False
    assert at_stripe["cancel_at_period_end"] is False
    code, out, err = await paylayer_cli(
        stripe_stack, "subscriptions", "cancel", sub, "--user-id", user_id, "--now"
    )
    assert code == 0, err
    assert "canceled" in out and at_stripe["status"] == "canceled"
    assert not (await check(stripe_stack, user_id, "premium")).active

    # Payments from a customer nobody knew fail; once linked, a replay of one type, received
    # since a time, applies only those.
    customer = f"cus_{secrets.token_hex(10)}"
    wanted, older = (
        stripe_event("payment_intent.succeeded", catalogue, sku="premium_30d", customer=customer)
        for _ in range(2)
    )
    other_type = stripe_event("charge.succeeded", catalogue, sku="vip_30d", customer=customer)
    for event in (wanted, older, other_type):
        assert await deliver(http, stripe_stack, engine, event) == "failed"
    async with engine.begin() as connection:
        await connection.execute(
            update(inbox)
            .where(inbox.c.provider == "stripe", inbox.c.event_id == older["id"])
            .values(received_at=func.now() - text("interval '2 hours'"))
        )
    payer = await user_of_telegram(stripe_stack, new_buyer())
    async with open_channel(
        stripe_stack.addrs["accounts"], stripe_stack.settings.internal_token
    ) as channel:
        await accounts_pb2_grpc.AccountsServiceStub(channel).LinkIdentity(
            accounts_pb2.LinkIdentityRequest(user_id=payer, stripe_customer_id=customer)
        )
    code, out, err = await paylayer_cli(
        stripe_stack,
        "events",
        "replay",
        "--status",
        "failed",
        "--type",
        "payment_intent.succeeded",
        "--since",
        "1h",
    )
    assert code == 0, err
    assert out.endswith("events replayed\n") and int(out.split()[0]) >= 1, out
    assert (await wait_settled(engine, "stripe", [wanted["id"]]))[wanted["id"]] == "processed"
    left = await event_statuses(engine, "stripe", [older["id"], other_type["id"]])
    assert left == {older["id"]: "failed", other_type["id"]: "failed"}
    assert len(await grants_of(stripe_stack, payer)) == 1
