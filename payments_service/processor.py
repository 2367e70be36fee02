"""Processing the inbox: each pending event applied exactly once, retried while it cannot be.

Exactly once rests on two things: the inbox row is locked (FOR UPDATE SKIP LOCKED) while it is
processed, and every effect downstream is idempotent by its source (provider + payment key).
A crash between the grant and the commit leaves the row pending; the retry grants the same
source again, which entitlements counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from datetime import timedelta
from typing import Any

from paylayer.catalogue import Catalogue
from paylayer.logs import request_id_var
from payments_service import stripe_events, telegram_updates
from payments_service.downstream import Downstream, Retryable
from payments_service.intents import (
    Grant,
    Ignore,
    Intent,
    Record,
    Revoke,
    SubscriptionState,
    Unprocessable,
)
from payments_service.metrics import EVENT_RETRIES, EVENTS_FINISHED
from payments_service.store import Event, Store

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0
# Bugs (not outages) stop being retried after this many attempts and are kept as failed.
MAX_ATTEMPTS_FOR_ERRORS = 10


def backoff(attempts: int) -> timedelta:
    """0.5 s, 1 s, 2 s … capped at 10 s, with jitter so replicas do not retry in step."""
    seconds = min(MAX_BACKOFF_SECONDS, 0.5 * 2**attempts)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def interpret(event: Event, catalogue: Catalogue) -> Intent:
    try:
        body = json.loads(event.payload)
    except (ValueError, RecursionError):
        raise Unprocessable("stored body is not JSON") from None
    if not isinstance(body, dict):
        raise Unprocessable("stored body is not a JSON object")
    if event.provider == stripe_events.PROVIDER:
        return stripe_events.interpret(body, catalogue)
    if event.provider == telegram_updates.PROVIDER:
        return telegram_updates.interpret(body, catalogue)
    raise Unprocessable(f"unknown provider {event.provider!r}")


class Processor:
    """Applies pending events: those just received first, then any that are due for a retry.

    A fixed number of workers bounds the work done at once, so a burst of webhooks is first
    acknowledged (cheap) and then applied as fast as the downstream services allow.
    """

    def __init__(
        self,
        store: Store,
        downstream: Downstream,
        catalogue: Catalogue,
        *,
        workers: int = 4,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.catalogue = catalogue
        self._workers = workers
        self._poll_seconds = poll_seconds
        # Just-committed events; when full, the workers' poll of the table finds them instead.
        self._fresh: asyncio.Queue[int] = asyncio.Queue(maxsize=10_000)

    def kick(self, inbox_id: int) -> None:
        """Have a just-committed event processed next, without waiting for the next poll."""
        with contextlib.suppress(asyncio.QueueFull):
            self._fresh.put_nowait(inbox_id)

    async def drain(self, within: float = 10) -> None:
        """On shutdown: apply what was received but not yet applied, for up to `within` s.

        Whatever is left stays pending in the inbox and is applied after the restart.
        """
        deadline = asyncio.get_running_loop().time() + within
        while not self._fresh.empty() and asyncio.get_running_loop().time() < deadline:
            await self.process(self._fresh.get_nowait())

    async def process(self, inbox_id: int | None = None) -> bool:
        """Process one pending event (this one, or the next due). False when there was none."""
        try:
            async with self.store.claim(inbox_id) as (connection, event):
                if event is None:
                    return False
                token = request_id_var.set(f"{event.provider}:{event.event_id}")
                try:
                    await self._apply(connection, event)
                finally:
                    request_id_var.reset(token)
                return True
        except Exception:
            # The database itself failed (or went away mid-transaction): the row stays pending.
            log.exception("processing inbox row %s failed; it stays pending", inbox_id)
            return False

    async def _apply(self, connection: Any, event: Event) -> None:
        """Downstream calls first (idempotent), local writes last: a failure at any point
        leaves nothing half-written here, and the retry repeats only harmless calls."""
        try:
            intent = interpret(event, self.catalogue)
            payment_key = await self._effect(connection, event, intent)
        except Unprocessable as reason:
            log.warning("event %s kept as failed: %s", event.event_id, reason)
            await self._finish(connection, event, "failed", str(reason))
            return
        except Retryable as reason:
            EVENT_RETRIES.labels(event.provider).inc()
            delay = backoff(event.attempts)
            log.info("event %s waits %.1f s: %s", event.event_id, delay.total_seconds(), reason)
            await self.store.retry_later(connection, event, str(reason), delay)
            return
        except Exception as error:
            if event.attempts + 1 >= MAX_ATTEMPTS_FOR_ERRORS:
                log.exception("event %s failed for good", event.event_id)
                await self._finish(connection, event, "failed", f"error: {error!r}")
            else:
                log.exception("event %s hit an error; retrying", event.event_id)
                await self.store.retry_later(
                    connection, event, f"error: {error!r}", backoff(event.attempts)
                )
            return
        if isinstance(intent, Ignore):
            await self._finish(connection, event, "ignored", intent.reason, payment_key)
        else:
            await self._finish(connection, event, "processed", "", payment_key)

    async def _finish(
        self,
        connection: Any,
        event: Event,
        outcome: str,
        error: str,
        payment_key: str | None = None,
    ) -> None:
        await self.store.finish(connection, event, outcome, error, payment_key)
        EVENTS_FINISHED.labels(event.provider, event.event_type, outcome).inc()
        if outcome != "failed":  # failures are logged, with their reason, where they happen
            log.info("%s %s: %s", event.event_type, outcome, payment_key or error or "-")

    async def _effect(self, connection: Any, event: Event, intent: Intent) -> str | None:
        event_ref = f"{event.provider}:{event.event_id}"
        if isinstance(intent, Grant):
            user_id = await self.downstream.resolve_payer(intent.payer)
            await self.downstream.grant(
                user_id=user_id,
                sku=intent.sku,
                provider=intent.provider,
                payment_key=intent.payment_key,
                event_id=event_ref,
                purchased_at=intent.purchased_at,
                until=intent.until,
            )
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.payment_key,
                status="succeeded",
                user_id=user_id,
                sku=intent.sku.name,
                amount=intent.amount,
                currency=intent.currency,
                subscription_id=intent.subscription_id,
                purchased_at=intent.purchased_at,
            )
            return intent.payment_key
        if isinstance(intent, Revoke):
            # A revoke before its payment leaves a tombstone: the later grant stays revoked.
            await self.downstream.revoke(
                provider=intent.provider,
                payment_key=intent.payment_key,
                event_id=event_ref,
                reason=intent.status,
            )
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.payment_key,
                status=intent.status,
                amount_refunded=intent.amount_refunded,
            )
            return intent.payment_key
        if isinstance(intent, Record):
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.payment_key,
                status=intent.status,
                amount=intent.amount,
                currency=intent.currency,
                amount_refunded=intent.amount_refunded,
            )
            return intent.payment_key
        if isinstance(intent, SubscriptionState):
            await self.store.set_subscription_state(
                connection, intent.provider, intent.subscription_id, intent.state
            )
            return None
        return None

    async def run_workers(self) -> None:
        """Fresh events first; when there are none, the due retries (and rows left behind by a
        crashed replica) found by polling the table."""
        await asyncio.gather(*(self._worker() for _ in range(self._workers)))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        while True:
            if loop.time() >= next_poll:
                while await self.process():
                    pass
                next_poll = loop.time() + self._poll_seconds
            try:
                inbox_id = await asyncio.wait_for(self._fresh.get(), self._poll_seconds)
            except TimeoutError:
                continue
            await self.process(inbox_id)
