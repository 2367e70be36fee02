"""SIGTERM with one call held open at the worst moment: that exact call gets its answer and its
row is committed. And a payments that hangs (SIGSTOP) costs a 503 in time, then counts once.

A transaction of this test holds the row the call needs (the row-lock trick of the crash
test), so the call is provably in flight, inside the database, when the signal lands; it is
let go once the process says it is draining, well inside the grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from entitlements_service.wire import to_proto_time
from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event, telegram_update
from payments_service import telegram_updates
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.faults.load import Purchase, assert_each_took_effect_once, settle
from tests.payments.helpers import new_buyer, post_stripe, post_telegram
from tests.stack import Stack

pytestmark = pytest.mark.faults

# Long enough that releasing the held row "within the grace" never races a busy machine.
GRACE_SECONDS = 10.0
# Longer than the grace: a request the gateway holds when SIGTERMed is never cut off by its
# own deadline, only (if ever) by the end of the grace.
PATIENT_DEADLINE_SECONDS = GRACE_SECONDS * 3
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def drain_database(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def drain_stack(
    drain_database: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = dataclasses.replace(
        make_settings(drain_database, bot_api), shutdown_grace_seconds=GRACE_SECONDS
    )
    with running_stack(settings, tmp_path_factory.mktemp("drain-logs")) as stack:
        yield stack


@pytest.fixture(scope="module")
async def drain_engine(drain_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(drain_database, application_name="drain-tests", pool_size=3)
    yield engine
    await engine.dispose()


async def count(engine: AsyncEngine, sql: str, **params: object) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(sql), params) or 0)


async def until_blocked(engine: AsyncEngine, application_name: str, within: float = 30) -> None:
    """Until a backend of this service waits on a lock: the call is in flight, held by us."""
    deadline = time.monotonic() + within
    while not await count(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = :name AND wait_event_type = 'Lock'",
        name=application_name,
    ):
        assert time.monotonic() < deadline, f"{application_name} never reached the held row"
        await asyncio.sleep(0.02)


async def sigterm_and_wait_until_draining(stack: Stack, service: str) -> None:
    """SIGTERM, then wait for the health stream to say NOT_SERVING: the drain has begun."""
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        await asyncio.wait_for(stream.read(), 10)  # subscribed before the signal
        stack.processes[service].send_signal(signal.SIGTERM)
        while (await asyncio.wait_for(stream.read(), 10)).status != NOT_SERVING:
            pass
        stream.cancel()


async def restart(stack: Stack, service: str) -> int:
    exit_code = await asyncio.to_thread(stack.processes[service].wait, GRACE_SECONDS + 5)
    stack.start(service)
    await stack.up()
    return exit_code


@asynccontextmanager
async def holding(
    engine: AsyncEngine, sql: str, **params: object
) -> AsyncIterator[AsyncConnection]:
    """An uncommitted row the service's call will wait on; rolled back when let go."""
    async with engine.connect() as blocker:
        await blocker.execute(text(sql), params)
        try:
            yield blocker
        finally:
            await blocker.rollback()


async def test_payments_finishes_the_call_it_holds_when_sigtermed(
    drain_stack: Stack, drain_engine: AsyncEngine
) -> None:
    """The gateway's call is blocked on its inbox insert when SIGTERM lands: it still commits."""
    catalogue = load_catalogue(drain_stack.settings.catalogue_path)
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    async with holding(
        drain_engine,
        "INSERT INTO payments.inbox (provider, event_id, event_type, payload)"
        " VALUES ('stripe', :id, 'held', '\\x7b7d')",
        id=event["id"],
    ) as blocker:
        async with open_channel(
            drain_stack.addrs["payments"], drain_stack.settings.internal_token
        ) as channel:
            # The gateway's own call, with a deadline that outlives the whole drain.
            call = asyncio.ensure_future(
                payments_pb2_grpc.PaymentsServiceStub(channel).HandleStripeEvent(
                    payments_pb2.HandleStripeEventRequest(payload=json.dumps(event).encode()),
                    timeout=GRACE_SECONDS * 2,
                )
            )
            await until_blocked(drain_engine, "payments")
            await sigterm_and_wait_until_draining(drain_stack, "payments")
            assert drain_stack.processes["payments"].poll() is None, "exited with a call open"
            await blocker.rollback()
            reply = await call
    assert not reply.duplicate and reply.event.event_id == event["id"]
    assert await restart(drain_stack, "payments") == 0
    assert (
        await count(
            drain_engine,
            "SELECT count(*) FROM payments.inbox WHERE event_id = :id AND event_type = :type",
            id=event["id"],
            type="checkout.session.completed",
        )
        == 1
    )
    purchase = Purchase("stripe", event["id"], buyer, [200])
    await settle(drain_engine, [purchase], within=60)
    await assert_each_took_effect_once(drain_stack, [purchase])


async def test_entitlements_finishes_the_grant_it_holds_and_the_gateway_never_503s(
    drain_stack: Stack, drain_engine: AsyncEngine
) -> None:
    user, reference = f"user-drain-{secrets.token_hex(6)}", f"pi_drain_{secrets.token_hex(6)}"
    request = entitlements_pb2.GrantEntitlementRequest(
        user_id=user,
        entitlement="premium",
        source=entitlements_pb2.Source(provider="stripe", reference=reference),
        event_id=f"evt_{secrets.token_hex(6)}",
        purchased_at=to_proto_time(datetime.now(UTC)),
        duration_seconds=30 * 86400,
    )
    catalogue = load_catalogue(drain_stack.settings.catalogue_path)
    during_drain = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    async with (
        holding(
            drain_engine,
            "INSERT INTO entitlements.grants (grant_id, provider, reference, revoked_at)"
            " VALUES (gen_random_uuid(), 'stripe', :reference, now())",
            reference=reference,
        ) as blocker,
        open_channel(
            drain_stack.addrs["entitlements"], drain_stack.settings.internal_token
        ) as channel,
        aiohttp.ClientSession() as http,
    ):
        call = asyncio.ensure_future(
            entitlements_pb2_grpc.EntitlementsServiceStub(channel).GrantEntitlement(
                request, timeout=GRACE_SECONDS * 2
            )
        )
        await until_blocked(drain_engine, "entitlements")
        await sigterm_and_wait_until_draining(drain_stack, "entitlements")
        # A buyer paying while entitlements drains sees nothing of it.
        assert (await post_stripe(http, drain_stack, during_drain))[0] == 200
        assert drain_stack.processes["entitlements"].poll() is None, "exited with a call open"
        await blocker.rollback()
        reply = await call
    assert reply.created and reply.grant.user_id == user
    assert await restart(drain_stack, "entitlements") == 0
    assert (
        await count(
            drain_engine,
            "SELECT count(*) FROM entitlements.grants WHERE reference = :reference"
            " AND user_id = :user AND revoked_at IS NULL",
            reference=reference,
            user=user,
        )
        == 1
    )
    buyer = int(during_drain["data"]["object"]["metadata"]["telegram_user_id"])
    purchase = Purchase("stripe", during_drain["id"], buyer, [200])
    await settle(drain_engine, [purchase], within=60)
    await assert_each_took_effect_once(drain_stack, [purchase])


async def test_accounts_finishes_the_user_it_holds_and_the_gateway_never_503s(
    drain_stack: Stack, drain_engine: AsyncEngine
) -> None:
    telegram_user_id = new_buyer()
    during_drain = telegram_update(
        "payment",
        load_catalogue(drain_stack.settings.catalogue_path),
        telegram_user_id=new_buyer(),
        sku="premium_30d",
    )
    async with (
        holding(
            drain_engine,
            "INSERT INTO accounts.users (user_id, telegram_user_id) VALUES (:user, :telegram)",
            user=f"held-{secrets.token_hex(6)}",
            telegram=telegram_user_id,
        ) as blocker,
        open_channel(drain_stack.addrs["accounts"], drain_stack.settings.internal_token) as channel,
        aiohttp.ClientSession() as http,
    ):
        call = asyncio.ensure_future(
            accounts_pb2_grpc.AccountsServiceStub(channel).ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_user_id, create=True),
                timeout=GRACE_SECONDS * 2,
            )
        )
        await until_blocked(drain_engine, "accounts")
        await sigterm_and_wait_until_draining(drain_stack, "accounts")
        assert (await post_telegram(http, drain_stack, during_drain))[0] == 200
        assert drain_stack.processes["accounts"].poll() is None, "exited with a call open"
        await blocker.rollback()
        reply = await call
    assert reply.user.telegram_user_id == telegram_user_id
    assert await restart(drain_stack, "accounts") == 0
    assert (
        await count(
            drain_engine,
            "SELECT count(*) FROM accounts.users WHERE user_id = :user AND telegram_user_id = :t",
            user=reply.user.user_id,
            t=telegram_user_id,
        )
        == 1
    )
    buyer = during_drain["message"]["from"]["id"]
    key = telegram_updates.event_key(during_drain, "successful_payment")
    purchase = Purchase("telegram", key, buyer, [200])
    await settle(drain_engine, [purchase], within=60)
    await assert_each_took_effect_once(drain_stack, [purchase])


async def restart_gateway_with(stack: Stack, env: dict[str, str]) -> None:
    """The gateway stopped (SIGTERM) and started again with `env` on top of the stack's."""
    stack.service_env["gateway"] = env
    assert await asyncio.to_thread(stack.stop, "gateway", signal.SIGTERM, GRACE_SECONDS + 5) == 0
    stack.start("gateway")
    await stack.up()


@pytest.fixture
async def patient_gateway(drain_stack: Stack) -> AsyncIterator[Stack]:
    """The drain stack with a gateway that waits on payments for longer than any machine
    takes to let a held row go; the default deadline is back for the tests after."""
    before = drain_stack.service_env.get("gateway", {})
    await restart_gateway_with(
        drain_stack, {**before, "GATEWAY_PAYMENTS_DEADLINE_SECONDS": str(PATIENT_DEADLINE_SECONDS)}
    )
    try:
        yield drain_stack
    finally:
        await restart_gateway_with(drain_stack, before)


async def test_the_gateway_answers_the_request_it_holds_when_sigtermed(
    patient_gateway: Stack, drain_engine: AsyncEngine
) -> None:
    """A webhook inside the gateway, waiting on payments (held on its inbox insert), when
    SIGTERM lands: the gateway stops taking connections but answers that one with its 200.

    Its deadline for payments is longer than the grace here, so the 200 depends only on the
    drain letting the request finish, never on how fast this machine lets the row go."""
    stack = patient_gateway
    catalogue = load_catalogue(stack.settings.catalogue_path)
    host, port = stack.addrs["gateway"].rsplit(":", 1)
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    async with (
        holding(
            drain_engine,
            "INSERT INTO payments.inbox (provider, event_id, event_type, payload)"
            " VALUES ('stripe', :id, 'held', '\\x7b7d')",
            id=event["id"],
        ) as blocker,
        aiohttp.ClientSession() as http,
    ):
        answer = asyncio.ensure_future(post_stripe(http, stack, event))
        await until_blocked(drain_engine, "payments")
        stack.processes["gateway"].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while True:  # until the gateway refuses new connections: it is draining
            try:
                _, probe = await asyncio.open_connection(host, int(port))
                probe.close()
            except OSError:
                break
            assert time.monotonic() < deadline, "the gateway kept taking connections"
            await asyncio.sleep(0.01)
        still_running = stack.processes["gateway"].poll() is None
        await blocker.rollback()
        status, _ = await answer
    assert await restart(stack, "gateway") == 0
    assert still_running, "the gateway exited with a request open"
    assert status == 200
    purchase = Purchase("stripe", event["id"], buyer, [200])
    await settle(drain_engine, [purchase], within=60)
    await assert_each_took_effect_once(stack, [purchase])


async def test_a_hung_payments_costs_a_503_in_time_and_the_redelivery_counts_once(
    drain_stack: Stack, drain_engine: AsyncEngine
) -> None:
    """Payments alive but frozen (SIGSTOP): its connection stays open and nothing answers.
    The gateway's own deadline must answer for it; after SIGCONT a redelivery counts once."""
    catalogue = load_catalogue(drain_stack.settings.catalogue_path)
    buyer, intent = new_buyer(), f"pi_hung_{secrets.token_hex(8)}"
    event = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        payment_intent=intent,
    )
    query = telegram_update("pre-checkout", catalogue, telegram_user_id=buyer, sku="premium_30d")
    # Generous, yet well short of the 5 s default a gateway without its own deadline would wait.
    deadline = drain_stack.settings.gateway_payments_deadline_seconds
    bound = aiohttp.ClientTimeout(total=deadline + 2)
    payments = drain_stack.processes["payments"]
    payments.send_signal(signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession(timeout=bound) as http:
            status, _ = await post_stripe(http, drain_stack, event)
            assert status == 503
            status, answer = await post_telegram(http, drain_stack, query)
            assert status == 200 and answer["ok"] is False and answer["error_message"]
    finally:
        payments.send_signal(signal.SIGCONT)
    async with aiohttp.ClientSession() as http:
        assert (await post_stripe(http, drain_stack, event))[0] == 200  # Stripe's retry
        assert (await post_stripe(http, drain_stack, event))[0] == 200  # and a duplicate
    purchase = Purchase("stripe", event["id"], buyer, [503, 200])
    await settle(drain_engine, [purchase], within=60)
    await assert_each_took_effect_once(drain_stack, [purchase])
    counts = {
        "inbox": "SELECT count(*) FROM payments.inbox WHERE event_id = :key",
        "ledger": "SELECT count(*) FROM payments.payments WHERE payment_key = :key",
        "grants": "SELECT count(*) FROM entitlements.grants WHERE reference = :key",
        "audit": "SELECT count(*) FROM entitlements.audit WHERE reference = :key"
        " AND action = 'grant'",
    }
    keys = {"inbox": event["id"]}
    found = {
        name: await count(drain_engine, sql, key=keys.get(name, intent))
        for name, sql in counts.items()
    }
    assert found == dict.fromkeys(counts, 1), found
