"""The buyer's side of the running stack in one object: the stack, an HTTP session to its
gateway, the catalogue and the database, so that a test names what it needs once and a
purchase reads as one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.ops.factories import telegram_update
from tests.payments.helpers import post_telegram, user_of_telegram, wait_settled
from tests.payments.test_telegram import key_of
from tests.stack import Stack


@dataclass(frozen=True)
class Shop:
    stack: Stack
    http: aiohttp.ClientSession
    catalogue: Catalogue
    engine: AsyncEngine

    def telegram(self, kind: str, buyer: int, sku: str, **fields: Any) -> dict[str, Any]:
        """A Telegram update of this kind (payment, refund, subscription) from the buyer."""
        return telegram_update(kind, self.catalogue, telegram_user_id=buyer, sku=sku, **fields)

    async def deliver(self, update: dict[str, Any]) -> None:
        """Telegram posts the update to the gateway; it is applied (processed) before this
        returns."""
        status, _ = await post_telegram(self.http, self.stack, update)
        assert status == 200
        assert (await wait_settled(self.engine, "telegram", [key_of(update)]))[
            key_of(update)
        ] == "processed"

    async def pay_stars(self, buyer: int, sku: str) -> str:
        """The buyer pays for `sku` in Stars; their user id, once the payment is applied."""
        await self.deliver(self.telegram("payment", buyer, sku))
        return await self.user_of(buyer)

    async def user_of(self, telegram_user_id: int) -> str:
        return await user_of_telegram(self.stack, telegram_user_id)


@pytest.fixture(name="shop")
def shop_fixture(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> Shop:
    """`shop`, for the test modules that import it (with their own `catalogue` and `http`)."""
    return Shop(stack, http, catalogue, engine)
