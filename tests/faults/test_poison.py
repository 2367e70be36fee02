"""An event that can never be applied ends failed within about a minute, logs a bounded number
of lines on the way, and never delays the events behind it."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from payments_service.tables import inbox
from tests.payments.helpers import new_buyer, post_stripe, wait_settled
from tests.stack import Stack

pytestmark = pytest.mark.faults


async def test_a_poison_event_fails_within_a_minute_and_others_still_apply(
    fault_stack: Stack, fault_engine: AsyncEngine
) -> None:
    catalogue = load_catalogue(fault_stack.settings.catalogue_path)
    # A dispute won on a payment that never comes: every attempt has to wait for it.
    poison = stripe_event(
        "charge.dispute.closed", catalogue, payment_intent=f"pi_never_{secrets.token_hex(6)}"
    )
    poison["data"]["object"]["status"] = "won"
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        assert (await post_stripe(http, fault_stack, poison))[0] == 200
        # While it is being retried, purchases keep being applied: none waits behind it.
        purchase_waits = []
        while True:
            async with fault_engine.connect() as connection:
                status = await connection.scalar(
                    select(inbox.c.status).where(inbox.c.event_id == poison["id"])
                )
            if status != "pending" or time.monotonic() - started > 120:
                break
            purchase = stripe_event(
                "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
            )
            sent = time.monotonic()
            assert (await post_stripe(http, fault_stack, purchase))[0] == 200
            applied = await wait_settled(fault_engine, "stripe", [purchase["id"]], within=20)
            assert applied[purchase["id"]] == "processed"
            purchase_waits.append(time.monotonic() - sent)
            await asyncio.sleep(2)
    failed_after = time.monotonic() - started
    async with fault_engine.connect() as connection:
        row = (
            await connection.execute(
                select(inbox.c.status, inbox.c.attempts, inbox.c.error).where(
                    inbox.c.event_id == poison["id"]
                )
            )
        ).one()
    log_lines = sum(
        poison["id"] in line
        for path in fault_stack.log_dir.glob("payments*.log")
        for line in path.read_text(errors="replace").splitlines()
    )
    print(
        json.dumps(
            {
                "poison_failed_after_s": round(failed_after, 1),
                "attempts": row.attempts,
                "log_lines": log_lines,
                "purchases_applied_meanwhile": len(purchase_waits),
                "slowest_purchase_s": round(max(purchase_waits, default=0), 2),
            }
        )
    )
    assert row.status == "failed"
    assert row.attempts == 10
    assert row.error.startswith("[too_many_attempts]")
    # One line an attempt, and a few for receiving and the final verdict: never a flood.
    assert log_lines <= 15
    assert len(purchase_waits) >= 10
