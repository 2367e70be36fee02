"""SQL for the accounts schema: users and their identities, linked accounts, snapshots.

Statements only: the use cases (use_cases.py) decide, and own the transaction they run in.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from accounts_service import rules
from accounts_service.tables import accounts, snapshot_history, users
from paylayer import unit_of_work

# The column name of each identity a user can be found by.
IdentityKind = Literal["user_id", "telegram_user_id", "stripe_customer_id", "email"]
# The ones attached after creation; the internal id never changes.
LinkableKind = Literal["telegram_user_id", "stripe_customer_id", "email"]

IDENTITY_LABELS: dict[str, str] = {
    "user_id": "user id",
    "telegram_user_id": "Telegram user id",
    "stripe_customer_id": "Stripe customer",
    "email": "email",
}


def _user(row: Row[Any]) -> rules.User:
    return rules.User(
        user_id=row.user_id,
        telegram_user_id=row.telegram_user_id,
        stripe_customer_id=row.stripe_customer_id,
        email=row.email,
        created_at=row.created_at,
    )


def _account(row: Row[Any]) -> rules.LinkedAccount:
    snapshot = None
    if row.snapshot_time is not None:
        snapshot = rules.Snapshot(
            time=row.snapshot_time,
            balance=row.balance,
            equity=row.equity,
            margin=row.margin,
            free_margin=row.free_margin,
            margin_level=row.margin_level,
            currency=row.currency,
            leverage=row.leverage,
        )
    return rules.LinkedAccount(
        login=row.login,
        server=row.server,
        user_id=row.user_id,
        account_type=row.account_type,
        broker=row.broker,
        label=row.label,
        linked_at=row.linked_at,
        snapshot=snapshot,
        drawdown=rules.DrawdownState(
            peak_equity=row.peak_equity, drawdown=row.drawdown, max_drawdown=row.max_drawdown
        ),
    )


# Oldest link first; login and server only break ties, so the order never changes between reads.
_LINK_ORDER = (accounts.c.linked_at, accounts.c.login, accounts.c.server)


class UnitOfWork(unit_of_work.UnitOfWork):
    """One transaction on the accounts schema (see paylayer.unit_of_work)."""

    @property
    def accounts(self) -> AccountsStore:
        return AccountsStore(self.connection)


class AccountsStore:
    """SQL on one connection, inside the transaction of the unit of work that made it."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    # --- users ---------------------------------------------------------------------------------

    async def find_user(
        self, kind: IdentityKind, value: str | int, *, for_update: bool = False
    ) -> rules.User | None:
        query = select(users).where(users.c[kind] == value)
        if for_update:
            query = query.with_for_update()
        row = (await self._connection.execute(query)).first()
        return _user(row) if row else None

    async def insert_user(self, kind: LinkableKind, value: str | int) -> rules.User | None:
        """A new user holding this identity; None when someone holds it already (of concurrent
        inserts of one identity, the unique constraint lets one through)."""
        row = (
            await self._connection.execute(
                pg_insert(users)
                .values(user_id=str(uuid.uuid4()), **{kind: value})
                .on_conflict_do_nothing()
                .returning(*users.c)
            )
        ).first()
        return _user(row) if row else None

    async def users_by(
        self, kind: IdentityKind, values: Sequence[str | int]
    ) -> dict[str | int, rules.User]:
        rows = await self._connection.execute(select(users).where(users.c[kind].in_(values)))
        return {row._mapping[kind]: _user(row) for row in rows}

    async def insert_users(
        self, kind: LinkableKind, values: Sequence[str | int]
    ) -> dict[str | int, rules.User]:
        """New users for these identities; those someone holds already are left out."""
        rows = await self._connection.execute(
            pg_insert(users)
            .values([{"user_id": str(uuid.uuid4()), kind: value} for value in values])
            .on_conflict_do_nothing()
            .returning(*users.c)
        )
        return {row._mapping[kind]: _user(row) for row in rows}

    async def set_identity(
        self, user_id: str, kind: LinkableKind, value: str | int
    ) -> rules.User | None:
        """None when the unique constraint refuses: another user took it meanwhile."""
        try:
            async with self._connection.begin_nested():
                row = (
                    await self._connection.execute(
                        update(users)
                        .where(users.c.user_id == user_id)
                        .values(**{kind: value})
                        .returning(*users.c)
                    )
                ).one()
        except IntegrityError:
            return None
        return _user(row)

    # --- linked accounts -----------------------------------------------------------------------

    async def account(
        self, login: int, server: str, *, for_update: bool = False
    ) -> rules.LinkedAccount | None:
        query = select(accounts).where(
            accounts.c.login == login, accounts.c.server_key == rules.server_key(server)
        )
        if for_update:
            query = query.with_for_update()
        row = (await self._connection.execute(query)).first()
        return _account(row) if row else None

    async def count_links(self, user_id: str) -> int:
        count = await self._connection.scalar(
            select(func.count()).select_from(accounts).where(accounts.c.user_id == user_id)
        )
        return count or 0

    async def insert_account(
        self, *, user_id: str, login: int, server: str, account_type: str, broker: str, label: str
    ) -> rules.LinkedAccount | None:
        """None when (login, server) is linked already."""
        row = (
            await self._connection.execute(
                pg_insert(accounts)
                .values(
                    login=login,
                    server=server,
                    server_key=rules.server_key(server),
                    user_id=user_id,
                    account_type=account_type,
                    broker=broker,
                    label=label,
                )
                .on_conflict_do_nothing()
                .returning(*accounts.c)
            )
        ).first()
        return _account(row) if row else None

    async def describe_account(
        self, *, login: int, server: str, account_type: str, broker: str, label: str
    ) -> rules.LinkedAccount:
        row = (
            await self._connection.execute(
                update(accounts)
                .where(accounts.c.login == login, accounts.c.server_key == rules.server_key(server))
                .values(account_type=account_type, broker=broker, label=label)
                .returning(*accounts.c)
            )
        ).one()
        return _account(row)

    async def delete_account(self, *, user_id: str, login: int, server: str) -> bool:
        """Forget the link and its snapshots; False when it was not this user's."""
        deleted = await self._connection.scalar(
            accounts.delete()
            .where(
                accounts.c.login == login,
                accounts.c.server_key == rules.server_key(server),
                accounts.c.user_id == user_id,
            )
            .returning(accounts.c.login)
        )
        return deleted is not None

    async def accounts_of(self, user_id: str) -> list[rules.LinkedAccount]:
        """Oldest link first: the order in which links stay active under a cap."""
        rows = await self._connection.execute(
            select(accounts).where(accounts.c.user_id == user_id).order_by(*_LINK_ORDER)
        )
        return [_account(row) for row in rows]

    async def store_snapshot(
        self, account: rules.LinkedAccount, snapshot: rules.Snapshot, drawdown: rules.DrawdownState
    ) -> rules.LinkedAccount:
        row = (
            await self._connection.execute(
                update(accounts)
                .where(
                    accounts.c.login == account.login,
                    accounts.c.server_key == rules.server_key(account.server),
                )
                .values(
                    snapshot_time=snapshot.time,
                    balance=snapshot.balance,
                    equity=snapshot.equity,
                    margin=snapshot.margin,
                    free_margin=snapshot.free_margin,
                    margin_level=snapshot.margin_level,
                    currency=snapshot.currency,
                    leverage=snapshot.leverage,
                    peak_equity=drawdown.peak_equity,
                    drawdown=drawdown.drawdown,
                    max_drawdown=drawdown.max_drawdown,
                )
                .returning(*accounts.c)
            )
        ).one()
        # In the same transaction: the chart never shows a point the account never had.
        await self._connection.execute(
            pg_insert(snapshot_history)
            .values(
                login=row.login,
                server_key=row.server_key,
                minute=rules.history_minute(snapshot.time),
                time=snapshot.time,
                balance=snapshot.balance,
                equity=snapshot.equity,
                drawdown=drawdown.drawdown,
            )
            .on_conflict_do_nothing()
        )
        return _account(row)

    async def snapshot_history(
        self,
        login: int,
        server: str,
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        bucket_seconds: int = 0,
    ) -> Sequence[rules.HistoryPoint]:
        """The newest `limit` points in [since, until), oldest first. With `bucket_seconds`,
        one point per stretch of that many seconds: the one with the deepest drawdown, so a
        chart of months stays small without hiding a dip."""
        columns = (
            snapshot_history.c.time,
            snapshot_history.c.balance,
            snapshot_history.c.equity,
            snapshot_history.c.drawdown,
        )
        query = select(*columns).where(
            snapshot_history.c.login == login,
            snapshot_history.c.server_key == rules.server_key(server),
        )
        if since is not None:
            query = query.where(snapshot_history.c.minute >= rules.history_minute(since))
        if until is not None:
            query = query.where(snapshot_history.c.time < until)
        if bucket_seconds > 0:
            bucket = func.floor(func.extract("epoch", snapshot_history.c.minute) / bucket_seconds)
            query = query.ext(distinct_on(bucket)).order_by(
                bucket.desc(), snapshot_history.c.drawdown.desc(), snapshot_history.c.minute
            )
        else:
            query = query.order_by(snapshot_history.c.minute.desc())
        rows = (await self._connection.execute(query.limit(limit))).all()
        return [
            rules.HistoryPoint(time=row[0], balance=row[1], equity=row[2], drawdown=row[3])
            for row in reversed(rows)
        ]

    async def forget_old_history(self, older_than: timedelta) -> int:
        result = await self._connection.execute(
            snapshot_history.delete().where(snapshot_history.c.minute < func.now() - older_than)
        )
        return result.rowcount or 0

    async def older_links(self, account: rules.LinkedAccount) -> int:
        """How many of the owner's links are older than this one (to tell if it is suspended)."""
        older = await self._connection.scalar(
            select(func.count())
            .select_from(accounts)
            .where(
                accounts.c.user_id == account.user_id,
                tuple_(*_LINK_ORDER) < tuple_(account.linked_at, account.login, account.server),
            )
        )
        return older or 0
