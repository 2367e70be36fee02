"""Fixtures shared by every test: a real PostgreSQL, migrated, and a token for our services.

With DATABASE_URL set (CI sets it to the machine's PostgreSQL 15) the tests create a database
of their own on that server; without it they start the embedded server from the wheel.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.db import create_engine
from paylayer.embedded_pg import start_embedded, with_database
from paylayer.migrations import upgrade_all
from paylayer.settings import REPO_ROOT, Settings
from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack, make_stack

INTERNAL_TOKEN = "test-internal-" + secrets.token_hex(8)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def admin_database_url() -> Iterator[str]:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield _plain(configured)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="paylayer-test-")) / "pgdata"
    server, url = start_embedded(data_dir, delete_on_exit=True)
    yield url
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """A fresh database for this test run, migrated to head, dropped at the end."""
    name = f"paylayer_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_database_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = with_database(admin_database_url, name)
    upgrade_all(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


BOT_TOKEN = "123456:TEST-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def bot_api() -> Iterator[FakeBotApi]:
    """Telegram's Bot API, played locally: the one server we cannot reach from here."""
    server = FakeBotApi(token=BOT_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, bot_api: FakeBotApi) -> Settings:
    return Settings(
        database_url=database_url,
        internal_token=INTERNAL_TOKEN,
        stripe_webhook_secrets=("whsec_test_" + secrets.token_hex(16),),
        telegram_webhook_secret="tg-secret-" + secrets.token_hex(8),
        telegram_bot_token=BOT_TOKEN,
        telegram_api_base=bot_api.base_url,
        catalogue_path=REPO_ROOT / "tests" / "catalogue.yaml",
        shutdown_grace_seconds=2.0,
    )


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """For tests that look straight into the tables, to check what a user cannot see."""
    engine = create_engine(database_url, application_name="tests", pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All four services as separate processes on free ports, up and healthy."""
    running = make_stack(settings, tmp_path_factory.mktemp("stack-logs"))
    for name in ("accounts", "entitlements", "payments", "gateway"):
        running.start(name)
    try:
        running.wait_until_up()
        yield running
    finally:
        for name in reversed(list(running.processes)):
            running.stop(name)
