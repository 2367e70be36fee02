"""Purchases applied as one batch: one purchase the database refuses never fails the others."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from payments_service.downstream import Downstream
from payments_service.processor import LEASE, Processor
from payments_service.store import Store
from tests.payments.helpers import check, event_statuses, eventually, new_buyer, user_of_telegram
from tests.stack import Stack


async def test_a_purchase_the_database_refuses_does_not_fail_its_batch(
    stack: Stack, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyers = [new_buyer(), new_buyer()]
    good = [
        stripe_event("charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer)
        for buyer in buyers
    ]
    poison = stripe_event(
        "charge.succeeded",
        catalogue,
        sku="premium_30d",
        telegram_user_id=new_buyer(),
        payment_intent="pi_\u0000refused",
    )
    store = Store(engine)
    # The stack's own payments is stopped, so this processor alone claims the three: one batch.
    stack.stop("payments")
    try:
        for event in (*good, poison):
            await store.record("stripe", event["id"], event["type"], json.dumps(event).encode())
        async with (
            open_channel(stack.addrs["accounts"], stack.settings.internal_token) as accounts,
            open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as grants,
        ):
            processor = Processor(store, Downstream(accounts, grants), catalogue)
            claimed = await store.claim_batch("test-batch", 100, LEASE)
            ours = [e for e in claimed if e.event_id in {x["id"] for x in (*good, poison)}]
            assert len(ours) == 3
            await processor.apply(claimed)
    finally:
        stack.start("payments")
        await stack.up()
    statuses = await event_statuses(engine, "stripe", [e["id"] for e in (*good, poison)])
    assert [statuses[e["id"]] for e in good] == ["processed", "processed"]
    assert statuses[poison["id"]] == "failed"
    for buyer in buyers:
        user_id = await user_of_telegram(stack, buyer)
        reply = await eventually(lambda u=user_id: check(stack, u, "premium"), lambda r: r.active)
        assert reply.active
