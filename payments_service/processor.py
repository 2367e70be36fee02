"""Processing the inbox: each pending event applied exactly once, retried while it cannot be.

Exactly once rests on two things: the inbox row is locked (FOR UPDATE SKIP LOCKED) while it is
processed, and every effect downstream is idempotent by its source (provider + payment key).
A crash between the grant and the commit leaves the row pending; the retry grants the same
source again, which entitlements counts once.
"""

from __future__ import annotations

import asyncio
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
    if event.provider == stripe_events.PROVIDER:
        return stripe_events.interpret(event.payload, catalogue)
    if event.provider == telegram_updates.PROVIDER:
        return telegram_updates.interpret(event.payload, catalogue)
    raise Unprocessable(f"unknown provider {event.provider!r}")


class Processor:
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
        self._in_flight: set[asyncio.Task[Any]] = set()

    def kick(self, inbox_id: int) -> None:
        """Process a just-committed event now, without waiting for the worker's next turn."""
        task = asyncio.create_task(self.process(inbox_id))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def drain(self) -> None:
        """On shutdown: let events being processed finish (they would be retried anyway)."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=10)

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
        try:
            async with connection.begin_nested():
                intent = interpret(event, self.catalogue)
                payment_key = await self._effect(connection, event, intent)
        except Unprocessable as reason:
            log.warning("event %s kept as failed: %s", event.event_id, reason)
            await self.store.finish(connection, event, "failed", str(reason))
            return
        except Retryable as reason:
            delay = backoff(event.attempts)
            log.info("event %s waits %.1f s: %s", event.event_id, delay.total_seconds(), reason)
            await self.store.retry_later(connection, event, str(reason), delay)
            return
        except Exception as error:
            if event.attempts + 1 >= MAX_ATTEMPTS_FOR_ERRORS:
                log.exception("event %s failed for good", event.event_id)
                await self.store.finish(connection, event, "failed", f"error: {error!r}")
            else:
                log.exception("event %s hit an error; retrying", event.event_id)
                await self.store.retry_later(
                    connection, event, f"error: {error!r}", backoff(event.attempts)
                )
            return
        if isinstance(intent, Ignore):
            await self.store.finish(connection, event, "ignored", intent.reason, payment_key)
        else:
            await self.store.finish(connection, event, "processed", "", payment_key)

    async def _effect(self, connection: Any, event: Event, intent: Intent) -> str | None:
        event_ref = f"{event.provider}:{event.event_id}"
        if isinstance(intent, Grant):
            user_id = await self.downstream.resolve_payer(intent.payer)
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
            await self.downstream.grant(
                user_id=user_id,
                sku=intent.sku,
                provider=intent.provider,
                payment_key=intent.payment_key,
                event_id=event_ref,
                purchased_at=intent.purchased_at,
                until=intent.until,
            )
            return intent.payment_key
        if isinstance(intent, Revoke):
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.payment_key,
                status=intent.status,
                amount_refunded=intent.amount_refunded,
            )
            # A revoke before its payment leaves a tombstone: the later grant stays revoked.
            await self.downstream.revoke(
                provider=intent.provider,
                payment_key=intent.payment_key,
                event_id=event_ref,
                reason=intent.status,
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
        """The backstop: events whose first try failed (or whose process died) are retried here."""
        await asyncio.gather(*(self._worker() for _ in range(self._workers)))

    async def _worker(self) -> None:
        while True:
            worked = await self.process()
            if not worked:
                await asyncio.sleep(self._poll_seconds)
