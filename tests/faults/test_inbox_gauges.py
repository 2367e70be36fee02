"""The inbox gauges an operator alerts on report what the inbox really holds: purchases kept
pending while entitlements is down show as depth and age, and both fall back to 0 after."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from tests.faults.load import Purchase, assert_each_took_effect_once, settle
from tests.payments.helpers import eventually, new_buyer, post_stripe
from tests.stack import Stack
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.faults

PURCHASES = 4
DEPTH = "paylayer_payments_inbox_pending"
AGE = "paylayer_payments_inbox_oldest_pending_age_seconds"


async def test_depth_and_age_show_purchases_held_by_a_downstream_outage(
    fault_stack: Stack, fault_engine: AsyncEngine
) -> None:
    url = f"http://{fault_stack.metrics_addrs['payments']}/metrics"

    async def gauges() -> tuple[float, float]:
        samples = await scrape(url)
        return value(samples, DEPTH), value(samples, AGE)

    catalogue = load_catalogue(fault_stack.settings.catalogue_path)
    purchases = []
    assert await asyncio.to_thread(fault_stack.stop, "entitlements") == 0
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(PURCHASES):
                buyer = new_buyer()
                event = stripe_event(
                    "checkout.session.completed",
                    catalogue,
                    sku="premium_30d",
                    telegram_user_id=buyer,
                )
                status, _ = await post_stripe(http, fault_stack, event)
                purchases.append(Purchase("stripe", event["id"], buyer, [status]))
        assert [p.statuses for p in purchases] == [[200]] * PURCHASES

        # Generous: the gauges are refreshed every couple of seconds.
        depth, age = await eventually(
            gauges, lambda seen: seen[0] >= PURCHASES and seen[1] > 0, within=60
        )
        assert depth >= PURCHASES, f"the inbox gauge showed {depth} pending, not {PURCHASES}"
        assert age > 0, "the oldest pending event showed no age"
    finally:
        fault_stack.start("entitlements")
        await fault_stack.up()

    depth, age = await eventually(gauges, lambda seen: seen == (0, 0), within=90)
    assert (depth, age) == (0, 0), f"after the outage the gauges stayed at {depth}, {age} s"
    await settle(fault_engine, purchases, within=60)
    await assert_each_took_effect_once(fault_stack, purchases)
