"""The outbox of messages to users: written with the effects they tell of, sent by a loop.

Exactly once in effect, and a crash never sends twice:
- A row is written in the transaction that marks its effect done, under a unique key (one
  receipt per payment, one notice per refund), so a replayed or redelivered event adds none.
- A sender claims due rows (`pending` → `sending`, with a lease, SKIP LOCKED so replicas take
  different rows), calls `sendMessage`, then marks the row `sent`.
- A row still `sending` when its lease has run out belongs to a sender that died mid-call: it
  may have gone out, so it becomes `unknown` and is not sent again. `paylayer messages retry`
  sends it again once an operator has decided to.
- Telegram's answers: 429 puts the row back due after `retry_after` (and pauses this sender);
  403 (the user blocked the bot) marks the user unreachable and drops their pending messages;
  400 keeps the row `failed` with Telegram's description; 5xx or no answer is retried with
  backoff, at most MAX_ATTEMPTS times.
- Reminders are rows due at their time. Before one is sent, the end it announces is checked
  again: an end that moved makes it `superseded` (the move wrote reminders of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Interval, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.errors import DomainError, Unavailable
from payments_service import messages as rules
from payments_service.bot_api import BotApi, BotApiError
from payments_service.bot_limits import RateLimiter
from payments_service.downstream import Downstream
from payments_service.metrics import MESSAGES_FAILED, MESSAGES_SENT, MESSAGES_UNREACHABLE
from payments_service.tables import messages, payments, telegram_users
from protos.entitlements.v1 import entitlements_pb2

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)  # longer than a send's calls (10 s each at most)
MAX_ATTEMPTS = 10
# Sends in flight at once per sender: each holds a database connection at times, and the pool
# is shared with the inbox workers (past its size, each checkout would open a connection).
CONCURRENT_SENDS = 5
# Claimed no more than can be sent at once: a claimed row's lease never runs out while it
# waits for a free slot.
BATCH_SIZE = CONCURRENT_SENDS
# Kinds that announce an end of access.
REMINDER_KINDS = frozenset(rules.REMINDER_KINDS)


# --- writing, inside the transaction of an effect ----------------------------------------------


class Outbox:
    """Messages written inside the transaction of the effect they tell of, on its connection:
    they commit with it, or not at all."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def write(self, rows: Sequence[rules.Message]) -> None:
        """Add these messages once each; a reminder of a later end supersedes pending reminders
        of an earlier one (stacked grants remind only before the last one ends)."""
        if not rows:
            return
        values = [{**row.row(), "due_at": row.due_at or datetime.now(UTC)} for row in rows]
        once = [v for v, row in zip(values, rows, strict=True) if row.kind not in REMINDER_KINDS]
        reminders = [v for v, row in zip(values, rows, strict=True) if row.kind in REMINDER_KINDS]
        if once:
            await self._connection.execute(
                insert(messages).on_conflict_do_nothing(constraint="messages_dedupe_key_key"), once
            )
        if reminders:
            # An end can come back (a refund of the grant stacked on top of it): its reminders,
            # superseded meanwhile, are due again. One already sent stays sent.
            statement = insert(messages)
            await self._connection.execute(
                statement.on_conflict_do_update(
                    constraint="messages_dedupe_key_key",
                    set_={"status": "pending", "error": "", "due_at": statement.excluded.due_at},
                    where=messages.c.status == "superseded",
                ),
                reminders,
            )
        for row in rows:
            if row.kind == "revoked" and row.params.get("tier"):
                # Access was taken back: when it now ends is read again as the notice is sent.
                await self.drop_reminders(row.user_id, row.params["tier"])
            if row.kind in REMINDER_KINDS and row.ends_at is not None:
                await self._connection.execute(
                    update(messages)
                    .where(
                        messages.c.user_id == row.user_id,
                        messages.c.entitlement == row.entitlement,
                        messages.c.status == "pending",
                        messages.c.ends_at < row.ends_at,
                    )
                    .values(status="superseded", error="access now ends later")
                )

    async def remember_languages(self, languages: dict[int, str]) -> None:
        """The language_code each Telegram user last showed (an empty one changes nothing)."""
        rows = [{"telegram_user_id": k, "language_code": v} for k, v in languages.items() if v]
        if not rows:
            return
        statement = insert(telegram_users)
        await self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=[telegram_users.c.telegram_user_id],
                set_={"language_code": statement.excluded.language_code, "updated_at": func.now()},
            ),
            rows,
        )

    async def drop_reminders(self, user_id: str, entitlement: str) -> None:
        """Access was taken back: its pending reminders no longer hold."""
        await self._connection.execute(
            update(messages)
            .where(
                messages.c.user_id == user_id,
                messages.c.entitlement == entitlement,
                messages.c.status == "pending",
            )
            .values(status="superseded", error="access was revoked")
        )


# --- the outbox's own statements ---------------------------------------------------------------

_DUE = (
    select(messages.c.id)
    .where(messages.c.status == "pending", messages.c.due_at <= func.now())
    .order_by(messages.c.due_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM = (
    update(messages)
    .where(messages.c.id.in_(_DUE))
    .values(
        status="sending",
        attempts=messages.c.attempts + 1,
        claimed_until=func.now() + bindparam("lease", type_=Interval()),
        claimed_by=bindparam("worker"),
    )
    .returning(*messages.c)
)
# A sender that died between claiming and marking: the send's outcome is not known.
_ORPHANED = (
    update(messages)
    .where(messages.c.status == "sending", messages.c.claimed_until < func.now())
    .values(
        status="unknown",
        error="the sender stopped during the call; it may have been sent, so it is not resent",
        claimed_until=None,
    )
    .returning(messages.c.id, messages.c.kind)
)


def _mine(message_id: int, worker: str) -> Any:
    return and_(
        messages.c.id == message_id,
        messages.c.status == "sending",
        messages.c.claimed_by == worker,
    )


@dataclass(frozen=True)
class ReceiptContext:
    """What a receipt's extra lines may depend on (e.g. invite links to the tier's chats)."""

    user_id: str
    telegram_user_id: int
    entitlement: str
    sku: str
    language: str


# A hook adding lines to a receipt; called at send time, so it may call Telegram itself.
ReceiptExtra = Callable[[ReceiptContext], Awaitable[list[str]]]


class Sender:
    """Sends due outbox rows, a batch at a time, each row claimed before its call."""

    def __init__(
        self,
        engine: AsyncEngine,
        bot: BotApi,
        downstream: Downstream,
        catalogue: Catalogue,
        texts: rules.Texts,
        *,
        checkout_link: Callable[[str, str, int], Awaitable[str]] | None = None,
        receipt_extras: Sequence[ReceiptExtra] = (),
        limiter: RateLimiter | None = None,
        poll_seconds: float = 0.5,
        batch_size: int = BATCH_SIZE,
        lease_seconds: float = LEASE.total_seconds(),
    ) -> None:
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._engine = engine
        self.bot = bot
        self.downstream = downstream
        self.catalogue = catalogue
        self.texts = texts
        self._checkout_link = checkout_link
        self.receipt_extras = list(receipt_extras)
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_seconds)
        self._worker = f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"
        # Telegram takes about 30 messages a second from a bot: a burst of receipts is paced
        # to that, not sent as fast as the cores allow and then refused with 429s.
        self._limiter = limiter or RateLimiter()
        self._wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(CONCURRENT_SENDS)

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Background job: mark orphaned sends, claim what is due, send it; then wait."""
        while True:
            self._wake.clear()
            claimed: list[Any] = []
            try:
                await self._mark_orphans()
                claimed = await self._claim()
            except Exception as error:  # the database may be restarting
                log.warning("cannot claim outbox messages: %r", error)
            if claimed:
                await asyncio.gather(*(self._send_bounded(row) for row in claimed))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)

    async def _mark_orphans(self) -> None:
        async with self._single.connect() as connection:
            orphaned = list(await connection.execute(_ORPHANED))
        for message_id, kind in orphaned:
            MESSAGES_FAILED.labels(kind).inc()
            log.error("message %d: its sender died mid-send; kept as unknown", message_id)

    async def _claim(self) -> list[Any]:
        pause = self._limiter.paused_for()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._single.connect() as connection:
            rows = await connection.execute(
                _CLAIM, {"limit": self._batch_size, "lease": self._lease, "worker": self._worker}
            )
            return sorted(rows, key=lambda row: row.id)

    async def _settle(self, message_id: int, **values: Any) -> None:
        async with self._single.connect() as connection:
            await connection.execute(
                update(messages)
                .where(_mine(message_id, self._worker))
                .values(claimed_until=None, **values)
            )

    async def _renew(self, message_id: int) -> bool:
        """A fresh lease for the send itself; False when the row is no longer this sender's."""
        async with self._single.connect() as connection:
            renewed = await connection.execute(
                update(messages)
                .where(_mine(message_id, self._worker))
                .values(claimed_until=func.now() + self._lease)
                .returning(messages.c.id)
            )
            return renewed.first() is not None

    async def _send_bounded(self, row: Any) -> None:
        async with self._in_flight:
            pause = self._limiter.paused_for()
            if pause > 0:
                # Telegram asked us to wait (a 429 to another send of this batch): back in the
                # queue for then, rather than a send certain to be refused.
                await self._retry_later(
                    row, "waiting out Telegram's flood control", timedelta(seconds=pause)
                )
                return
            await self._send(row)

    async def _send(self, row: Any) -> None:
        try:
            await self._send_one(row)
        except Exception as error:  # a bug, or the database away: the row is retried
            log.warning("message %d not sent: %r", row.id, error)
            with contextlib.suppress(Exception):
                await self._retry_later(row, f"error: {error!r}"[:400])

    async def _retry_later(self, row: Any, reason: str, delay: timedelta | None = None) -> None:
        if delay is None and row.attempts >= MAX_ATTEMPTS:
            MESSAGES_FAILED.labels(row.kind).inc()
            await self._settle(row.id, status="failed", error=f"[too_many_attempts] {reason}")
            return
        if delay is None:
            seconds = min(300.0, 0.5 * 2**row.attempts) * random.uniform(0.8, 1.2)
            delay = timedelta(seconds=seconds)
        await self._settle(row.id, status="pending", error=reason, due_at=datetime.now(UTC) + delay)

    async def _send_one(self, row: Any) -> None:
        chat_id = row.telegram_user_id or await self.downstream.telegram_id_of(row.user_id)
        if not chat_id:
            await self._settle(row.id, status="no_chat", error="the user has no Telegram id")
            return
        async with self._single.connect() as connection:
            known = (
                await connection.execute(
                    select(telegram_users).where(telegram_users.c.telegram_user_id == chat_id)
                )
            ).first()
        if known is not None and known.unreachable_at is not None:
            await self._settle(
                row.id,
                status="unreachable",
                error="the user blocked the bot",
                telegram_user_id=chat_id,
            )
            return
        language = (known.language_code if known is not None else "") or row.language
        values = {
            "sku": self.texts.sku_title(
                self.texts.language_of(language), row.params.get("sku", "")
            ),
            "tier": row.params.get("tier", ""),
            "until": rules.format_until(row.params.get("until", "")),
        }
        kind, link, extra_lines = row.kind, "", list[str]()
        if kind in ("receipt", "receipt_lifetime"):
            prepared = await self._prepare_receipt(row, chat_id, language)
            if prepared is None:
                return
            kind, values["until"], extra_lines = prepared
        elif kind == "revoked":
            # What is left (another stacked grant) ends at its own time: remind of that.
            tier = row.params.get("tier", "")
            async with self._engine.begin() as connection:
                # Again now: a receipt sent meanwhile may have written reminders of the old end.
                await Outbox(connection).drop_reminders(row.user_id, tier)
            left = await self.downstream.entitlement_now(row.user_id, tier)
            await self._schedule_reminders(row, chat_id, left)
        elif kind in REMINDER_KINDS:
            if not await self._still_holds(row):
                return
            link = await self._renewal_link(row, chat_id)
        text = self.texts.render(kind, language, values, link=link, extra_lines=extra_lines)
        await self._limiter.acquire(None)
        if not await self._renew(row.id):
            # Preparing took longer than the lease, and another sender has since marked it:
            # it is not ours to send any more.
            log.warning("message %d: lease lost before sending; left as marked", row.id)
            return
        try:
            message_id = await self.bot.send_message(chat_id, text)
        except BotApiError as error:
            await self._refused(row, chat_id, error)
            return
        except Unavailable as error:
            # No answer: retried. Telegram may have sent it if the answer alone was lost.
            await self._retry_later(row, str(error))
            return
        MESSAGES_SENT.labels(row.kind).inc()
        # Sent: from here on no error may put the row back to be sent again.
        for attempt in range(3):
            try:
                await self._settle(
                    row.id,
                    status="sent",
                    error="",
                    sent_at=func.now(),
                    telegram_message_id=message_id,
                )
                return
            except Exception as error:
                log.warning("message %d sent, not yet marked so: %r", row.id, error)
                await asyncio.sleep(1 + attempt)
        # Still `sending` when its lease runs out: kept as unknown, never resent.

    async def _prepare_receipt(
        self, row: Any, chat_id: int, language: str
    ) -> tuple[str, str, list[str]] | None:
        """The receipt tells when access now ends (stacked grants included), and schedules
        its reminders; None when the access is already gone (the refund notice follows)."""
        entitlement = row.params.get("tier", "")
        now = await self.downstream.entitlement_now(row.user_id, entitlement)
        if not now.active:
            await self._settle(row.id, status="superseded", error="access no longer active")
            return None
        extras: list[str] = []
        context = ReceiptContext(
            row.user_id, chat_id, entitlement, row.params.get("sku", ""), language
        )
        for extra in self.receipt_extras:
            extras.extend(await extra(context))
        if now.lifetime or not now.HasField("expires_at"):
            return "receipt_lifetime", "", extras
        await self._schedule_reminders(row, chat_id, now)
        ends_at = now.expires_at.ToDatetime(tzinfo=UTC)
        return "receipt", rules.format_until(ends_at.isoformat()), extras

    async def _schedule_reminders(
        self, row: Any, chat_id: int, now: entitlements_pb2.CheckEntitlementResponse
    ) -> None:
        """Write the reminders of when access now ends (none for lifetime, or when it has
        ended). A subscription renews by itself: its receipts schedule none."""
        if not now.active or now.lifetime or not now.HasField("expires_at"):
            return
        if row.params.get("subscription"):
            return
        due = rules.reminders(
            rules.Recipient(row.user_id, chat_id, row.language),
            sku=row.params.get("sku", ""),
            entitlement=row.params.get("tier", ""),
            ends_at=now.expires_at.ToDatetime(tzinfo=UTC),
            now=datetime.now(UTC),
        )
        async with self._engine.begin() as connection:
            await Outbox(connection).write(due)

    async def _still_holds(self, row: Any) -> bool:
        """Whether the end a reminder announces is still the end of access."""
        now = await self.downstream.entitlement_now(row.user_id, row.entitlement or "")
        if row.kind == "ended":
            holds = not now.active
        else:
            ends = now.expires_at.ToDatetime(tzinfo=UTC) if now.HasField("expires_at") else None
            holds = (
                now.active
                and ends is not None
                and row.ends_at is not None
                and abs((ends - row.ends_at).total_seconds()) < 1
                # Late (the layer was down): a shorter reminder already due says it better.
                and ends - datetime.now(UTC) > rules.next_shorter_lead(row.kind)
            )
        if not holds:
            await self._settle(row.id, status="superseded", error="the end of access moved")
        return holds

    async def _renewal_link(self, row: Any, chat_id: int) -> str:
        """A Stars invoice link or a card checkout link, whichever the user last paid with;
        empty when neither can be made (the reminder goes out without one)."""
        sku = self.catalogue.skus.get(row.params.get("sku", ""))
        if sku is None:
            return ""
        async with self._single.connect() as connection:
            last_provider = await connection.scalar(
                select(payments.c.provider)
                .where(payments.c.user_id == row.user_id, payments.c.sku.is_not(None))
                .order_by(payments.c.created_at.desc())
                .limit(1)
            )
        try:
            if last_provider == "stripe" and sku.stripe_prices and self._checkout_link:
                return await self._checkout_link(row.user_id, sku.name, row.id)
            if sku.stars is not None:
                url, _ = await self.bot.create_invoice_link(sku, row.user_id)
                return url
        except Unavailable:
            raise  # Telegram or Stripe away: the reminder is retried, link and all
        except (DomainError, BotApiError) as error:
            log.warning("message %d: no renewal link: %s", row.id, error)
        return ""

    async def _refused(self, row: Any, chat_id: int, error: BotApiError) -> None:
        if error.error_code == 429:
            wait = max(error.retry_after, 1.0)
            self._limiter.pause(wait)
            await self._settle(
                row.id,
                status="pending",
                attempts=messages.c.attempts - 1,  # waiting is not failing
                error=f"429: retry after {wait:g} s",
                due_at=datetime.now(UTC) + timedelta(seconds=wait),
            )
            return
        if error.error_code == 403:
            await self._unreachable(row, chat_id, error.description)
            return
        if error.error_code == 400 or 400 < error.error_code < 500:
            MESSAGES_FAILED.labels(row.kind).inc()
            await self._settle(row.id, status="failed", error=error.description or str(error))
            log.warning("message %d refused by Telegram: %s", row.id, error.description)
            return
        await self._retry_later(row, f"{error.error_code}: {error.description}")

    async def _unreachable(self, row: Any, chat_id: int, description: str) -> None:
        """The user blocked the bot: nothing more goes to them."""
        async with self._engine.begin() as connection:
            statement = insert(telegram_users).values(
                telegram_user_id=chat_id, unreachable_at=func.now()
            )
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[telegram_users.c.telegram_user_id],
                    set_={"unreachable_at": func.now(), "updated_at": func.now()},
                )
            )
            await connection.execute(
                update(messages)
                .where(_mine(row.id, self._worker))
                .values(
                    status="unreachable",
                    error=description[:400],
                    claimed_until=None,
                    telegram_user_id=chat_id,  # so a retry knows whom to write to again
                )
            )
            await connection.execute(
                update(messages)
                .where(
                    or_(messages.c.telegram_user_id == chat_id, messages.c.user_id == row.user_id),
                    messages.c.status == "pending",
                )
                # Whom to write to again is kept with each, for an operator's retry.
                .values(
                    status="unreachable",
                    error="the user blocked the bot",
                    telegram_user_id=chat_id,
                )
            )
        MESSAGES_UNREACHABLE.inc()
        log.info("message %d: the user blocked the bot; no more messages to them", row.id)


# --- operators: list and retry -----------------------------------------------------------------


async def list_messages(
    engine: AsyncEngine, *, user_id: str, status: str, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Newest first, paged by id."""
    query = select(messages).order_by(messages.c.id.desc()).limit(limit)
    if user_id:
        query = query.where(messages.c.user_id == user_id)
    if status:
        query = query.where(messages.c.status == status)
    if before_id is not None:
        query = query.where(messages.c.id < before_id)
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(query)]


RETRYABLE_STATUSES = ("failed", "unknown", "unreachable", "no_chat")


async def retry_message(engine: AsyncEngine, message_id: int) -> dict[str, Any] | None:
    """Send this message again, due now. A user marked unreachable is reachable again (they
    may have unblocked the bot). None when there is no such message in a retryable state."""
    async with engine.begin() as connection:
        row = (
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status.in_(RETRYABLE_STATUSES))
                .values(
                    status="pending",
                    error="",
                    attempts=0,
                    due_at=func.now(),
                    claimed_until=None,
                    claimed_by=None,
                )
                .returning(*messages.c)
            )
        ).first()
        if row is None:
            return None
        if row.telegram_user_id:
            await connection.execute(
                update(telegram_users)
                .where(telegram_users.c.telegram_user_id == row.telegram_user_id)
                .values(unreachable_at=None, updated_at=func.now())
            )
        # Reminders dropped when the user blocked the bot, and not yet due, hold again.
        await connection.execute(
            update(messages)
            .where(
                messages.c.user_id == row.user_id,
                messages.c.status == "unreachable",
                messages.c.kind.in_(sorted(REMINDER_KINDS)),
                messages.c.due_at > func.now(),
            )
            .values(status="pending", error="")
        )
        return dict(row._mapping)
