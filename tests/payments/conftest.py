"""What the Stripe and Telegram end-to-end tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from paylayer.catalogue import Catalogue, load_catalogue
from tests.stack import Stack


@pytest.fixture(scope="module")
def catalogue(stack: Stack) -> Catalogue:
    return load_catalogue(stack.settings.catalogue_path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
