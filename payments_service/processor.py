"""Processing the inbox: each pending event applied exactly once in effect, in batches, with no
database lock held across a call to another service.

- A worker claims a batch of due events with a lease, in one short statement. No other worker
  takes them while the lease runs; if the worker dies, another takes them once it has run out.
- The purchases of a batch are applied together: their payers resolved in one call, their
  ledger rows written in one short transaction, their grants made in one call (one
  transaction in entitlements), and the events marked done in one short transaction.
- Every other event (refunds, disputes, links, records) is applied on its own, in short
  transactions around its calls.
- Every effect elsewhere is idempotent by its source (provider + payment key), so an event
  applied twice (its worker died after the grant, before marking it done) takes effect once.
- Two events of one payment never miss each other: each writes its own fact (ledger row, link)
  and reads the other's in one transaction under an advisory lock on the payment, so whichever
  comes second sees the first.

Nothing loops: any error while an event is applied (a downstream's, the database's, a bug) is
counted in a transaction of its own, with backoff. After MAX_ATTEMPTS the event is kept as
failed, replayable, with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError

from paylayer.catalogue import Catalogue
from paylayer.logs import request_id_var
from paylayer.settings import DEFAULT_PAYMENTS_WORKERS
from payments_service import messages, stripe_events, subscription_effects, telegram_updates
from payments_service.channels import ChannelAccess
from payments_service.downstream import Downstream, Retryable, grant_request, reinstated_key
from payments_service.intents import (
    ChannelUpdate,
    Grant,
    Ignore,
    Intent,
    LinkInvoicePayment,
    PaymentNote,
    Reinstate,
    Revoke,
    SubscriptionChange,
    Unprocessable,
)
from payments_service.metrics import EVENT_RETRIES, EVENTS_FAILED, EVENTS_FINISHED
from payments_service.store import Event, Store
from payments_service.tables import INBOX_CHANNEL
from payments_service.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0
# Whatever the error, an event tried this many times is kept as failed (replayable). With the
# backoff below that is about a minute: a downstream down for 30 s is ridden out.
MAX_ATTEMPTS = 10
# Long enough for a batch's calls (each has a 3 s deadline), short enough that a crashed
# worker's events are taken up again soon.
LEASE = timedelta(seconds=15)
BATCH_SIZE = 100
GATHER_SECONDS = 0.02
# A ledger status that means the payment's money went back (or is being fought over).
_MONEY_BACK = ("refunded", "disputed", "dispute_lost")


def backoff(attempts: int) -> timedelta:
    """0.5 s, 1 s, 2 s … capped at 10 s, with jitter so replicas do not retry in step."""
    seconds = min(MAX_BACKOFF_SECONDS, 0.5 * 2**attempts)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def refused_by_database(error: BaseException) -> bool:
    """A data exception (SQLSTATE class 22: a NUL byte, a number out of range): the database
    will refuse this payload however often it is tried."""
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


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


@contextlib.contextmanager
def _serving(event: Event) -> Iterator[None]:
    token = request_id_var.set(request_id_of(event))
    try:
        yield
    finally:
        request_id_var.reset(token)


@dataclass
class _Done:
    """How an applied event ends: processed, or ignored with a note; and what the user is
    told of it (written to the outbox with the event's end)."""

    payment_key: str | None
    ignored: str = ""
    notices: list[messages.Message] = field(default_factory=list)


@dataclass
class _Purchase:
    event: Event
    grant: Grant
    user_id: str = ""


class Processor:
    """Applies pending events, in batches, as soon as they are received and when retries are
    due. A fixed number of workers bounds the work done at once."""

    def __init__(
        self,
        store: Store,
        downstream: Downstream,
        catalogue: Catalogue,
        *,
        workers: int = DEFAULT_PAYMENTS_WORKERS,
        poll_seconds: float = 0.5,
        stripe_livemode: bool = False,
        database_url: str = "",
        batch_size: int = BATCH_SIZE,
        begin: Callable[[], UnitOfWork] | None = None,
    ) -> None:
        self.store = store
        # Each effect's transaction: the ledger and the outbox on one connection.
        self.begin = begin or (lambda: UnitOfWork(store.engine))
        self.downstream = downstream
        self.catalogue = catalogue
        self._workers = workers
        self._poll_seconds = poll_seconds
        self._stripe_livemode = stripe_livemode
        self._database_url = database_url
        self._batch_size = batch_size
        self._worker_id = f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        # Told when messages to users were written (the outbox's sender wakes).
        self.on_notices: Callable[[], None] | None = None
        # Channel access (payments_service/channels.py), when the catalogue lists chats.
        self.channels: ChannelAccess | None = None

    def kick(self) -> None:
        """A new event is in the inbox: wake a worker now rather than at its next poll."""
        self._wake.set()

    async def drain(self) -> None:
        """On shutdown: give back what this process claimed and did not finish, so another
        replica (or this one, restarted) takes it at once instead of after the lease."""
        with contextlib.suppress(Exception):
            await self.store.release(self._worker_id)

    async def run_workers(self) -> None:
        """Background job: the workers, and a listener that wakes them on any replica's
        new event."""
        jobs = [self._worker() for _ in range(self._workers)]
        if self._database_url:
            jobs.append(self._listen())
        await asyncio.gather(*jobs)

    async def _worker(self) -> None:
        while True:
            self._wake.clear()
            try:
                claimed = await self.store.claim_batch(self._worker_id, self._batch_size, LEASE)
            except Exception as error:
                log.warning("cannot claim inbox events: %r", error)
                claimed = []
            if claimed:
                # Another worker may claim what arrived meanwhile.
                self._wake.set()
                await self.apply(claimed)
                if len(claimed) < self._batch_size:
                    # Under a stream of events, a short wait gathers a bigger batch: each
                    # event then costs less, which leaves more of the cores to acknowledging.
                    await asyncio.sleep(GATHER_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)

    async def _listen(self) -> None:
        """LISTEN for new events committed by any replica; the poll remains the safety net."""
        dsn = self._database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        while True:
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=5, server_settings={"application_name": "payments-listener"}
                )
                try:
                    await connection.add_listener(INBOX_CHANNEL, lambda *_: self._wake.set())
                    while not connection.is_closed():
                        await asyncio.sleep(1)
                        await connection.execute("SELECT 1")
                finally:
                    await connection.close()
            except Exception as error:
                log.debug("inbox listener reconnecting: %r", error)
            await asyncio.sleep(1)

    async def process(self, inbox_id: int, wait_seconds: float = 5.0) -> None:
        """Apply this one event now (a replay, a refund made here), so the caller's answer
        shows its effect. If a worker woken by its insert holds it, wait for that worker."""
        event = await self.store.claim_one(self._worker_id, inbox_id, LEASE)
        if event is not None:
            await self.apply([event])
            return
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while await self.store.is_pending(inbox_id):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.02)

    # --- a claimed batch -----------------------------------------------------------------------

    async def apply(self, events: list[Event]) -> None:
        """Apply claimed events: purchases together, the rest one by one."""
        purchases: list[_Purchase] = []
        others: list[tuple[Event, Intent]] = []
        for event in events:
            try:
                intent = interpret(event, self.catalogue, stripe_livemode=self._stripe_livemode)
            except Exception as error:
                await self._count_failure(event, error)
                continue
            if isinstance(intent, Grant) and not _is_subscription_period(intent):
                purchases.append(_Purchase(event, intent))
            else:
                others.append((event, intent))
        # Two events of one payment in a batch are applied one after the other.
        keys = Counter((p.grant.provider, p.grant.payment_key) for p in purchases)
        together = [p for p in purchases if keys[(p.grant.provider, p.grant.payment_key)] == 1]
        alone = [p for p in purchases if keys[(p.grant.provider, p.grant.payment_key)] > 1]
        if together:
            await self._apply_purchases(together)
        for purchase in alone:
            await self._apply_one(purchase.event, purchase.grant)
        for event, intent in others:
            await self._apply_one(event, intent)

    async def _apply_purchases(self, purchases: list[_Purchase]) -> None:
        # The batch's calls carry its first event's request id (and how many more there are);
        # entitlements logs each grant under its own event's id.
        batch_id = request_id_of(purchases[0].event)
        token = request_id_var.set(
            batch_id if len(purchases) == 1 else f"{batch_id}+{len(purchases) - 1}"
        )
        try:
            await self._apply_purchases_as_one(purchases)
        finally:
            request_id_var.reset(token)

    async def _apply_purchases_as_one(self, purchases: list[_Purchase]) -> None:
        try:
            payers = await self.downstream.resolve_payers([p.grant.payer for p in purchases])
        except Exception as error:
            await self._batch_failed(purchases, error)
            return
        resolved: list[_Purchase] = []
        for purchase, payer in zip(purchases, payers, strict=True):
            if isinstance(payer, Exception):
                await self._count_failure(purchase.event, payer)
            else:
                purchase.user_id = payer
                resolved.append(purchase)
        if not resolved:
            return
        # The facts first (ledger rows), then the grants: a link or refund of one of these
        # payments handled meanwhile sees them. A one-off card payment already known to have
        # paid an invoice grants nothing: the invoice's grant stands for it.
        try:
            async with self.begin() as uow:
                by_provider: dict[str, list[str]] = {}
                for purchase in resolved:
                    by_provider.setdefault(purchase.grant.provider, []).append(
                        purchase.grant.payment_key
                    )
                paid_invoices: dict[str, str] = {}
                for provider, keys in sorted(by_provider.items()):
                    await uow.ledger.lock_payments(provider, keys)
                    if provider == stripe_events.PROVIDER:
                        paid_invoices = await uow.ledger.invoices_of_payments(provider, keys)
                to_grant = [
                    p
                    for p in resolved
                    if p.grant.invoice_id is not None
                    or p.grant.payment_key not in paid_invoices
                    or p.grant.provider != stripe_events.PROVIDER
                ]
                await uow.ledger.upsert_payments(
                    [_ledger_row(p.grant, p.user_id) for p in to_grant]
                )
                await uow.commit()
        except Exception as error:
            await self._batch_failed(resolved, error)
            return
        outcomes: list[Exception | None] = []
        if to_grant:
            try:
                outcomes = await self.downstream.grant_many(
                    [
                        grant_request(
                            user_id=p.user_id,
                            sku=p.grant.sku,
                            provider=p.grant.provider,
                            payment_key=p.grant.payment_key,
                            event_id=f"{p.event.provider}:{p.event.event_id}",
                            purchased_at=p.grant.purchased_at,
                            until=p.grant.until,
                        )
                        for p in to_grant
                    ]
                )
            except Exception as error:
                await self._batch_failed(to_grant, error)
        finished: list[tuple[Event, str, str, str | None]] = []
        receipts: list[messages.Message] = []
        for purchase, outcome in zip(to_grant, outcomes, strict=False):
            if outcome is not None:
                await self._count_failure(purchase.event, outcome)
            else:
                finished.append((purchase.event, "processed", "", purchase.grant.payment_key))
                receipts.append(_receipt(purchase.event, purchase.grant, purchase.user_id))
        granting = {id(p) for p in to_grant}
        for purchase in resolved:
            if id(purchase) not in granting:
                key = purchase.grant.payment_key
                note = f"payment of invoice {paid_invoices[key]}: the invoice grants"
                finished.append((purchase.event, "ignored", note, key))
        await self._finish(finished, receipts)

    async def _batch_failed(self, purchases: list[_Purchase], error: Exception) -> None:
        """A step failed for the whole batch. A downstream away is every purchase's problem:
        each is retried. Anything else may be one purchase's fault (a value the database
        refuses): each is then applied alone, so it cannot fail the others."""
        if isinstance(error, Retryable) or len(purchases) == 1:
            for purchase in purchases:
                await self._count_failure(purchase.event, error)
            return
        log.warning("a batch of %d failed (%r); applying each alone", len(purchases), error)
        for purchase in purchases:
            await self._apply_one(purchase.event, purchase.grant)

    async def _finish(
        self,
        finished: list[tuple[Event, str, str, str | None]],
        notices: list[messages.Message] | None = None,
    ) -> None:
        try:
            async with self.begin() as uow:
                await uow.ledger.finish_claimed(finished)
                # What users are told commits with the effect, or not at all.
                if notices:
                    await uow.outbox.write(notices)
                    await uow.outbox.remember_languages(_languages(notices))
                await uow.commit()
        except Exception as error:
            for event, *_ in finished:
                await self._count_failure(event, error)
            return
        if notices and self.on_notices is not None:
            self.on_notices()
        for event, outcome, note, key in finished:
            EVENTS_FINISHED.labels(event.provider, event.event_type, outcome).inc()
            with _serving(event):
                log.info("%s %s: %s", event.event_type, outcome, key or note or "-")

    # --- one event -----------------------------------------------------------------------------

    async def _apply_one(self, event: Event, intent: Intent) -> None:
        with _serving(event):
            try:
                done = await self._effect(event, intent)
            except Exception as error:
                await self._count_failure(event, error)
                return
        ignored = intent.reason if isinstance(intent, Ignore) else done.ignored
        outcome = "ignored" if ignored else "processed"
        await self._finish([(event, outcome, ignored, done.payment_key)], done.notices)

    async def _effect(self, event: Event, intent: Intent) -> _Done:
        event_ref = f"{event.provider}:{event.event_id}"
        if isinstance(intent, Grant):
            return await self._grant(intent, event_ref, event)
        if isinstance(intent, Revoke):
            return await self._revoke(intent, event_ref, event)
        if isinstance(intent, LinkInvoicePayment):
            return await self._link_invoice_payment(intent, event_ref)
        if isinstance(intent, Reinstate):
            return await self._reinstate(intent, event_ref)
        if isinstance(intent, PaymentNote):
            async with self.begin() as uow:
                await uow.ledger.upsert_payment(
                    provider=intent.provider,
                    payment_key=intent.payment_key,
                    status=intent.status,
                    amount=intent.amount,
                    currency=intent.currency,
                    amount_refunded=intent.amount_refunded,
                )
                await uow.commit()
            return _Done(intent.payment_key)
        if isinstance(intent, SubscriptionChange):
            async with self.begin() as uow:
                user_id = await subscription_effects.apply_change(
                    uow.ledger, self.downstream, intent, event_ref
                )
                await uow.commit()
            notices = []
            if intent.status == "past_due":
                notices.append(
                    messages.payment_failed(
                        _recipient(event, user_id),
                        event_ref=event_ref,
                        sku=intent.sku.name,
                        entitlement=intent.sku.grants,
                        provider=intent.provider,
                    )
                )
            return _Done(None, notices=notices)
        if isinstance(intent, ChannelUpdate):
            if self.channels is None or not self.channels.enabled:
                return _Done(None, "the catalogue lists no chats")
            return _Done(None, await self.channels.handle_update(intent.kind, intent.update))
        return _Done(None)

    async def _grant(self, intent: Grant, event_ref: str, event: Event) -> _Done:
        if _is_subscription_period(intent):
            # Noted on its subscription, and never granted past its end. The subscription's
            # lock is held across these calls: its events are rare, and must see each other.
            async with self.begin() as uow:
                intent = await subscription_effects.before_grant(
                    uow.ledger, self.downstream, intent, event_ref
                )
                await uow.commit()
        user_id = await self.downstream.resolve_payer(intent.payer)
        async with self.begin() as uow:
            await uow.ledger.lock_payment(intent.provider, intent.payment_key)
            if intent.invoice_id is None and intent.provider == stripe_events.PROVIDER:
                invoice_id = await uow.ledger.invoice_of_payment(
                    intent.provider, intent.payment_key
                )
                if invoice_id is not None:
                    await uow.commit()
                    return _Done(
                        intent.payment_key, f"payment of invoice {invoice_id}: the invoice grants"
                    )
            await uow.ledger.upsert_payments([_ledger_row(intent, user_id)])
            await uow.commit()
        await self.downstream.grant(
            user_id=user_id,
            sku=intent.sku,
            provider=intent.provider,
            payment_key=intent.payment_key,
            event_id=event_ref,
            purchased_at=intent.purchased_at,
            until=intent.until,
        )
        return _Done(intent.payment_key, notices=[_receipt(event, intent, user_id)])

    async def _revoke(self, intent: Revoke, event_ref: str, event: Event) -> _Done:
        """Revoke the payment's grant, the grant of the invoice it paid if any, and the time a
        won dispute gave back. A revoke before its payment leaves a tombstone: the later grant
        stays revoked."""
        async with self.begin() as uow:
            await uow.ledger.lock_payment(intent.provider, intent.payment_key)
            invoice_id = await uow.ledger.invoice_of_payment(intent.provider, intent.payment_key)
            keys = [key for key in (intent.payment_key, invoice_id) if key is not None]
            given_back = []
            notices = []
            for key in keys:
                payment = await uow.ledger.payment_row(intent.provider, key)
                if (
                    payment is not None
                    and payment["user_id"]
                    and payment["sku"] in self.catalogue.skus
                ):
                    notices.append(
                        messages.revoked(
                            _recipient(event, payment["user_id"]),
                            provider=intent.provider,
                            payment_key=key,
                            sku=payment["sku"],
                            entitlement=self.catalogue.skus[payment["sku"]].grants,
                        )
                    )
                if payment is not None and payment["status"] == "dispute_won":
                    given_back.append(reinstated_key(key))
                await uow.ledger.upsert_payment(
                    provider=intent.provider,
                    payment_key=key,
                    status=intent.status,
                    amount_refunded=intent.amount_refunded,
                )
            await uow.commit()
        for key in keys + given_back:
            await self.downstream.revoke(
                provider=intent.provider, payment_key=key, event_id=event_ref, reason=intent.status
            )
        return _Done(intent.payment_key, notices=notices[:1])

    async def _link_invoice_payment(self, intent: LinkInvoicePayment, event_ref: str) -> _Done:
        """Remember which payment paid the invoice, then catch up with what came before: a
        refund or dispute of the payment revokes the invoice's grant too, and a grant the
        payment's own charge made is undone (the invoice's grant stands for the purchase)."""
        revoke: tuple[str, str] | None = None
        async with self.begin() as uow:
            await uow.ledger.lock_payment(intent.provider, intent.payment_key)
            await uow.ledger.link_invoice_payment(
                intent.provider, intent.payment_key, intent.invoice_id
            )
            payment = await uow.ledger.payment_row(intent.provider, intent.payment_key)
            if payment is not None and payment["status"] in _MONEY_BACK:
                revoke = (intent.invoice_id, payment["status"])
                await uow.ledger.upsert_payment(
                    provider=intent.provider,
                    payment_key=intent.invoice_id,
                    status=payment["status"],
                    amount_refunded=payment["amount_refunded"],
                )
            elif payment is not None and payment["sku"] and payment["invoice_id"] is None:
                revoke = (intent.payment_key, f"superseded by invoice {intent.invoice_id}")
                await uow.ledger.upsert_payment(
                    provider=intent.provider,
                    payment_key=intent.payment_key,
                    status="superseded",
                    invoice_id=intent.invoice_id,
                )
            await uow.commit()
        if revoke is not None:
            await self.downstream.revoke(
                provider=intent.provider,
                payment_key=revoke[0],
                event_id=event_ref,
                reason=revoke[1],
            )
        return _Done(intent.payment_key)

    async def _reinstate(self, intent: Reinstate, event_ref: str) -> _Done:
        """A won dispute gives back the time its revoke took, as a grant of its own placed
        where the disputed one stood."""
        async with self.begin() as uow:
            await uow.ledger.lock_payment(intent.provider, intent.payment_key)
            disputed = await uow.ledger.payment_row(intent.provider, intent.payment_key)
            # A payment that paid an invoice: the invoice's grant is the one that stands for it.
            key = (
                await uow.ledger.invoice_of_payment(intent.provider, intent.payment_key)
                or intent.payment_key
            )
            granted = await uow.ledger.payment_row(intent.provider, key)
            await uow.commit()
        if disputed is not None and disputed["status"] == "dispute_won":
            return _Done(intent.payment_key)
        if disputed is not None and disputed["status"] == "refunded":
            # The money went back by a refund as well: there is no time to give back.
            return _Done(intent.payment_key, "dispute won on a refunded payment")
        if granted is None or not granted["user_id"]:
            raise Retryable("the disputed payment has not been granted yet")
        await self.downstream.reinstate(
            user_id=granted["user_id"],
            provider=intent.provider,
            payment_key=key,
            event_id=event_ref,
        )
        async with self.begin() as uow:
            for settled in {key, intent.payment_key}:
                await uow.ledger.upsert_payment(
                    provider=intent.provider, payment_key=settled, status="dispute_won"
                )
            await uow.commit()
        return _Done(intent.payment_key)

    # --- failures ------------------------------------------------------------------------------

    async def _count_failure(self, event: Event, error: BaseException) -> None:
        """Count a failed attempt in its own transaction: reschedule with backoff, or keep the
        event as failed when it can never succeed or has been tried MAX_ATTEMPTS times."""
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
        with _serving(event):
            try:
                counted = await self.store.count_failed_attempt(
                    event, reason, delay, give_up=give_up
                )
            except Exception as store_error:
                # The database is away: the lease runs out and the event is claimed again.
                log.warning("attempt of %s not counted: %r", event.event_id, store_error)
                return
            if not counted:
                return
            if give_up:
                EVENTS_FINISHED.labels(event.provider, event.event_type, "failed").inc()
                EVENTS_FAILED.labels(event.provider, code).inc()
                unexpected = not isinstance(error, (Unprocessable, Retryable)) and (
                    code != "database_refused"
                )
                log.error(
                    "event %s kept as failed after %d attempt(s): %s",
                    event.event_id,
                    attempt,
                    reason,
                    exc_info=error if unexpected else None,
                )
                return
            if isinstance(error, Retryable):
                EVENT_RETRIES.labels(event.provider).inc()
            log.warning(
                "event %s attempt %d failed, next in %.1f s: %s",
                event.event_id,
                attempt,
                delay.total_seconds(),
                reason,
            )


def _recipient(event: Event, user_id: str) -> messages.Recipient:
    """Whom to tell: a Telegram update names the chat and the user's language."""
    if event.provider != telegram_updates.PROVIDER:
        return messages.Recipient(user_id)
    try:
        telegram_user_id, language = messages.telegram_sender(json.loads(event.payload))
    except (ValueError, RecursionError, AttributeError):
        return messages.Recipient(user_id)
    return messages.Recipient(user_id, telegram_user_id, language)


def _receipt(event: Event, grant: Grant, user_id: str) -> messages.Message:
    message = messages.receipt(
        _recipient(event, user_id),
        provider=grant.provider,
        payment_key=grant.payment_key,
        sku=grant.sku.name,
        entitlement=grant.sku.grants,
        lifetime=grant.sku.lifetime,
    )
    if grant.subscription_id is not None:
        message.params["subscription"] = grant.subscription_id
    return message


def _languages(notices: list[messages.Message]) -> dict[int, str]:
    return {n.telegram_user_id: n.language for n in notices if n.telegram_user_id and n.language}


def _is_subscription_period(grant: Grant) -> bool:
    """A paid period of a subscription: applied on its own, through its subscription."""
    return grant.subscription_id is not None and grant.until is not None


def _ledger_row(grant: Grant, user_id: str) -> dict[str, Any]:
    """The ledger row of a purchase about to be granted (every column, for one upsert)."""
    return {
        "provider": grant.provider,
        "payment_key": grant.payment_key,
        "status": "succeeded",
        "user_id": user_id,
        "sku": grant.sku.name,
        "amount": grant.amount,
        "currency": grant.currency,
        "amount_refunded": 0,
        "subscription_id": grant.subscription_id,
        "purchased_at": grant.purchased_at,
        "invoice_id": grant.invoice_id,
    }
