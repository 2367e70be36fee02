"""A stack of its own for each fault module: these tests kill and restart its parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.db import create_engine
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack


@pytest.fixture(scope="module")
def fault_database_url(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def fault_stack(
    fault_database_url: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = make_settings(fault_database_url, bot_api)
    with running_stack(settings, tmp_path_factory.mktemp("fault-logs")) as stack:
        yield stack


@pytest.fixture(scope="module")
async def fault_engine(fault_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(fault_database_url, application_name="fault-tests", pool_size=2)
    yield engine
    await engine.dispose()
