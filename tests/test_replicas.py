"""Two replicas of every service, clients spreading calls over them: still exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.db import create_engine
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.faults.load import Load, assert_each_took_effect_once, settle
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
    assert len(replicated.processes) == 8
    assert replicated.addrs["payments"].count(",") == 1  # clients see both replicas
    load = Load(replicated, rate_per_second=25)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(8)
    load.stop()
    await sending
    assert {s for p in load.purchases for s in p.statuses} == {200}
    await settle(replicas_engine, load.purchases, within=60)
    await assert_each_took_effect_once(replicated, load.purchases)
    # Round robin really spread the calls: every replica of every gRPC service served some.
    for service in ("payments", "entitlements", "accounts"):
        for instance in (service, f"{service}-2"):
            assert await handled_by(replicated, instance) > 0, f"{instance} served nothing"
