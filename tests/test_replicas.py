"""Two replicas of every service, clients spreading calls over them: still exactly once."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.ops.factories import sign_stripe, stripe_event, telegram_update
from paylayer.ops.services import MODULES
from payments_service import telegram_updates
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.faults.load import Load, assert_each_took_effect_once, settle
from tests.payments.helpers import new_buyer, wait_settled
from tests.stack import Stack
from tests.test_metrics import scrape


@pytest.fixture(scope="module")
def replicas_database(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def replicated(
    replicas_database: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = make_settings(replicas_database, bot_api)
    with running_stack(settings, tmp_path_factory.mktemp("replica-logs"), replicas=2) as stack:
        yield stack


@pytest.fixture(scope="module")
async def replicas_engine(replicas_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(replicas_database, application_name="replica-tests", pool_size=2)
    yield engine
    await engine.dispose()


async def handled_by(stack: Stack, instance: str) -> float:
    samples = await scrape(f"http://{stack.metrics_addrs[instance]}/metrics")
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "paylayer_grpc_server_handled_total" and ("code", "OK") in labels
    )


async def test_load_through_two_replicas_of_each_service_takes_effect_exactly_once(
    replicated: Stack, replicas_engine: AsyncEngine
) -> None:
    assert len(replicated.processes) == 2 * len(MODULES)  # the console too
    assert replicated.addrs["payments"].count(",") == 1  # clients see both replicas
    load = Load(replicated, rate_per_second=25)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(8)
    load.stop()
    await sending
    assert {s for p in load.purchases for s in p.statuses} == {200}
    await settle(replicas_engine, load.purchases, within=60)
    await assert_each_took_effect_once(replicated, load.purchases)
    # Both payments replicas applied events: each worker's claim names its process.
    async with replicas_engine.connect() as connection:
        appliers = await connection.scalar(
            text(
                "SELECT count(DISTINCT split_part(claimed_by, '-', 1)) FROM payments.inbox"
                " WHERE status = 'processed' AND event_id = ANY(:ids)"
            ),
            {"ids": [p.event_id for p in load.purchases]},
        )
    assert appliers == 2
    # Round robin really spread the calls: every replica of every gRPC service served some.
    for service in ("payments", "entitlements", "accounts"):
        for instance in (service, f"{service}-2"):
            assert await handled_by(replicated, instance) > 0, f"{instance} served nothing"


async def test_each_event_sent_to_both_gateways_at_once_counts_once(
    replicated: Stack, replicas_engine: AsyncEngine
) -> None:
    """Providers do deliver twice, and two deliveries may land on two replicas at the same
    moment: one inbox row, one grant, one audit grant and one ledger row per event."""
    catalogue = load_catalogue(replicated.settings.catalogue_path)
    gateways = [
        f"http://{replicated.instances[name].listen_addr}" for name in ("gateway", "gateway-2")
    ]
    sent: list[tuple[str, str, str, bytes, dict[str, str]]] = []  # provider, id, key, body, headers
    for index in range(12):
        buyer = new_buyer()
        if index % 2:
            update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="vip_30d")
            charge = update["message"]["successful_payment"]["telegram_payment_charge_id"]
            headers = {
                "X-Telegram-Bot-Api-Secret-Token": replicated.settings.telegram_webhook_secret
            }
            sent.append(
                (
                    "telegram",
                    telegram_updates.event_key(update, "successful_payment"),
                    charge,
                    json.dumps(update).encode(),
                    headers,
                )
            )
        else:
            intent = f"pi_twice_{secrets.token_hex(8)}"
            event = stripe_event(
                "checkout.session.completed",
                catalogue,
                sku="premium_30d",
                telegram_user_id=buyer,
                payment_intent=intent,
            )
            body = json.dumps(event)
            headers = {
                "Stripe-Signature": sign_stripe(body, replicated.settings.stripe_webhook_secrets[0])
            }
            sent.append(("stripe", event["id"], intent, body.encode(), headers))

    async with aiohttp.ClientSession() as http:

        async def deliver(base: str, provider: str, body: bytes, headers: dict[str, str]) -> int:
            url = f"{base}/api/v1/{provider}/webhook"
            headers = {"Content-Type": "application/json", **headers}
            async with http.post(url, data=body, headers=headers) as reply:
                return reply.status

        answers = await asyncio.gather(
            *(
                deliver(base, provider, body, headers)
                for provider, _, _, body, headers in sent
                for base in gateways
            )
        )
    assert set(answers) == {200}
    for provider in ("stripe", "telegram"):
        ids = [event_id for p, event_id, _, _, _ in sent if p == provider]
        assert set((await wait_settled(replicas_engine, provider, ids)).values()) == {"processed"}

    counts = {
        "inbox": "SELECT count(*) FROM payments.inbox WHERE provider = :provider"
        " AND event_id = :event_id",
        "grants": "SELECT count(*) FROM entitlements.grants WHERE provider = :provider"
        " AND reference = :key AND user_id IS NOT NULL",
        "audit grants": "SELECT count(*) FROM entitlements.audit WHERE provider = :provider"
        " AND reference = :key AND action = 'grant'",
        "ledger": "SELECT count(*) FROM payments.payments WHERE provider = :provider"
        " AND payment_key = :key",
    }
    problems = []
    async with replicas_engine.connect() as connection:
        for provider, event_id, key, _, _ in sent:
            params = {"provider": provider, "event_id": event_id, "key": key}
            found = {
                name: await connection.scalar(
                    text(sql), {k: v for k, v in params.items() if f":{k}" in sql}
                )
                for name, sql in counts.items()
            }
            if set(found.values()) != {1}:
                problems.append((provider, event_id, found))
    assert not problems, problems
