"""Processing the inbox: each pending event applied exactly once, retried while it cannot be.

Exactly once rests on two things: the inbox row is locked (FOR UPDATE SKIP LOCKED) while it is
processed, and every effect downstream is idempotent by its source (provider + payment key).
A crash between the grant and the commit leaves the row pending; the retry grants the same
source again, which entitlements counts once.

Nothing loops: any error while an event is applied (a downstream's, the database's, a bug)
rolls its transaction back and is then counted in a transaction of its own, with backoff.
After MAX_ATTEMPTS the event is kept as failed, replayable, with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError

from paylayer.catalogue import Catalogue
from paylayer.logs import request_id_var
from payments_service import stripe_events, subscription_effects, telegram_updates
from payments_service.downstream import Downstream, Retryable, reinstated_key
from payments_service.intents import (
    Grant,
    Ignore,
    Intent,
    LinkInvoicePayment,
    Record,
    Reinstate,
    Revoke,
    SubscriptionChange,
    SubscriptionState,
    Unprocessable,
)
from payments_service.metrics import EVENT_RETRIES, EVENTS_FAILED, EVENTS_FINISHED
from payments_service.store import Event, Store

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0
# Whatever the error, an event tried this many times is kept as failed (replayable). With the
# backoff below that is about a minute: a downstream down for 30 s is ridden out.
MAX_ATTEMPTS = 10
# A ledger status that means the payment's money went back (or is being fought over).
_MONEY_BACK = ("refunded", "disputed", "dispute_lost")


def refused_by_database(error: BaseException) -> bool:
    """A data exception (SQLSTATE class 22: a NUL byte, a number out of range): the database
    will refuse this payload however often it is tried."""
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


def backoff(attempts: int) -> timedelta:
    """0.5 s, 1 s, 2 s … capped at 10 s, with jitter so replicas do not retry in step."""
    seconds = min(MAX_BACKOFF_SECONDS, 0.5 * 2**attempts)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def interpret(event: Event, catalogue: Catalogue, *, stripe_livemode: bool = False) -> Intent:
    try:
        body = json.loads(event.payload)
    except (ValueError, RecursionError):
        raise Unprocessable("stored body is not JSON") from None
    if not isinstance(body, dict):
        raise Unprocessable("stored body is not a JSON object")
    if event.provider == stripe_events.PROVIDER:
        return stripe_events.interpret(body, catalogue, livemode=stripe_livemode)
    if event.provider == telegram_updates.PROVIDER:
        return telegram_updates.interpret(body, catalogue)
    raise Unprocessable(f"unknown provider {event.provider!r}")


def request_id_of(event: Event) -> str:
    """The id every log line of this event carries, the one the gateway gave it: the Stripe
    event id, or the Telegram update id (the inbox keys Telegram payments by their charge)."""
    if event.provider == telegram_updates.PROVIDER:
        with contextlib.suppress(ValueError, RecursionError, AttributeError):
            update_id = json.loads(event.payload).get("update_id")
            if isinstance(update_id, int):
                return f"telegram:{update_id}"
    return f"{event.provider}:{event.event_id}"


class _Outcome:
    """How an applied event ends: processed, or ignored with a note."""

    def __init__(self, payment_key: str | None, ignored: str = "") -> None:
        self.payment_key, self.ignored = payment_key, ignored


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
        workers: int = 2,
        poll_seconds: float = 0.5,
        stripe_livemode: bool = False,
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.catalogue = catalogue
        self._workers = workers
        self._poll_seconds = poll_seconds
        self._stripe_livemode = stripe_livemode
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
        """Process one pending event (this one, or the next due). False when there was none,
        or when the database could not be asked."""
        claimed: Event | None = None
        try:
            async with self.store.claim(inbox_id) as (connection, event):
                if event is None:
                    return False
                claimed = event
                token = request_id_var.set(request_id_of(event))
                try:
                    await self._apply(connection, event)
                finally:
                    request_id_var.reset(token)
                return True
        except Exception as error:
            if claimed is None:
                # The claim itself failed: the database is away. The row stays as it was.
                log.warning("cannot claim inbox row %s: %r", inbox_id, error)
                return False
            # The attempt's transaction is rolled back; count it in a transaction of its own.
            token = request_id_var.set(request_id_of(claimed))
            try:
                return await self._count_failure(claimed, error)
            finally:
                request_id_var.reset(token)

    async def _apply(self, connection: Any, event: Event) -> None:
        """Downstream calls first (idempotent), local writes last, in one transaction: an error
        at any point leaves nothing half-written here, and the retry repeats only harmless
        calls. Errors propagate to `process`, which counts them once rolled back."""
        intent = interpret(event, self.catalogue, stripe_livemode=self._stripe_livemode)
        outcome = await self._effect(connection, event, intent)
        ignored = intent.reason if isinstance(intent, Ignore) else outcome.ignored
        if ignored:
            await self._finish(connection, event, "ignored", ignored, outcome.payment_key)
        else:
            await self._finish(connection, event, "processed", "", outcome.payment_key)

    async def _count_failure(self, event: Event, error: BaseException) -> bool:
        attempt = event.attempts + 1
        if isinstance(error, Unprocessable):
            give_up, reason, code = True, str(error), error.code
        elif refused_by_database(error):
            give_up, code = True, "database_refused"
            sqlstate = getattr(getattr(error, "orig", None), "sqlstate", "")
            reason = f"[{code}] the database refuses this payload (SQLSTATE {sqlstate})"
        else:
            give_up, code = attempt >= MAX_ATTEMPTS, "too_many_attempts"
            text = str(error) if isinstance(error, Retryable) else f"error: {error!r}"
            reason = f"[{code}] {text[:400]}" if give_up else text[:400]
        delay = backoff(event.attempts)
        try:
            counted = await self.store.count_failed_attempt(event, reason, delay, give_up=give_up)
        except Exception as store_error:
            log.warning("attempt of %s not counted: %r", event.event_id, store_error)
            return False
        if not counted:
            return True
        if give_up:
            EVENTS_FINISHED.labels(event.provider, event.event_type, "failed").inc()
            EVENTS_FAILED.labels(event.provider, code).inc()
            unexpected = not isinstance(error, (Unprocessable, Retryable)) and code != (
                "database_refused"
            )
            log.error(
                "event %s kept as failed after %d attempt(s): %s",
                event.event_id,
                attempt,
                reason,
                exc_info=error if unexpected else None,
            )
        else:
            if isinstance(error, Retryable):
                EVENT_RETRIES.labels(event.provider).inc()
            log.warning(
                "event %s attempt %d failed, next in %.1f s: %s",
                event.event_id,
                attempt,
                delay.total_seconds(),
                reason,
            )
        return True

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
        log.info("%s %s: %s", event.event_type, outcome, payment_key or error or "-")

    async def _effect(self, connection: Any, event: Event, intent: Intent) -> _Outcome:
        event_ref = f"{event.provider}:{event.event_id}"
        if isinstance(intent, Grant):
            # A subscription's period: noted on it, and never granted past its end.
            intent = await subscription_effects.before_grant(
                self.store, self.downstream, connection, intent, event_ref
            )
            return await self._grant(connection, intent, event_ref)
        if isinstance(intent, Revoke):
            return await self._revoke(connection, intent, event_ref)
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
            return _Outcome(intent.payment_key)
        if isinstance(intent, LinkInvoicePayment):
            return await self._link_invoice_payment(connection, intent, event_ref)
        if isinstance(intent, Reinstate):
            return await self._reinstate(connection, intent, event_ref)
        if isinstance(intent, SubscriptionChange):
            await subscription_effects.apply_change(
                self.store, self.downstream, connection, intent, event_ref
            )
            return _Outcome(None)
        if isinstance(intent, SubscriptionState):
            await self.store.set_subscription_state(
                connection, intent.provider, intent.subscription_id, intent.state
            )
        return _Outcome(None)

    async def _grant(self, connection: Any, intent: Grant, event_ref: str) -> _Outcome:
        await self.store.lock_payment(connection, intent.provider, intent.payment_key)
        if intent.invoice_id is None:
            invoice_id = await self.store.invoice_of_payment(
                connection, intent.provider, intent.payment_key
            )
            if invoice_id is not None:
                return _Outcome(
                    intent.payment_key, f"payment of invoice {invoice_id}: the invoice grants"
                )
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
            invoice_id=intent.invoice_id,
        )
        return _Outcome(intent.payment_key)

    async def _revoke(self, connection: Any, intent: Revoke, event_ref: str) -> _Outcome:
        """Revoke the payment's grant, and the grant of the invoice it paid, if any.

        A revoke before its payment leaves a tombstone: the later grant stays revoked.
        """
        await self.store.lock_payment(connection, intent.provider, intent.payment_key)
        invoice_id = await self.store.invoice_of_payment(
            connection, intent.provider, intent.payment_key
        )
        for key in (intent.payment_key, invoice_id):
            if key is None:
                continue
            await self.downstream.revoke(
                provider=intent.provider, payment_key=key, event_id=event_ref, reason=intent.status
            )
            payment = await self.store.payment_row(connection, intent.provider, key)
            if payment is not None and payment["status"] == "dispute_won":
                # The time a won dispute gave back goes too when the money goes back after all.
                await self.downstream.revoke(
                    provider=intent.provider,
                    payment_key=reinstated_key(key),
                    event_id=event_ref,
                    reason=intent.status,
                )
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=key,
                status=intent.status,
                amount_refunded=intent.amount_refunded,
            )
        return _Outcome(intent.payment_key)

    async def _link_invoice_payment(
        self, connection: Any, intent: LinkInvoicePayment, event_ref: str
    ) -> _Outcome:
        """Remember which payment paid the invoice, then catch up with what came before:
        a refund or dispute of the payment revokes the invoice's grant too, and a grant the
        payment's own charge made is undone (the invoice's grant stands for the purchase)."""
        await self.store.lock_payment(connection, intent.provider, intent.payment_key)
        await self.store.link_invoice_payment(
            connection, intent.provider, intent.payment_key, intent.invoice_id
        )
        payment = await self.store.payment_row(connection, intent.provider, intent.payment_key)
        if payment is None:
            return _Outcome(intent.payment_key)
        if payment["status"] in _MONEY_BACK:
            await self.downstream.revoke(
                provider=intent.provider,
                payment_key=intent.invoice_id,
                event_id=event_ref,
                reason=payment["status"],
            )
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.invoice_id,
                status=payment["status"],
                amount_refunded=payment["amount_refunded"],
            )
        elif payment["sku"] and payment["invoice_id"] is None:
            await self.downstream.revoke(
                provider=intent.provider,
                payment_key=intent.payment_key,
                event_id=event_ref,
                reason=f"superseded by invoice {intent.invoice_id}",
            )
            await self.store.upsert_payment(
                connection,
                provider=intent.provider,
                payment_key=intent.payment_key,
                status="superseded",
                invoice_id=intent.invoice_id,
            )
        return _Outcome(intent.payment_key)

    async def _reinstate(self, connection: Any, intent: Reinstate, event_ref: str) -> _Outcome:
        """A won dispute gives back the time its revoke took, as a grant of its own placed
        where the disputed one stood."""
        await self.store.lock_payment(connection, intent.provider, intent.payment_key)
        disputed = await self.store.payment_row(connection, intent.provider, intent.payment_key)
        if disputed is not None and disputed["status"] == "dispute_won":
            return _Outcome(intent.payment_key)
        if disputed is not None and disputed["status"] == "refunded":
            # The money went back by a refund as well: there is no time to give back.
            return _Outcome(intent.payment_key, "dispute won on a refunded payment")
        # A payment that paid an invoice: the invoice's grant is the one that stands for it.
        key = (
            await self.store.invoice_of_payment(connection, intent.provider, intent.payment_key)
            or intent.payment_key
        )
        granted = await self.store.payment_row(connection, intent.provider, key)
        if granted is None or not granted["user_id"]:
            raise Retryable("the disputed payment has not been granted yet")
        await self.downstream.reinstate(
            user_id=granted["user_id"],
            provider=intent.provider,
            payment_key=key,
            event_id=event_ref,
        )
        for settled in {key, intent.payment_key}:
            await self.store.upsert_payment(
                connection, provider=intent.provider, payment_key=settled, status="dispute_won"
            )
        return _Outcome(intent.payment_key)

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
