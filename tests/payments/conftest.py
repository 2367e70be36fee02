"""What the Stripe and Telegram end-to-end tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.ops.factories import sign_stripe
from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack


@pytest.fixture(scope="module")
def catalogue(stack: Stack) -> Catalogue:
    return load_catalogue(stack.settings.catalogue_path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sign(stack: Stack) -> Callable[..., str]:
    """Stripe's signer as a fixture: the `Stripe-Signature` for a body, with the stack's
    secret, as `paylayer trigger stripe` signs (the same function)."""

    def signer(body: str, *, timestamp: int | None = None, secret: str | None = None) -> str:
        return sign_stripe(body, secret or stack.settings.stripe_webhook_secrets[0], timestamp)

    return signer


@pytest.fixture(autouse=True)
def fresh_bot_api(bot_api: FakeBotApi) -> None:
    """Each test sees only the Bot API calls and Stars transactions it caused."""
    bot_api.reset()
