"""SIGTERM under load drains cleanly; a crash between two steps still ends in one effect."""

from __future__ import annotations

import asyncio
import secrets
import signal

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from payments_service.tables import inbox, payments
from tests.faults.load import Load, Purchase, assert_each_took_effect_once, figure, settle
from tests.payments.helpers import check, eventually, post_stripe, user_of_telegram
from tests.stack import Stack

pytestmark = pytest.mark.faults


async def next_health_statuses(addr: str, statuses: list[int], watching: asyncio.Event) -> None:
    """Record every status the service announces until its stream ends."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        try:
            async for reply in stream:
                statuses.append(reply.status)
                watching.set()
        except grpc.aio.AioRpcError:
            pass


@pytest.mark.parametrize("service", ["payments", "entitlements", "accounts", "gateway"])
async def test_sigterm_under_load_drains_then_every_event_takes_effect_once(
    fault_stack: Stack, fault_engine: AsyncEngine, service: str
) -> None:
    load = Load(fault_stack, rate_per_second=20, redeliver=True)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(2)
    statuses: list[int] = []
    watching = asyncio.Event()
    watcher = None
    if service != "gateway":
        watcher = asyncio.create_task(
            next_health_statuses(fault_stack.addrs[service], statuses, watching)
        )
        await asyncio.wait_for(watching.wait(), 5)
    exit_code = await asyncio.to_thread(fault_stack.stop, service, signal.SIGTERM)
    if watcher is not None:
        await asyncio.wait_for(watcher, 5)
    fault_stack.start(service)
    await fault_stack.up()
    await asyncio.sleep(2)
    load.stop()
    await sending

    assert exit_code == 0, f"{service} did not exit cleanly on SIGTERM"
    if service != "gateway":
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
    answers = {status for purchase in load.purchases for status in purchase.statuses}
    assert answers <= {200, 503, 0}, f"unexpected answers: {answers}"  # 0: connection refused
    if service in ("entitlements", "accounts"):
        # The gateway needs only payments: their drain must cost a buyer nothing.
        assert answers == {200}, f"answers while {service} drained: {answers}"
    assert all(p.delivered for p in load.purchases)
    await settle(fault_engine, load.purchases, within=60)
    await assert_each_took_effect_once(fault_stack, load.purchases)
    figure(f"SIGTERM to {service}", load.purchases, exit_code=exit_code)


async def test_killed_after_the_inbox_commit_and_before_the_grant(
    fault_stack: Stack, fault_engine: AsyncEngine
) -> None:
    """Events committed while entitlements is down, then payments killed: applied after restart."""
    fault_stack.stop("entitlements", signal.SIGKILL)
    catalogue = load_catalogue(fault_stack.settings.catalogue_path)
    purchases = []
    async with aiohttp.ClientSession() as http:
        for _ in range(10):
            buyer = secrets.randbelow(10**12) + 10**9
            event = stripe_event(
                "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
            )
            assert (await post_stripe(http, fault_stack, event))[0] == 200
            purchases.append(Purchase("stripe", event["id"], buyer, [200]))
    fault_stack.stop("payments", signal.SIGKILL)
    fault_stack.start("entitlements")
    fault_stack.start("payments")
    await fault_stack.up()
    await settle(fault_engine, purchases, within=60)
    await assert_each_took_effect_once(fault_stack, purchases)
    figure("payments killed after inbox commit, before grant", purchases)


async def eventually_true(probe, within: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not await probe():
        assert asyncio.get_running_loop().time() < deadline, "the worker never got there"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("moment", ["after_the_claim_before_the_grant", "after_the_grant"])
async def test_killed_mid_event_then_its_lease_runs_out_and_it_applies_once(
    fault_stack: Stack, fault_engine: AsyncEngine, moment: str
) -> None:
    """The worker is killed while it holds the event's lease: after claiming it and writing
    its ledger row (before the grant), or after the grant (before marking it done, the worst
    moment). Once the lease runs out another worker takes it, and it grants once.

    How the worker is held there: this test inserts the grant's source row in entitlements
    without committing, so the grant waits on it; for the second moment it then also locks the
    inbox row (the claim is committed by then) and lets the grant through, so the worker
    blocks marking the event done."""
    catalogue = load_catalogue(fault_stack.settings.catalogue_path)
    buyer, intent = secrets.randbelow(10**12) + 10**9, f"pi_{secrets.token_hex(8)}"
    event = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )

    async def claimed_and_recorded() -> bool:
        async with fault_engine.connect() as observer:
            claimed = await observer.scalar(
                select(inbox.c.claimed_until).where(inbox.c.event_id == event["id"])
            )
            recorded = await observer.scalar(
                select(payments.c.status).where(payments.c.payment_key == intent)
            )
        return claimed is not None and recorded == "succeeded"

    async with fault_engine.connect() as grant_blocker, fault_engine.connect() as row_blocker:
        await grant_blocker.execute(
            text(
                "INSERT INTO entitlements.grants (grant_id, provider, reference, revoked_at)"
                " VALUES (gen_random_uuid(), 'stripe', :key, now())"
            ),
            {"key": intent},
        )
        async with aiohttp.ClientSession() as http:
            assert (await post_stripe(http, fault_stack, event))[0] == 200
        await eventually_true(claimed_and_recorded)
        if moment == "after_the_grant":
            await row_blocker.execute(
                select(inbox.c.id).where(inbox.c.event_id == event["id"]).with_for_update()
            )
            await grant_blocker.rollback()
            user_id = await user_of_telegram(fault_stack, buyer)
            granted = await eventually(
                lambda: check(fault_stack, user_id, "premium"), lambda r: r.active
            )
            assert granted.active, "the grant was never made"
        async with fault_engine.connect() as observer:
            status = await observer.scalar(
                select(inbox.c.status).where(inbox.c.event_id == event["id"])
            )
        assert status == "pending", "payments got past the point where it should be blocked"
        fault_stack.stop("payments", signal.SIGKILL)
        await grant_blocker.rollback()
        await row_blocker.rollback()
    fault_stack.start("payments")
    await fault_stack.up()
    purchase = [Purchase("stripe", event["id"], buyer, [200])]
    await settle(fault_engine, purchase, within=60)
    await assert_each_took_effect_once(fault_stack, purchase)
    figure(f"payments killed {moment.replace('_', ' ')}", purchase)
    async with fault_engine.connect() as connection:
        row = (
            await connection.execute(select(payments).where(payments.c.payment_key == intent))
        ).one()
    assert (row.status, row.amount) == ("succeeded", 2900)
