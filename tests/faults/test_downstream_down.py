"""Entitlements, then accounts, killed for 30 s while purchases keep arriving."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.load import Load, assert_each_took_effect_once, figure, settle
from tests.stack import Stack

pytestmark = pytest.mark.faults

DOWN_SECONDS = float(os.environ.get("FAULT_DOWN_SECONDS", "30"))
RECOVERY_BOUND_SECONDS = 60


@pytest.mark.parametrize("service", ["entitlements", "accounts"])
async def test_gateway_keeps_answering_200_and_every_event_takes_effect_once(
    fault_stack: Stack, fault_engine: AsyncEngine, service: str
) -> None:
    load = Load(fault_stack, rate_per_second=20)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(3)
    fault_stack.stop(service, signal.SIGKILL)
    await asyncio.sleep(DOWN_SECONDS)
    fault_stack.start(service)
    restarted = time.monotonic()
    await fault_stack.up()
    await asyncio.sleep(3)
    load.stop()
    await sending

    statuses = [status for purchase in load.purchases for status in purchase.statuses]
    assert statuses and set(statuses) == {200}, f"non-200 answers: {sorted(set(statuses))}"
    await settle(fault_engine, load.purchases, within=RECOVERY_BOUND_SECONDS)
    took = time.monotonic() - restarted
    assert took <= RECOVERY_BOUND_SECONDS
    await assert_each_took_effect_once(fault_stack, load.purchases)
    figure(
        f"{service} killed for {DOWN_SECONDS:.0f} s",
        load.purchases,
        applied_within_s=round(took, 1),
    )


async def test_payments_down_gives_503_fast_and_redelivery_takes_effect_once(
    fault_stack: Stack, fault_engine: AsyncEngine
) -> None:
    load = Load(fault_stack, rate_per_second=20, redeliver=True)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(2)
    fault_stack.stop("payments", signal.SIGKILL)
    await asyncio.sleep(5)
    fault_stack.start("payments")
    await fault_stack.up()
    await asyncio.sleep(2)
    load.stop()
    await sending

    refused = [p for p in load.purchases if 503 in p.statuses]
    assert refused, "no delivery met payments down"
    assert all(p.delivered for p in load.purchases)
    assert {s for p in load.purchases for s in p.statuses} <= {200, 503}
    await settle(fault_engine, load.purchases, within=RECOVERY_BOUND_SECONDS)
    await assert_each_took_effect_once(fault_stack, load.purchases)
    figure("payments killed for 5 s", load.purchases, refused_503=len(refused))
