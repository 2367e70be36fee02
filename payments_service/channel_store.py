"""SQL of channel access: members known per chat, join requests, invite links, the audit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from payments_service.tables import (
    chat_access_audit,
    chat_invite_links,
    chat_join_requests,
    chat_members,
    payments,
)

# Statuses of someone in the chat (restricted users may still be members: they read it).
PRESENT = ("member", "restricted")
ADMINS = ("creator", "administrator")
# Ours: a removal between its ban and its unban. A crash there leaves the user banned, so
# the reconcile finishes any row left in this state (the unban lets them return later).
REMOVING = "removing"
# One reconciler at a time across replicas (an arbitrary constant of this layer).
RECONCILE_LOCK_KEY = 0x504C_4348_414E  # "PLCHAN"


@dataclass(frozen=True)
class Member:
    chat_id: int
    telegram_user_id: int
    status: str


class ChannelStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def observe_member(
        self, chat_id: int, telegram_user_id: int, status: str, observed_at: datetime
    ) -> bool:
        """What a chat_member update (or our own act) says; an older word never overwrites a
        newer one. True when it was taken."""
        statement = insert(chat_members).values(
            chat_id=chat_id,
            telegram_user_id=telegram_user_id,
            status=status,
            observed_at=observed_at,
        )
        upsert = statement.on_conflict_do_update(
            constraint="chat_members_pkey",
            set_={
                "status": statement.excluded.status,
                "observed_at": statement.excluded.observed_at,
                "updated_at": func.now(),
            },
            where=chat_members.c.observed_at <= statement.excluded.observed_at,
        ).returning(chat_members.c.chat_id)
        async with self.engine.begin() as connection:
            return (await connection.execute(upsert)).first() is not None

    async def member(self, chat_id: int, telegram_user_id: int) -> Member | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(chat_members).where(
                        chat_members.c.chat_id == chat_id,
                        chat_members.c.telegram_user_id == telegram_user_id,
                    )
                )
            ).first()
        return None if row is None else Member(row.chat_id, row.telegram_user_id, row.status)

    async def members(self, chat_ids: list[int], statuses: tuple[str, ...]) -> list[Member]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    chat_members.c.chat_id,
                    chat_members.c.telegram_user_id,
                    chat_members.c.status,
                ).where(
                    chat_members.c.chat_id.in_(chat_ids),
                    chat_members.c.status.in_(statuses),
                )
            )
            return [Member(r.chat_id, r.telegram_user_id, r.status) for r in rows]

    async def memberships_of(self, telegram_user_id: int) -> list[Member]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(chat_members).where(chat_members.c.telegram_user_id == telegram_user_id)
            )
            return [Member(r.chat_id, r.telegram_user_id, r.status) for r in rows]

    async def counts(self) -> dict[int, dict[str, int]]:
        """Per chat, how many users are known in each status."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(chat_members.c.chat_id, chat_members.c.status, func.count()).group_by(
                    chat_members.c.chat_id, chat_members.c.status
                )
            )
            counts: dict[int, dict[str, int]] = {}
            for chat_id, status, count in rows:
                counts.setdefault(chat_id, {})[status] = count
            return counts

    async def record_join_request(
        self, chat_id: int, telegram_user_id: int, requested_at: datetime, invite_link: str | None
    ) -> None:
        statement = insert(chat_join_requests).values(
            chat_id=chat_id,
            telegram_user_id=telegram_user_id,
            requested_at=requested_at,
            invite_link=invite_link,
            decision="pending",
        )
        statement = statement.on_conflict_do_update(
            constraint="chat_join_requests_pkey",
            set_={
                "requested_at": statement.excluded.requested_at,
                "invite_link": statement.excluded.invite_link,
                "decision": "pending",
                "decided_at": None,
            },
            where=chat_join_requests.c.requested_at < statement.excluded.requested_at,
        )
        async with self.engine.begin() as connection:
            await connection.execute(statement)

    async def decide_join_request(self, chat_id: int, telegram_user_id: int, decision: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                chat_join_requests.update()
                .where(
                    chat_join_requests.c.chat_id == chat_id,
                    chat_join_requests.c.telegram_user_id == telegram_user_id,
                )
                .values(decision=decision, decided_at=func.now())
            )

    async def invite_link(self, chat_id: int, telegram_user_id: int) -> str | None:
        async with self.engine.connect() as connection:
            link = await connection.scalar(
                select(chat_invite_links.c.invite_link).where(
                    chat_invite_links.c.chat_id == chat_id,
                    chat_invite_links.c.telegram_user_id == telegram_user_id,
                )
            )
            return str(link) if link is not None else None

    async def save_invite_link(
        self, chat_id: int, telegram_user_id: int, user_id: str, tier: str, invite_link: str
    ) -> str:
        """Keep the first link made for this user and chat (two makers at once: one wins);
        the link that stands is returned."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(chat_invite_links)
                .values(
                    chat_id=chat_id,
                    telegram_user_id=telegram_user_id,
                    user_id=user_id,
                    tier=tier,
                    invite_link=invite_link,
                )
                .on_conflict_do_nothing()
            )
            standing = await connection.scalar(
                select(chat_invite_links.c.invite_link).where(
                    chat_invite_links.c.chat_id == chat_id,
                    chat_invite_links.c.telegram_user_id == telegram_user_id,
                )
            )
        return str(standing)

    async def invite_links_of(self, telegram_user_id: int) -> dict[int, str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(chat_invite_links.c.chat_id, chat_invite_links.c.invite_link).where(
                    chat_invite_links.c.telegram_user_id == telegram_user_id
                )
            )
            return {row.chat_id: row.invite_link for row in rows}

    async def audit(
        self,
        chat_id: int,
        telegram_user_id: int,
        user_id: str | None,
        action: str,
        reason: str,
    ) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                chat_access_audit.insert().values(
                    chat_id=chat_id,
                    telegram_user_id=telegram_user_id,
                    user_id=user_id,
                    action=action,
                    reason=reason[:500],
                )
            )

    async def audit_rows(
        self, *, chat_id: int | None = None, telegram_user_id: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest audit rows first."""
        query = select(chat_access_audit).order_by(chat_access_audit.c.id.desc()).limit(limit)
        if chat_id is not None:
            query = query.where(chat_access_audit.c.chat_id == chat_id)
        if telegram_user_id is not None:
            query = query.where(chat_access_audit.c.telegram_user_id == telegram_user_id)
        async with self.engine.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def payment_status(self, provider: str, payment_key: str) -> str | None:
        """The ledger's word on a payment (refunded, disputed …), to say why access ended."""
        async with self.engine.connect() as connection:
            status = await connection.scalar(
                select(payments.c.status).where(
                    payments.c.provider == provider, payments.c.payment_key == payment_key
                )
            )
            return str(status) if status is not None else None

    @asynccontextmanager
    async def removal_lock(self, chat_id: int, telegram_user_id: int) -> AsyncIterator[None]:
        """One removal of a user from a chat at a time, across replicas (the revoke stream and
        the reconcile may both act on the same user): the second waits, then sees them gone."""
        key = f"chat-removal:{chat_id}:{telegram_user_id}"
        async with self.engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), {"key": key}
            )
            await connection.commit()
            try:
                yield
            finally:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), {"key": key}
                )
                await connection.commit()

    @asynccontextmanager
    async def reconcile_lock(self) -> AsyncIterator[bool]:
        """Whether this process may reconcile now: a session advisory lock on a connection held
        for the pass (released with it, also when the process dies)."""
        async with self.engine.connect() as connection:
            got = bool(
                await connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": RECONCILE_LOCK_KEY}
                )
            )
            await connection.commit()
            try:
                yield got
            finally:
                if got:
                    await connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": RECONCILE_LOCK_KEY}
                    )
                    await connection.commit()
