"""Outbound calls to Telegram's Bot API (base URL configurable, so tests run a local one)."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from paylayer.catalogue import Sku
from paylayer.errors import FailedPrecondition, Unavailable

# Telegram Stars subscriptions renew every 30 days; it is the only period the API accepts.
SUBSCRIPTION_PERIOD_SECONDS = 30 * 24 * 3600


class BotApiError(Exception):
    def __init__(
        self, method: str, description: str, error_code: int = 0, retry_after: float = 0.0
    ) -> None:
        super().__init__(f"{method}: {description}")
        self.description = description
        # Telegram's error_code (400, 403, 429, 5xx) and, on 429, parameters.retry_after.
        self.error_code = error_code
        self.retry_after = retry_after


class BotApi:
    def __init__(self, base_url: str, token: str, timeout_seconds: float = 10.0) -> None:
        self._base = f"{base_url.rstrip('/')}/bot{token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, **params: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(f"{self._base}/{method}", json=params) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # Never include the URL: it carries the bot token.
            raise Unavailable(f"Telegram {method} unreachable: {type(error).__name__}") from None
        if not isinstance(body, dict) or not body.get("ok"):
            if not isinstance(body, dict):
                raise BotApiError(method, "", response.status)
            code = body.get("error_code")
            parameters = body.get("parameters")
            retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
            raise BotApiError(
                method,
                str(body.get("description", ""))[:500],
                code if isinstance(code, int) else response.status,
                # A wait of an hour or more is not one to honour blindly: treated as none.
                float(retry_after)
                if isinstance(retry_after, int | float) and 0 < retry_after < 3600
                else 0.0,
            )
        return body.get("result")

    async def send_message(self, chat_id: int, text: str) -> int:
        """Plain text (no parse_mode: nothing in it is markup); the sent message's id."""
        result = await self.call(
            "sendMessage", chat_id=chat_id, text=text, link_preview_options={"is_disabled": True}
        )
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return message_id if isinstance(message_id, int) else 0

    async def create_invoice_link(self, sku: Sku, user_id: str) -> tuple[str, str]:
        if sku.stars is None:
            raise FailedPrecondition(f"{sku.name} cannot be bought with Stars")
        # `<sku>:<nonce>` fits the 128-byte payload and makes each link unique.
        payload = f"{sku.name}:{secrets.token_hex(8)}"
        params: dict[str, Any] = {
            "title": sku.name.replace("_", " ").title(),
            "description": f"{sku.grants} access" + (" for life" if sku.lifetime else ""),
            "payload": payload,
            "currency": "XTR",
            "prices": [{"label": sku.name, "amount": sku.stars}],
        }
        if sku.recurring:
            params["subscription_period"] = SUBSCRIPTION_PERIOD_SECONDS
        url = await self.call("createInvoiceLink", **params)
        return str(url), payload

    async def refund_star_payment(self, telegram_user_id: int, charge_id: str) -> None:
        try:
            await self.call(
                "refundStarPayment", user_id=telegram_user_id, telegram_payment_charge_id=charge_id
            )
        except BotApiError as error:
            # Already refunded is the outcome asked for: count it as success.
            if "CHARGE_ALREADY_REFUNDED" not in error.description:
                raise FailedPrecondition(str(error)) from None

    async def star_transactions(self, page_size: int = 100) -> list[dict[str, Any]]:
        """Every Stars transaction, paged with offset until a short page."""
        transactions: list[dict[str, Any]] = []
        offset = 0
        while True:
            result = await self.call("getStarTransactions", offset=offset, limit=page_size)
            page = result.get("transactions", []) if isinstance(result, dict) else []
            transactions.extend(t for t in page if isinstance(t, dict))
            if len(page) < page_size:
                return transactions
            offset += len(page)
