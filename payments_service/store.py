"""SQL of the payments schema: the inbox and the payments ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Interval, bindparam, case, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payments_service.rules import STATUS_RANK, UNKNOWN_RANK
from payments_service.tables import inbox, invoice_payments, payments, subscriptions


@dataclass(frozen=True)
class Event:
    id: int
    provider: str
    event_id: str
    event_type: str
    payload: bytes  # the raw JSON body
    status: str
    error: str
    attempts: int
    payment_key: str | None
    received_at: datetime
    next_attempt_at: datetime
    processed_at: datetime | None
    claimed_until: datetime | None = None
    claimed_by: str | None = None
    replayed_by: str | None = None


def _event(row: Any) -> Event:
    return Event(**dict(row._mapping))


# Built once: SQLAlchemy then reuses their compiled form and cache key on every call, which
# profiles showed costing more than the round trips themselves when rebuilt per event.
_RECORD = (
    insert(inbox)
    .values(
        provider=bindparam("provider"),
        event_id=bindparam("event_id"),
        event_type=bindparam("event_type"),
        payload=bindparam("payload", type_=inbox.c.payload.type),
        status=bindparam("status"),
        processed_at=bindparam("processed_at", type_=inbox.c.processed_at.type),
    )
    .on_conflict_do_nothing(constraint="inbox_provider_event_id_key")
    .returning(*inbox.c)
)
_EXISTING = select(inbox).where(
    inbox.c.provider == bindparam("provider"), inbox.c.event_id == bindparam("event_id")
)
# The next due events no other worker holds, claimed for a lease in one short statement.
# SKIP LOCKED keeps two workers' claims apart; the lease keeps the claim after it commits.
_DUE = (
    select(inbox.c.id)
    .where(
        inbox.c.status == "pending",
        inbox.c.next_attempt_at <= func.now(),
        or_(inbox.c.claimed_until.is_(None), inbox.c.claimed_until < func.now()),
    )
    .order_by(inbox.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM_BATCH = (
    update(inbox)
    .where(inbox.c.id.in_(_DUE))
    .values(
        claimed_until=func.now() + bindparam("lease", type_=Interval()),
        claimed_by=bindparam("worker"),
    )
    .returning(*inbox.c)
)
_CLAIM_ONE_LEASED = (
    update(inbox)
    .where(
        inbox.c.id == bindparam("inbox_id"),
        inbox.c.status == "pending",
        or_(inbox.c.claimed_until.is_(None), inbox.c.claimed_until < func.now()),
    )
    .values(
        claimed_until=func.now() + bindparam("lease", type_=Interval()),
        claimed_by=bindparam("worker"),
    )
    .returning(*inbox.c)
)
_RELEASE = (
    update(inbox)
    .where(inbox.c.claimed_by == bindparam("worker"), inbox.c.status == "pending")
    .values(claimed_until=None, claimed_by=None)
)
# Finishing a claimed event: only while it is still pending (a worker whose lease ran out
# may finish an event another worker finished already; the effects were the same).
_FINISH_CLAIMED = (
    update(inbox)
    .where(inbox.c.id == bindparam("inbox_id"), inbox.c.status == "pending")
    .values(
        status=bindparam("status"),
        error=bindparam("error"),
        attempts=inbox.c.attempts + 1,
        payment_key=bindparam("payment_key"),
        processed_at=func.now(),
        claimed_until=None,
    )
)
# Serialise the events of these payments until the transaction ends, locks taken in one
# order so that two batches never wait on each other.
_LOCK_PAYMENTS = text(
    "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h"
    " FROM unnest(CAST(:keys AS text[])) AS k) AS locks ORDER BY h"
)
_COUNT_FAILED_ATTEMPT = (
    update(inbox)
    .where(
        inbox.c.id == bindparam("inbox_id"),
        inbox.c.status == "pending",
        inbox.c.attempts == bindparam("attempts_seen"),
    )
    .values(
        status=bindparam("status"),
        error=bindparam("error"),
        attempts=inbox.c.attempts + 1,
        next_attempt_at=func.now() + bindparam("delay", type_=Interval()),
        processed_at=bindparam("processed_at", type_=inbox.c.processed_at.type),
        claimed_until=None,
    )
)


def _upsert_payment_statement() -> Any:
    names = (
        "provider",
        "payment_key",
        "status",
        "user_id",
        "sku",
        "amount",
        "currency",
        "amount_refunded",
        "subscription_id",
        "purchased_at",
        "invoice_id",
    )
    statement = insert(payments).values(
        {name: bindparam(name, type_=payments.c[name].type) for name in names}
    )
    incoming, stored = statement.excluded, payments.c
    # rules.status_after, in SQL: generated from the same ranks.
    rank_of = {status_name: literal(rank) for status_name, rank in STATUS_RANK.items()}
    unknown = literal(UNKNOWN_RANK)
    return statement.on_conflict_do_update(
        constraint="payments_pkey",
        set_={
            "status": case(
                (
                    case(rank_of, value=incoming.status, else_=unknown)
                    >= case(rank_of, value=stored.status, else_=unknown),
                    incoming.status,
                ),
                else_=stored.status,
            ),
            "user_id": func.coalesce(stored.user_id, incoming.user_id),
            "sku": func.coalesce(stored.sku, incoming.sku),
            "amount": func.greatest(stored.amount, incoming.amount),
            "currency": func.coalesce(func.nullif(stored.currency, ""), incoming.currency),
            "amount_refunded": func.greatest(stored.amount_refunded, incoming.amount_refunded),
            "subscription_id": func.coalesce(stored.subscription_id, incoming.subscription_id),
            "purchased_at": func.coalesce(stored.purchased_at, incoming.purchased_at),
            "invoice_id": func.coalesce(stored.invoice_id, incoming.invoice_id),
            "updated_at": func.now(),
        },
    )


_UPSERT_PAYMENT = _upsert_payment_statement()


class Ledger:
    """The SQL a payment's effect runs in one transaction, on the connection of the unit of
    work that made it (payments_service.unit_of_work): payment locks, ledger rows, invoice
    links, subscriptions, and the end of the inbox events applied."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def lock_payments(self, provider: str, keys: list[str]) -> None:
        if keys:
            await self._connection.execute(
                _LOCK_PAYMENTS, {"keys": [f"{provider}:{key}" for key in keys]}
            )

    async def finish_claimed(self, finished: list[tuple[Event, str, str, str | None]]) -> None:
        """Mark claimed events done: (event, status, error, payment key) each."""
        if finished:
            await self._connection.execute(
                _FINISH_CLAIMED,
                [
                    {"inbox_id": e.id, "status": status, "error": error, "payment_key": key}
                    for e, status, error, key in finished
                ],
            )

    async def invoices_of_payments(self, provider: str, keys: list[str]) -> dict[str, str]:
        rows = await self._connection.execute(
            select(invoice_payments.c.payment_key, invoice_payments.c.invoice_id).where(
                invoice_payments.c.provider == provider,
                invoice_payments.c.payment_key.in_(keys),
            )
        )
        return {row.payment_key: row.invoice_id for row in rows}

    async def upsert_payments(self, rows: list[dict[str, Any]]) -> None:
        """`upsert_payment` for many rows in one round trip (each row with every column)."""
        if rows:
            await self._connection.execute(_UPSERT_PAYMENT, rows)

    async def lock_payment(self, provider: str, payment_key: str) -> None:
        """Serialise every event of one payment until the transaction ends.

        A refund and the link of its payment to an invoice, handled at once by two workers,
        would otherwise each miss what the other is writing.
        """
        await self._connection.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("key"), 0))),
            {"key": f"{provider}:{payment_key}"},
        )

    async def invoice_of_payment(self, provider: str, payment_key: str) -> str | None:
        found = await self._connection.scalar(
            select(invoice_payments.c.invoice_id).where(
                invoice_payments.c.provider == provider,
                invoice_payments.c.payment_key == payment_key,
            )
        )
        return str(found) if found is not None else None

    async def link_invoice_payment(self, provider: str, payment_key: str, invoice_id: str) -> None:
        await self._connection.execute(
            insert(invoice_payments)
            .values(provider=provider, payment_key=payment_key, invoice_id=invoice_id)
            .on_conflict_do_nothing(constraint="invoice_payments_pkey")
        )

    async def payment_row(self, provider: str, payment_key: str) -> dict[str, Any] | None:
        row = (
            await self._connection.execute(
                select(payments).where(
                    payments.c.provider == provider, payments.c.payment_key == payment_key
                )
            )
        ).first()
        return dict(row._mapping) if row is not None else None

    async def upsert_payment(
        self,
        *,
        provider: str,
        payment_key: str,
        status: str,
        user_id: str | None = None,
        sku: str | None = None,
        amount: int = 0,
        currency: str = "",
        amount_refunded: int = 0,
        subscription_id: str | None = None,
        purchased_at: datetime | None = None,
        invoice_id: str | None = None,
    ) -> None:
        await self._connection.execute(
            _UPSERT_PAYMENT,
            {
                "provider": provider,
                "payment_key": payment_key,
                "status": status,
                "user_id": user_id,
                "sku": sku,
                "amount": amount,
                "currency": currency,
                "amount_refunded": amount_refunded,
                "subscription_id": subscription_id,
                "purchased_at": purchased_at,
                "invoice_id": invoice_id,
            },
        )

    async def set_subscription_state(self, provider: str, subscription_id: str, state: str) -> int:
        result = await self._connection.execute(
            update(payments)
            .where(payments.c.provider == provider, payments.c.subscription_id == subscription_id)
            .values(subscription_state=state, updated_at=func.now())
        )
        return int(result.rowcount or 0)

    async def subscription_row(self, provider: str, subscription_id: str) -> dict[str, Any] | None:
        row = (
            await self._connection.execute(
                select(subscriptions).where(
                    subscriptions.c.provider == provider,
                    subscriptions.c.subscription_id == subscription_id,
                )
            )
        ).first()
        return dict(row._mapping) if row is not None else None

    async def save_subscription(
        self,
        provider: str,
        subscription_id: str,
        values: dict[str, Any],
    ) -> None:
        """Write the merged state (the caller holds the subscription's lock)."""
        statement = insert(subscriptions).values(
            provider=provider, subscription_id=subscription_id, **values
        )
        await self._connection.execute(
            statement.on_conflict_do_update(
                constraint="subscriptions_pkey",
                set_={
                    **{name: statement.excluded[name] for name in values if name != "user_id"},
                    "user_id": func.coalesce(subscriptions.c.user_id, statement.excluded.user_id),
                    "updated_at": func.now(),
                },
            )
        )

    async def subscription_payment_keys(self, provider: str, subscription_id: str) -> list[str]:
        """The purchases that paid this subscription's periods (their grants' sources)."""
        return list(
            await self._connection.scalars(
                select(payments.c.payment_key).where(
                    payments.c.provider == provider,
                    payments.c.subscription_id == subscription_id,
                )
            )
        )


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements need no BEGIN/COMMIT round trips: each is atomic on its own.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def record(
        self,
        provider: str,
        event_id: str,
        event_type: str,
        payload: bytes,
        status: str = "pending",
    ) -> tuple[Event, bool]:
        """Commit the event once; a second delivery returns the first, marked duplicate."""
        key = {"provider": provider, "event_id": event_id}
        async with self._single.connect() as connection:
            inserted = (
                await connection.execute(
                    _RECORD,
                    {
                        **key,
                        "event_type": event_type,
                        "payload": payload,
                        "status": status,
                        "processed_at": None if status == "pending" else datetime.now(UTC),
                    },
                )
            ).first()
            if inserted is not None:
                return _event(inserted), False
            return _event((await connection.execute(_EXISTING, key)).one()), True

    async def claim_batch(self, worker: str, limit: int, lease: timedelta) -> list[Event]:
        """Claim up to `limit` due events for `lease`; committed at once, so no lock is held
        while they are applied."""
        async with self._single.connect() as connection:
            rows = await connection.execute(
                _CLAIM_BATCH, {"limit": limit, "lease": lease, "worker": worker}
            )
            return sorted((_event(row) for row in rows), key=lambda e: e.id)

    async def claim_one(self, worker: str, inbox_id: int, lease: timedelta) -> Event | None:
        """Claim this event, if it is pending and nobody holds it."""
        async with self._single.connect() as connection:
            row = (
                await connection.execute(
                    _CLAIM_ONE_LEASED, {"inbox_id": inbox_id, "lease": lease, "worker": worker}
                )
            ).first()
            return _event(row) if row is not None else None

    async def is_pending(self, inbox_id: int) -> bool:
        async with self._single.connect() as connection:
            status = await connection.scalar(select(inbox.c.status).where(inbox.c.id == inbox_id))
            return bool(status == "pending")

    async def release(self, worker: str) -> None:
        """Give back this worker's unfinished claims (on shutdown): no lease to wait out."""
        async with self._single.connect() as connection:
            await connection.execute(_RELEASE, {"worker": worker})

    async def count_failed_attempt(
        self, event: Event, error: str, delay: timedelta, *, give_up: bool
    ) -> bool:
        """After a rolled-back attempt: count it, and reschedule the event or fail it for good.

        False when the row had moved on meanwhile (another worker counted or finished it).
        """
        async with self._single.connect() as connection:
            result = await connection.execute(
                _COUNT_FAILED_ATTEMPT,
                {
                    "inbox_id": event.id,
                    "attempts_seen": event.attempts,
                    "status": "failed" if give_up else "pending",
                    "error": error,
                    "delay": timedelta(0) if give_up else delay,
                    "processed_at": datetime.now(UTC) if give_up else None,
                },
            )
            return bool(result.rowcount)

    async def list_events(
        self,
        *,
        status: str,
        event_type: str,
        provider: str,
        limit: int,
        before_id: int | None,
        received_since: datetime | None = None,
        received_before: datetime | None = None,
    ) -> list[Event]:
        query = select(inbox).order_by(inbox.c.id.desc()).limit(limit)
        if received_since is not None:
            query = query.where(inbox.c.received_at >= received_since)
        if received_before is not None:
            query = query.where(inbox.c.received_at < received_before)
        if status:
            query = query.where(inbox.c.status == status)
        if event_type:
            query = query.where(inbox.c.event_type == event_type)
        if provider:
            query = query.where(inbox.c.provider == provider)
        if before_id is not None:
            query = query.where(inbox.c.id < before_id)
        async with self._single.connect() as connection:
            return [_event(row) for row in await connection.execute(query)]

    async def replay(self, provider: str, event_id: str, replayed_by: str = "") -> Event | None:
        """Put a failed or ignored event back in the queue, due now, with a fresh count."""
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    update(inbox)
                    .where(
                        inbox.c.provider == provider,
                        inbox.c.event_id == event_id,
                        inbox.c.status.in_(("failed", "ignored")),
                    )
                    .values(
                        status="pending",
                        error="",
                        attempts=0,
                        next_attempt_at=func.now(),
                        processed_at=None,
                        claimed_until=None,
                        replayed_by=replayed_by or None,
                    )
                    .returning(*inbox.c)
                )
            ).first()
            return _event(row) if row is not None else None

    async def get_event(self, provider: str, event_id: str) -> Event | None:
        async with self._single.connect() as connection:
            row = (
                await connection.execute(
                    select(inbox).where(inbox.c.provider == provider, inbox.c.event_id == event_id)
                )
            ).first()
            return _event(row) if row is not None else None

    async def list_payments(
        self,
        *,
        user_id: str,
        provider: str,
        limit: int,
        before_seq: int | None,
        payment_key: str = "",
    ) -> list[dict[str, Any]]:
        """Newest first; keyset paging (`before_seq`), so page 1,000 costs what page 1 does."""
        query = select(payments).order_by(payments.c.seq.desc()).limit(limit)
        if payment_key:
            query = query.where(payments.c.payment_key == payment_key)
        if before_seq is not None:
            query = query.where(payments.c.seq < before_seq)
        if user_id:
            query = query.where(payments.c.user_id == user_id)
        if provider:
            query = query.where(payments.c.provider == provider)
        async with self._single.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def get_payment(self, provider: str, payment_key: str) -> dict[str, Any] | None:
        async with self._single.connect() as connection:
            row = (
                await connection.execute(
                    select(payments).where(
                        payments.c.provider == provider, payments.c.payment_key == payment_key
                    )
                )
            ).first()
            return dict(row._mapping) if row is not None else None

    async def forget_done_events(self, older_than: timedelta, batch: int = 1000) -> int:
        """Delete processed and ignored events older than `older_than`, a batch at a time so
        no statement holds many locks; failed and pending ones stay. The ledger keeps what a
        refund or an audit needs. Returns how many went."""
        forgotten = 0
        old = (
            select(inbox.c.id)
            .where(
                inbox.c.status.in_(("processed", "ignored")),
                inbox.c.processed_at < func.now() - bindparam("age", type_=Interval()),
            )
            .limit(batch)
            .scalar_subquery()
        )
        statement = inbox.delete().where(inbox.c.id.in_(old))
        while True:
            async with self._single.connect() as connection:
                deleted = (await connection.execute(statement, {"age": older_than})).rowcount
            forgotten += deleted or 0
            if not deleted or deleted < batch:
                return forgotten

    async def inbox_depth(self) -> tuple[int, datetime | None, int]:
        """Pending events, when the oldest of them came, and failed events."""
        async with self._single.connect() as connection:
            row = (
                await connection.execute(
                    select(func.count(), func.min(inbox.c.received_at)).where(
                        inbox.c.status == "pending"
                    )
                )
            ).one()
            failed = await connection.scalar(
                select(func.count()).select_from(inbox).where(inbox.c.status == "failed")
            )
            return int(row[0]), row[1], int(failed or 0)

    async def successful_payment_update(self, charge_id: str) -> bytes | None:
        """The stored successful_payment update that brought this Telegram charge, as received
        (telegram_updates.stars_purchase reads it)."""
        async with self._single.connect() as connection:
            payload = await connection.scalar(
                select(inbox.c.payload)
                .where(
                    inbox.c.provider == "telegram",
                    inbox.c.event_type == "successful_payment",
                    inbox.c.payment_key == charge_id,
                )
                .limit(1)
            )
        return None if payload is None else bytes(payload)

    async def has_payment(self, provider: str, payment_key: str) -> bool:
        async with self._single.connect() as connection:
            found = await connection.scalar(
                select(literal(1)).where(
                    payments.c.provider == provider, payments.c.payment_key == payment_key
                )
            )
            return found is not None

    # --- subscriptions (payments_service/subscriptions.py holds their rules) ----------------

    async def get_subscription(self, provider: str, subscription_id: str) -> dict[str, Any] | None:
        async with self._single.connect() as connection:
            return await Ledger(connection).subscription_row(provider, subscription_id)

    async def list_subscriptions(
        self, *, user_id: str, provider: str, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        query = (
            select(subscriptions)
            .order_by(subscriptions.c.created_at.desc(), subscriptions.c.subscription_id)
            .limit(limit)
            .offset(offset)
        )
        if user_id:
            query = query.where(subscriptions.c.user_id == user_id)
        if provider:
            query = query.where(subscriptions.c.provider == provider)
        async with self._single.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def latest_subscription_charge(self, provider: str, subscription_id: str) -> str | None:
        """The newest payment of a subscription (a Stars subscription is edited by it)."""
        async with self._single.connect() as connection:
            found = await connection.scalar(
                select(payments.c.payment_key)
                .where(
                    payments.c.provider == provider,
                    payments.c.subscription_id == subscription_id,
                )
                .order_by(payments.c.purchased_at.desc().nulls_last(), payments.c.created_at.desc())
                .limit(1)
            )
            return str(found) if found is not None else None

    async def replay_many(
        self,
        *,
        status: str,
        event_type: str,
        provider: str,
        since: datetime | None,
        replayed_by: str = "",
    ) -> list[int]:
        """Put every matching failed (or ignored) event back in the queue, due now."""
        query = (
            update(inbox)
            .where(inbox.c.status == status)
            .values(
                status="pending",
                error="",
                attempts=0,
                next_attempt_at=func.now(),
                processed_at=None,
                claimed_until=None,
                replayed_by=replayed_by or None,
            )
            .returning(inbox.c.id)
        )
        if event_type:
            query = query.where(inbox.c.event_type == event_type)
        if provider:
            query = query.where(inbox.c.provider == provider)
        if since is not None:
            query = query.where(inbox.c.received_at >= since)
        async with self.engine.begin() as connection:
            return list(await connection.scalars(query))

    async def payment_of_invoice(self, provider: str, invoice_id: str) -> str | None:
        """The payment (intent or charge) that paid this invoice, once Stripe has said so."""
        async with self._single.connect() as connection:
            found = await connection.scalar(
                select(invoice_payments.c.payment_key)
                .where(
                    invoice_payments.c.provider == provider,
                    invoice_payments.c.invoice_id == invoice_id,
                )
                .limit(1)
            )
            return str(found) if found is not None else None
