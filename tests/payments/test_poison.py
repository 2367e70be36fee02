"""An event that can never be applied ends failed within about a minute, logs a bounded number
of lines on the way, and never delays the events behind it: new purchases, nor another event
whose retry falls due meanwhile."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
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
from tests.test_metrics import scrape, value

# The contract: with backoff capped at 10 s, ten attempts take about a minute. This is a
# deadline to wait for, generous, not a measure of speed: it fails only if the event is still
# pending well past that minute.
POISON_FAILS_WITHIN_SECONDS = 90


async def listed(stack: Stack, event_id: str, event_type: str) -> payments_pb2.Event | None:
    """The event as an operator sees it in ListEvents, whatever its status."""
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).ListEvents(
            payments_pb2.ListEventsRequest(provider="stripe", event_type=event_type)
        )
    return next((event for event in reply.events if event.event_id == event_id), None)


def won_dispute(catalogue: Catalogue, intent: str) -> dict[str, object]:
    """A won dispute of a payment: retried until that payment has been granted."""
    event = stripe_event("charge.dispute.closed", catalogue, payment_intent=intent)
    event["data"]["object"]["status"] = "won"
    return event


async def test_a_poison_event_fails_within_a_minute_and_due_events_still_apply(
    stack: Stack, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    metrics_url = f"http://{stack.metrics_addrs['payments']}/metrics"
    failed_total = "paylayer_payments_events_failed_total"
    before = value(
        await scrape(metrics_url), failed_total, provider="stripe", reason="too_many_attempts"
    )
    # A dispute won on a payment that never comes: every attempt fails, ten times.
    poison = won_dispute(catalogue, f"pi_never_{secrets.token_hex(6)}")
    # A dispute won on a payment that comes a little later: its retry falls due while the
    # poison one is being retried, and must be applied then.
    buyer, intent = new_buyer(), f"pi_{secrets.token_hex(8)}"
    retrying = won_dispute(catalogue, intent)
    started = time.monotonic()
    purchases_applied = 0
    retrying_applied_meanwhile = False
    async with aiohttp.ClientSession() as http:
        for event in (poison, retrying):
            assert (await post_stripe(http, stack, event))[0] == 200
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
            assert (await post_stripe(http, stack, event))[0] == 200
            await wait_settled(engine, "stripe", [event["id"]])
        # While the poison event is retried, purchases keep being applied: none waits for it.
        while True:
            poisoned = await listed(stack, poison["id"], poison["type"])
            assert poisoned is not None
            if poisoned.status != payments_pb2.EVENT_STATUS_PENDING:
                break
            other = await listed(stack, retrying["id"], retrying["type"])
            if other is not None and other.status == payments_pb2.EVENT_STATUS_PROCESSED:
                retrying_applied_meanwhile = True
            assert time.monotonic() - started < POISON_FAILS_WITHIN_SECONDS, poisoned
            purchase = stripe_event(
                "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
            )
            assert (await post_stripe(http, stack, purchase))[0] == 200
            applied = await wait_settled(engine, "stripe", [purchase["id"]], within=20)
            assert applied[purchase["id"]] == "processed"
            purchases_applied += 1
            await asyncio.sleep(1)  # pacing only: a purchase a second or so

    # The other retrying event was applied while the poison one was still pending.
    assert retrying_applied_meanwhile
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert 29.9 < days_left(reply) <= 30

    assert poisoned.status == payments_pb2.EVENT_STATUS_FAILED
    assert poisoned.attempts == 10
    assert poisoned.error.startswith("[too_many_attempts]"), poisoned.error
    after = await eventually(
        lambda: scrape(metrics_url),
        lambda samples: (
            value(samples, failed_total, provider="stripe", reason="too_many_attempts") > before
        ),
    )
    assert value(after, failed_total, provider="stripe", reason="too_many_attempts") > before
    log_lines = sum(
        poison["id"] in line
        for path in stack.log_dir.glob("payments*.log")
        for line in path.read_text(errors="replace").splitlines()
    )
    print(
        json.dumps(
            {
                "poison_failed_after_s": round(time.monotonic() - started, 1),
                "log_lines": log_lines,
                "purchases_applied_meanwhile": purchases_applied,
            }
        )
    )
    # One line an attempt, and a few for receiving it and the final verdict: never a flood.
    assert log_lines <= 15
    assert purchases_applied >= 5
