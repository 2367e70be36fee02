"""Fixtures shared by every test: a real PostgreSQL, migrated, and a token for our services.

With DATABASE_URL set (CI sets it to the machine's PostgreSQL 15) the tests create a database
of their own on that server; without it they start the embedded server from the wheel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.callers import CALLER_NAMES
from paylayer.db import create_engine
from paylayer.embedded_pg import start_embedded, with_database
from paylayer.ops.migrations import upgrade_all
from paylayer.settings import REPO_ROOT, Settings
from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack, make_stack

log = logging.getLogger(__name__)

# CI explores the same examples every run, so a submission lands or fails on its own merits;
# locally every run explores new ones (and keeps failures in .hypothesis/).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# One token per caller, as `paylayer dev` makes them: each stack process presents its own, so
# the tests run under the real roles. The tests themselves call as the operator.
CALLER_TOKENS = {name: f"test-{name}-{secrets.token_hex(8)}" for name in CALLER_NAMES}
INTERNAL_TOKEN = CALLER_TOKENS["operator"]
# Every stack's process logs, scanned for secrets when the run ends.
STACK_LOG_DIRS: list[Path] = []
KNOWN_SECRETS: list[str] = []


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


@contextmanager
def fresh_database(admin_url: str, *, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the server of `admin_url`, migrated to head (unless told
    otherwise), dropped after."""
    name = f"paylayer_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = with_database(admin_url, name)
    try:
        if migrated:
            upgrade_all(url)
        yield url
    finally:
        asyncio.run(_drop(admin_url, name))


async def _drop(admin_url: str, name: str) -> None:
    """Drop a test database, or leave it when that would wait. DROP DATABASE waits until every
    backend of the server has answered a signal, and a backend busy writing notifications to
    a test's LISTEN connection that is not being read (its event loop paused between tests)
    answers only once it is read again. A database left behind costs nothing: the embedded
    server goes with the run, and on a shared server its name is the run's own."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute("SET statement_timeout = '20s'")
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except asyncpg.QueryCanceledError:
        log.warning("test database %s left behind: dropping it would have waited", name)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """A fresh database for this test run."""
    with fresh_database(admin_database_url) as url:
        yield url


def make_settings(database_url: str, bot_api: FakeBotApi) -> Settings:
    """Settings for a stack of our own: fresh secrets, the local Bot API, the test catalogue."""
    settings = Settings(
        database_url=database_url,
        internal_token=INTERNAL_TOKEN,
        caller_tokens=",".join(f"{name}:{token}" for name, token in CALLER_TOKENS.items()),
        stripe_webhook_secrets=("whsec_test_" + secrets.token_hex(16),),
        telegram_webhook_secret="tg-secret-" + secrets.token_hex(8),
        telegram_bot_token=BOT_TOKEN,
        telegram_api_base=bot_api.base_url,
        catalogue_path=REPO_ROOT / "tests" / "catalogue.yaml",
        shutdown_grace_seconds=2.0,
    )
    KNOWN_SECRETS.extend(settings.secrets())
    return settings


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
    return make_settings(database_url, bot_api)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """For tests that look straight into the tables, to check what a user cannot see."""
    engine = create_engine(database_url, application_name="tests", pool_size=4)
    yield engine
    await engine.dispose()


@contextmanager
def running_stack(
    settings: Settings,
    log_dir: Path,
    replicas: int = 1,
    extra_env: dict[str, str] | None = None,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Stack]:
    """All four services as separate processes on free ports, up and healthy."""
    running = make_stack(settings, log_dir, replicas, extra_env, service_env)
    STACK_LOG_DIRS.append(log_dir)
    running.start_all()
    try:
        running.wait_until_up()
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(settings, tmp_path_factory.mktemp("stack-logs")) as running:
        yield running


def secrets_in(text: str, secrets_: list[str]) -> list[str]:
    return [secret for secret in secrets_ if secret and secret in text]


# Database details a traceback would carry unless redacted: bound parameters, key values.
UNREDACTED_DETAILS = re.compile(
    r"\[parameters: (?!\[redacted\])|Key \((?!\[redacted\])|DETAIL: (?!\[redacted\])"
    r"|invalid input [^:]*: (?!\[redacted\])"
)


def unredacted_tracebacks(text: str) -> int:
    """How many logged tracebacks still show a database detail."""
    return sum(
        1 for line in text.splitlines() if '"exc_info"' in line and UNREDACTED_DETAILS.search(line)
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Secrets and customer data never reach a log line: scan every process log this run wrote,
    tracebacks included."""
    leaks = []
    for log_dir in STACK_LOG_DIRS:
        for path in log_dir.glob("*.log"):
            text = path.read_text(errors="replace")
            found = secrets_in(text, KNOWN_SECRETS)
            if found:
                leaks.append(f"{path}: {len(found)} secret(s)")
            tracebacks = unredacted_tracebacks(text)
            if tracebacks:
                leaks.append(f"{path}: {tracebacks} traceback(s) with database details")
    if leaks:
        print("\nSECRETS FOUND IN LOGS:\n" + "\n".join(leaks))
        session.exitstatus = 1
