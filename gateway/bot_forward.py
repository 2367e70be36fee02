"""The bot behind the webhook: updates forwarded, as they came, to `BOT_UPDATES_URL`.

Telegram allows one webhook per bot, and the bot that sells is the bot users talk to, so the
gateway is that webhook. An update that is not a payment is relayed to the bot and the bot's
status and body go back to Telegram (a reply-with-method works; a bot that is down makes
Telegram retry). A payment update never waits on the bot: payments answers it, and the bot
gets a copy afterwards, in the background, its answer ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.keys import BOT_FORWARDER, SETTINGS
from gateway.metrics import BOT_FORWARDS

log = logging.getLogger(__name__)

# Well below Telegram's own wait for a webhook reply, so a slow bot gets our 504 (and a
# retry from Telegram) rather than Telegram giving up on the whole connection.
RELAY_DEADLINE_SECONDS = 5.0
# Copies of payment updates in flight at once; past it, a copy is dropped (logged) rather
# than let a slow bot hold the gateway's memory or sockets.
BACKGROUND_IN_FLIGHT_LIMIT = 64
BACKGROUND_DEADLINE_SECONDS = 10.0
# On shutdown, copies still on their way get this long before they are abandoned.
BACKGROUND_DRAIN_SECONDS = 2.0
# After a copy finds the bot unreachable, copies are dropped unsent this long: a dead bot
# costs the gateway no connection attempt (nor log line) per payment.
BOT_DOWN_PAUSE_SECONDS = 1.0

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def is_payment_update(update: dict[str, Any]) -> bool:
    """The updates payments answers: the same test payments applies to tell them apart."""
    if isinstance(update.get("pre_checkout_query"), dict):
        return True
    message = update.get("message")
    if isinstance(message, dict) and any(
        isinstance(message.get(kind), dict) for kind in ("successful_payment", "refunded_payment")
    ):
        return True
    return isinstance(update.get("subscription"), dict)


# Updates payments records for channel access and the bot gets as well, with its answer relayed.
CHANNEL_UPDATES = ("chat_join_request", "chat_member")


def is_channel_update(update: dict[str, Any]) -> bool:
    return any(isinstance(update.get(kind), dict) for kind in CHANNEL_UPDATES)


class BotForwarder:
    """One HTTP session to the bot, and the copies of payment updates still on their way."""

    def __init__(self, session: aiohttp.ClientSession, url: str, secret: str) -> None:
        self.session = session
        self.url = url
        self.secret = secret
        self.in_flight: set[asyncio.Task[None]] = set()
        self.copies_paused_until = 0.0
        self.drops_logged_at = 0.0

    def _post(self, body: bytes, deadline: float) -> Any:
        return self.session.post(
            self.url,
            data=body,
            headers={SECRET_HEADER: self.secret, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=deadline),
            allow_redirects=False,
        )

    async def relay(self, body: bytes) -> web.Response:
        """The bot's answer to this update, as Telegram should get it."""
        try:
            async with self._post(body, RELAY_DEADLINE_SECONDS) as reply:
                content = await reply.read()
                content_type = reply.headers.get("Content-Type")
                status = reply.status
        except TimeoutError:
            BOT_FORWARDS.labels("relay", "timeout").inc()
            log.warning("bot did not answer within %.0f s", RELAY_DEADLINE_SECONDS)
            return web.json_response({"error": "bot did not answer in time"}, status=504)
        except aiohttp.ClientError as error:
            BOT_FORWARDS.labels("relay", "unreachable").inc()
            log.warning("bot unreachable: %s", type(error).__name__)
            return web.json_response({"error": "bot unreachable"}, status=502)
        BOT_FORWARDS.labels("relay", "answered" if status < 400 else "bot_error").inc()
        self.copies_paused_until = 0.0  # it answered: it is up again
        headers = {"Content-Type": content_type} if content_type else None
        return web.Response(status=status, body=content, headers=headers)

    def copy_later(self, body: bytes) -> None:
        """Send the bot a copy of a payment update without anyone waiting for it."""
        if time.monotonic() < self.copies_paused_until:
            BOT_FORWARDS.labels("copy", "bot_down").inc()
            return
        if len(self.in_flight) >= BACKGROUND_IN_FLIGHT_LIMIT:
            BOT_FORWARDS.labels("copy", "dropped").inc()
            # Once a second at most: a slow bot under a burst would otherwise flood the log.
            if time.monotonic() - self.drops_logged_at >= 1.0:
                self.drops_logged_at = time.monotonic()
                log.warning("bot copies dropped: %d already on their way", len(self.in_flight))
            return
        task = asyncio.create_task(self._copy(body))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _copy(self, body: bytes) -> None:
        try:
            async with self._post(body, BACKGROUND_DEADLINE_SECONDS) as reply:
                await reply.read()
                outcome = "answered" if reply.status < 400 else "bot_error"
        except TimeoutError:
            outcome = "timeout"
        except aiohttp.ClientError as error:
            outcome = "unreachable"
            if time.monotonic() >= self.copies_paused_until:
                log.warning(
                    "bot unreachable (%s): copies dropped for %.0f s",
                    type(error).__name__,
                    BOT_DOWN_PAUSE_SECONDS,
                )
            self.copies_paused_until = time.monotonic() + BOT_DOWN_PAUSE_SECONDS
        BOT_FORWARDS.labels("copy", outcome).inc()

    async def drain(self) -> None:
        if self.in_flight:
            _, late = await asyncio.wait(set(self.in_flight), timeout=BACKGROUND_DRAIN_SECONDS)
            for task in late:
                task.cancel()


async def bot_forwarder(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the session to the bot, opened only when there is a bot to talk to."""
    settings = app[SETTINGS]
    if not settings.bot_updates_url:
        app[BOT_FORWARDER] = None
        yield
        return
    async with aiohttp.ClientSession() as session:
        forwarder = BotForwarder(session, settings.bot_updates_url, settings.bot_updates_secret)
        app[BOT_FORWARDER] = forwarder
        yield
        await forwarder.drain()
