"""A downstream that answers INTERNAL on every attempt (here: entitlements, whose statements
are cancelled by a statement timeout) is not retried forever: after 10 attempts the event is
failed with `[too_many_attempts]`, counted, and replays once the cause is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from entitlements_service.tables import SCHEMA as ENTITLEMENTS_SCHEMA
from paylayer.catalogue import load_catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import check, eventually, new_buyer, post_stripe, user_of_telegram
from tests.stack import Stack
from tests.test_metrics import scrape, value

# Ten attempts with backoff capped at 10 s, each waiting out a 1 s statement timeout: about
# 70 s. A generous deadline to wait for, not a measure of speed.
FAILS_WITHIN_SECONDS = 120


@pytest.fixture(scope="module")
def timeout_database_url(admin_database_url: str) -> Iterator[str]:
    """A database of this module's own whose statements are cancelled after 1 s: nothing the
    stack does takes that long, unless a lock holds it."""
    with fresh_database(admin_database_url) as url:

        async def set_timeout() -> None:
            connection = await asyncpg.connect(url)
            try:
                name = await connection.fetchval("SELECT current_database()")
                await connection.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '1s'")
            finally:
                await connection.close()

        asyncio.run(set_timeout())
        yield url


@pytest.fixture(scope="module")
def timeout_stack(
    timeout_database_url: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = make_settings(timeout_database_url, bot_api)
    with running_stack(settings, tmp_path_factory.mktemp("timeout-logs")) as stack:
        yield stack


async def listed(stack: Stack, event_id: str) -> payments_pb2.Event:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).ListEvents(
            payments_pb2.ListEventsRequest(provider="stripe", page_size=200)
        )
    return next(event for event in reply.events if event.event_id == event_id)


async def test_an_internal_answer_on_every_attempt_fails_after_ten_and_replays_once_fixed(
    timeout_stack: Stack, timeout_database_url: str
) -> None:
    stack = timeout_stack
    catalogue = load_catalogue(stack.settings.catalogue_path)
    metrics_url = f"http://{stack.metrics_addrs['payments']}/metrics"
    failed_total = "paylayer_payments_events_failed_total"
    labels = {"provider": "stripe", "reason": "too_many_attempts"}
    before = value(await scrape(metrics_url), failed_total, **labels)
    buyer = new_buyer()
    purchase = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    # The test holds the grants table: every statement entitlements makes on it waits, is
    # cancelled by the statement timeout, and entitlements answers INTERNAL.
    holder = await asyncpg.connect(timeout_database_url)
    try:
        await holder.execute("SET statement_timeout = 0")
        lock = holder.transaction()
        await lock.start()
        await holder.execute(f'LOCK TABLE "{ENTITLEMENTS_SCHEMA}".grants IN ACCESS EXCLUSIVE MODE')
        async with aiohttp.ClientSession() as http:
            assert (await post_stripe(http, stack, purchase))[0] == 200
        started = time.monotonic()
        while True:
            shown = await listed(stack, purchase["id"])
            if shown.status != payments_pb2.EVENT_STATUS_PENDING:
                break
            assert time.monotonic() - started < FAILS_WITHIN_SECONDS, shown
            await asyncio.sleep(0.5)
        await lock.rollback()
    finally:
        await holder.close()

    assert shown.status == payments_pb2.EVENT_STATUS_FAILED
    assert shown.attempts == 10
    assert shown.error.startswith("[too_many_attempts]"), shown.error
    assert "INTERNAL" in shown.error, shown.error
    after = await eventually(
        lambda: scrape(metrics_url),
        lambda samples: value(samples, failed_total, **labels) > before,
    )
    assert value(after, failed_total, **labels) == before + 1
    user_id = await user_of_telegram(stack, buyer)
    assert not (await check(stack, user_id, "premium")).active

    # The lock gone, a replay applies it: failed is a place to wait for an operator, not a loss.
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        replayed = await payments_pb2_grpc.PaymentsServiceStub(channel).ReplayEvent(
            payments_pb2.ReplayEventRequest(provider="stripe", event_id=purchase["id"])
        )
    assert replayed.event.status == payments_pb2.EVENT_STATUS_PROCESSED
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert reply.active
