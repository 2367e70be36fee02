"""Stripe webhooks through the real gateway, payments, accounts and entitlements processes."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import sign_stripe, stripe_event
from payments_service.tables import inbox, payments
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.payments.helpers import (
    check,
    days_left,
    eventually,
    new_buyer,
    post_stripe,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack


async def inbox_count(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(select(func.count()).where(inbox.c.event_id == event_id)) or 0
        )


# --- rejections: nothing is recorded -------------------------------------------------------


async def test_bad_signature_is_refused_and_nothing_recorded(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    status, _ = await post_stripe(http, stack, event, secret="whsec_not_ours")
    assert status == 400
    status, _ = await post_stripe(http, stack, event, signature="")
    assert status == 400
    status, _ = await post_stripe(http, stack, event, signature="t=abc,v1=zz")
    assert status == 400
    assert await inbox_count(engine, event["id"]) == 0


async def test_a_tampered_body_fails_verification(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, sign: Callable[..., str]
) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    body = json.dumps(event)
    tampered = body.replace('"premium_30d"', '"vip_30d"').encode()
    assert (await post_stripe(http, stack, tampered, signature=sign(body)))[0] == 400
    assert (await post_stripe(http, stack, body.encode(), signature=sign(body)))[0] == 200


@pytest.mark.parametrize("skew", [-301, 301])
async def test_timestamps_beyond_300_seconds_either_way_are_refused(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine, skew: int
) -> None:
    event = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    status, _ = await post_stripe(http, stack, event, timestamp=int(time.time()) + skew)
    assert status == 400
    assert await inbox_count(engine, event["id"]) == 0


async def test_signed_body_that_is_not_an_event_is_refused(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    for body in (
        b"not json",
        b"[1, 2]",
        b'{"id": "evt_1", "object": "charge"}',
        "\u00e9".encode("latin-1"),
    ):
        status, _ = await post_stripe(http, stack, body)
        assert status == 400, body


async def test_what_the_fuzzer_found_is_refused_with_400_not_an_error(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    """Once 500s, found by the fuzzing in tests/faults/test_bad_input.py; kept here so the
    ordinary run holds them too."""
    event = stripe_event("charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=7)
    # A non-ASCII signature header made the stripe library raise TypeError.
    status, _ = await post_stripe(http, stack, event, signature="t=1,v1=\u00e9\u00e9")
    assert status == 400
    assert await inbox_count(engine, event["id"]) == 0
    # A control character in a signed event's id was copied into gRPC metadata, which refuses it.
    for event_id in ("evt_\x1f", "evt_\x00", "evt_\u00e9"):
        status, _ = await post_stripe(http, stack, {**event, "id": event_id})
        assert status == 400, repr(event_id)


async def test_body_over_one_mebibyte_is_refused_with_413(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, _ = await post_stripe(
        http, stack, b"{" + b" " * (1024 * 1024 + 1) + b"}", signature="t=1,v1=0"
    )
    assert status == 413


async def test_every_configured_secret_verifies_for_rotation(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue
) -> None:
    """A header with several v1 values (Stripe's rollover) passes when one matches."""
    event = stripe_event("customer.created", catalogue)
    body = json.dumps(event)
    timestamp = int(time.time())
    good = sign_stripe(body, stack.settings.stripe_webhook_secrets[0], timestamp)
    stale = sign_stripe(body, "whsec_retired", timestamp).split(",")[1]
    status, reply = await post_stripe(http, stack, body.encode(), signature=f"{good},{stale}")
    assert status == 200 and reply["received"] is True


# --- effects -------------------------------------------------------------------------------


async def test_twenty_concurrent_deliveries_of_one_event_grant_thirty_days_once(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    replies = await asyncio.gather(*(post_stripe(http, stack, event) for _ in range(20)))
    assert [status for status, _ in replies] == [200] * 20
    assert sum(not reply["duplicate"] for _, reply in replies) == 1
    assert await wait_settled(engine, "stripe", [event["id"]]) == {event["id"]: "processed"}
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert reply.active and len(reply.grants) == 1
    assert 29.9 < days_left(reply) <= 30.0


async def test_two_purchases_stack_to_sixty_days(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    first = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    second = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    for event in (first, second):
        assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [first["id"], second["id"]])
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: days_left(r) > 59)
    assert 59.9 < days_left(reply) <= 60.0
    assert len(reply.grants) == 2


async def test_checkout_session_and_charge_of_one_payment_intent_grant_once(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), f"pi_{secrets.token_hex(8)}"
    views = [
        stripe_event(
            kind, catalogue, sku="premium_30d", telegram_user_id=buyer, payment_intent=intent
        )
        for kind in ("checkout.session.completed", "payment_intent.succeeded", "charge.succeeded")
    ]
    for event in views:
        assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [e["id"] for e in views])
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert 29.9 < days_left(reply) <= 30.0
    async with engine.connect() as connection:
        rows = (
            await connection.execute(select(payments).where(payments.c.payment_key == intent))
        ).all()
    assert len(rows) == 1 and rows[0].status == "succeeded" and rows[0].amount == 2900


async def test_refund_before_its_payment_leaves_no_active_grant(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), f"pi_{secrets.token_hex(8)}"
    refund = stripe_event(
        "charge.refunded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    payment = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    assert (await post_stripe(http, stack, refund))[0] == 200
    await wait_settled(engine, "stripe", [refund["id"]])
    assert (await post_stripe(http, stack, payment))[0] == 200
    await wait_settled(engine, "stripe", [payment["id"]])
    user_id = await user_of_telegram(stack, buyer)
    # Nothing asked about this user before: no cached answer can stand in for the store's.
    assert not (await check(stack, user_id, "premium")).active
    async with engine.connect() as connection:
        status = await connection.scalar(
            select(payments.c.status).where(payments.c.payment_key == intent)
        )
    assert status == "refunded"


async def test_dispute_revokes_access(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), f"pi_{secrets.token_hex(8)}"
    payment = stripe_event(
        "charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer, payment_intent=intent
    )
    assert (await post_stripe(http, stack, payment))[0] == 200
    await wait_settled(engine, "stripe", [payment["id"]])
    user_id = await user_of_telegram(stack, buyer)
    assert (await eventually(lambda: check(stack, user_id, "vip"), lambda r: r.active)).active
    dispute = stripe_event("charge.dispute.created", catalogue, payment_intent=intent)
    assert (await post_stripe(http, stack, dispute))[0] == 200
    await wait_settled(engine, "stripe", [dispute["id"]])
    reply = await eventually(lambda: check(stack, user_id, "vip"), lambda r: not r.active)
    assert not reply.active


async def test_partial_refund_is_recorded_and_keeps_access(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, intent = new_buyer(), f"pi_{secrets.token_hex(8)}"
    payment = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    partial = stripe_event(
        "charge.refunded", catalogue, sku="premium_30d", payment_intent=intent, amount_refunded=900
    )
    for event in (payment, partial):
        assert (await post_stripe(http, stack, event))[0] == 200
        await wait_settled(engine, "stripe", [event["id"]])
    user_id = await user_of_telegram(stack, buyer)
    assert (await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)).active
    async with engine.connect() as connection:
        row = (
            await connection.execute(select(payments).where(payments.c.payment_key == intent))
        ).one()
    assert (row.status, row.amount_refunded) == ("partially_refunded", 900)


async def test_vip_passes_a_premium_check(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="vip_30d", telegram_user_id=buyer
    )
    assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [event["id"]])
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert reply.active and 29.9 < days_left(reply) <= 30.0


async def test_unattributable_event_is_kept_failed_with_its_reason_and_replays_once_fixed(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    customer = f"cus_{secrets.token_hex(6)}"
    event = stripe_event("charge.succeeded", catalogue, sku="premium_30d", customer=customer)
    status, _ = await post_stripe(http, stack, event)
    assert status == 200
    assert await wait_settled(engine, "stripe", [event["id"]]) == {event["id"]: "failed"}
    async with engine.connect() as connection:
        error = await connection.scalar(
            select(inbox.c.error).where(inbox.c.event_id == event["id"])
        )
    assert "cannot tell who paid" in error

    # The customer is linked to a Telegram buyer by a later checkout; the replay then grants.
    buyer = new_buyer()
    link = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        customer=customer,
    )
    assert (await post_stripe(http, stack, link))[0] == 200
    await wait_settled(engine, "stripe", [link["id"]])
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        replayed = await payments_pb2_grpc.PaymentsServiceStub(channel).ReplayEvent(
            payments_pb2.ReplayEventRequest(provider="stripe", event_id=event["id"])
        )
    assert replayed.event.status == payments_pb2.EVENT_STATUS_PROCESSED
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: days_left(r) > 59)
    assert 59.9 < days_left(reply) <= 60.0


async def test_other_event_types_are_recorded_as_ignored(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    event = stripe_event("customer.created", catalogue)
    status, _ = await post_stripe(http, stack, event)
    assert status == 200
    assert await wait_settled(engine, "stripe", [event["id"]]) == {event["id"]: "ignored"}


# --- outages -------------------------------------------------------------------------------


async def test_entitlements_down_events_answered_200_then_each_takes_effect_once(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    stack.stop("entitlements")
    try:
        buyers = [new_buyer() for _ in range(5)]
        events = [
            stripe_event(
                "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=b
            )
            for b in buyers
        ]
        for event in events:
            for _ in range(2):  # Stripe's own retries: a duplicate of each
                assert (await post_stripe(http, stack, event))[0] == 200

        async def tried() -> list[tuple[str, int]]:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(inbox.c.status, inbox.c.attempts).where(
                        inbox.c.event_id.in_([e["id"] for e in events])
                    )
                )
                return [(row.status, row.attempts) for row in rows]

        # Each has been tried against the missing entitlements at least once: still pending.
        rows = await eventually(tried, lambda rows: all(n >= 1 for _, n in rows) and len(rows) == 5)
        assert {status for status, _ in rows} == {"pending"}
    finally:
        stack.start("entitlements")
        await stack.up()
    settled = await wait_settled(engine, "stripe", [e["id"] for e in events], within=60)
    assert set(settled.values()) == {"processed"}
    for buyer in buyers:
        reply = await eventually(lambda b=buyer: check_buyer(stack, b), lambda r: r.active)
        assert reply.active and len(reply.grants) == 1
        assert 29.9 < days_left(reply) <= 30.0


async def check_buyer(stack: Stack, buyer: int):  # type: ignore[no-untyped-def]
    return await check(stack, await user_of_telegram(stack, buyer), "premium")


async def test_payments_down_gives_503_then_the_retry_lands(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    stack.stop("payments")
    try:
        # Stopped, payments refuses the connection at once; how long the gateway waits on a
        # payments that is alive but hung is tested in tests/faults/test_sigterm_in_flight.py.
        status, _ = await post_stripe(http, stack, event)
        assert status == 503
        assert await inbox_count(engine, event["id"]) == 0
    finally:
        stack.start("payments")
        await stack.up()
    assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [event["id"]])
    reply = await eventually(lambda: check_buyer(stack, buyer), lambda r: r.active)
    assert len(reply.grants) == 1
