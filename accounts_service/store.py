"""SQL for the accounts schema: users and their identities, linked accounts, snapshots."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from accounts_service import rules
from accounts_service.tables import accounts, snapshot_history, users
from paylayer.errors import AlreadyExists, FailedPrecondition, NotFound

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


class AccountsStore:
    """One short transaction per call; row locks where two calls could otherwise interleave."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Lookups and the create are single statements: no BEGIN/COMMIT round trips needed.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    # --- users ---------------------------------------------------------------------------------

    async def find_user(self, kind: IdentityKind, value: str | int) -> rules.User | None:
        async with self._single.connect() as connection:
            row = (await connection.execute(select(users).where(users.c[kind] == value))).first()
        return _user(row) if row else None

    async def create_user(self, kind: LinkableKind, value: str | int) -> tuple[rules.User, bool]:
        """The user holding this identity, made now if nobody does; and whether it was made.

        Race-safe without a lock: of concurrent inserts of one identity, the unique constraint
        lets one through and the others do nothing, then all read the same row.
        """
        async with self._single.connect() as connection:
            inserted = (
                await connection.execute(
                    pg_insert(users)
                    .values(user_id=str(uuid.uuid4()), **{kind: value})
                    .on_conflict_do_nothing()
                    .returning(*users.c)
                )
            ).first()
            if inserted is not None:
                return _user(inserted), True
            row = (await connection.execute(select(users).where(users.c[kind] == value))).one()
        return _user(row), False

    async def resolve_many(
        self, kind: IdentityKind, values: Sequence[str | int], *, create: bool
    ) -> dict[str | int, tuple[rules.User, bool]]:
        """The users holding these identities of one kind, made now (with `create`) for those
        nobody holds; with whether each was made. Three statements for the whole lot."""
        found: dict[str | int, tuple[rules.User, bool]] = {}
        async with self._single.connect() as connection:
            rows = await connection.execute(select(users).where(users.c[kind].in_(values)))
            for row in rows:
                found[row._mapping[kind]] = (_user(row), False)
            missing = [value for value in dict.fromkeys(values) if value not in found]
            if not create or not missing or kind == "user_id":
                return found
            inserted = await connection.execute(
                pg_insert(users)
                .values([{"user_id": str(uuid.uuid4()), kind: value} for value in missing])
                .on_conflict_do_nothing()
                .returning(*users.c)
            )
            for row in inserted:
                found[row._mapping[kind]] = (_user(row), True)
            # Made meanwhile by a concurrent call: the unique constraint let theirs through.
            raced = [value for value in missing if value not in found]
            if raced:
                rows = await connection.execute(select(users).where(users.c[kind].in_(raced)))
                for row in rows:
                    found[row._mapping[kind]] = (_user(row), False)
        return found

    async def link_identity(self, user_id: str, kind: LinkableKind, value: str | int) -> rules.User:
        """Attach an identity; never moves one from its owner, never replaces one a user has."""
        label = IDENTITY_LABELS[kind]
        try:
            async with self._engine.begin() as connection:
                user = await self._lock_user(connection, user_id)
                current = getattr(user, kind)
                if current == value:
                    return user
                if current is not None:
                    raise AlreadyExists(f"user {user_id} already has another {label}")
                owner = await connection.scalar(
                    select(users.c.user_id).where(users.c[kind] == value)
                )
                if owner is not None:
                    raise AlreadyExists(f"this {label} belongs to another user")
                row = (
                    await connection.execute(
                        update(users)
                        .where(users.c.user_id == user_id)
                        .values(**{kind: value})
                        .returning(*users.c)
                    )
                ).one()
                return _user(row)
        except IntegrityError as error:
            # Another call attached the same identity to someone else between our check and
            # our update: the constraint decided, and the answer is the same.
            raise AlreadyExists(f"this {label} belongs to another user") from error

    async def _lock_user(self, connection: AsyncConnection, user_id: str) -> rules.User:
        row = (
            await connection.execute(
                select(users).where(users.c.user_id == user_id).with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(f"no user {user_id}")
        return _user(row)

    # --- linked accounts -----------------------------------------------------------------------

    async def link_account(
        self,
        *,
        user_id: str,
        login: int,
        server: str,
        account_type: str,
        broker: str,
        label: str,
        cap: int,
    ) -> tuple[rules.LinkedAccount, int, bool]:
        """Link (login, server) to the user within their cap; give the account, how many of the
        user's links are older, and whether the link is new.

        The user's row is locked first, so two links racing for the last free place are
        counted one after the other and cannot both get it.
        """
        async with self._engine.begin() as connection:
            await self._lock_user(connection, user_id)
            existing = await self._account_row(connection, login, server)
            if existing is None:
                linked_count = await connection.scalar(
                    select(func.count()).select_from(accounts).where(accounts.c.user_id == user_id)
                )
                if not rules.may_link_another(linked_count or 0, cap):
                    raise FailedPrecondition(
                        f"user {user_id} has {linked_count} linked accounts, the cap of their "
                        f"tier is {cap}"
                    )
                inserted = (
                    await connection.execute(
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
                if inserted is not None:
                    return _account(inserted), await self._older_links(connection, inserted), True
                # Someone linked it in the meantime: answer as if they had been first.
                existing = await self._account_row(connection, login, server)
                assert existing is not None
            if existing.user_id != user_id:
                raise AlreadyExists(f"MT5 account {login}@{server} is linked to another user")
            # The same user again: idempotent, keeping the latest description they gave.
            row = (
                await connection.execute(
                    update(accounts)
                    .where(
                        accounts.c.login == login, accounts.c.server_key == rules.server_key(server)
                    )
                    .values(account_type=account_type, broker=broker, label=label)
                    .returning(*accounts.c)
                )
            ).one()
            return _account(row), await self._older_links(connection, row), False

    async def unlink_account(self, *, user_id: str, login: int, server: str) -> None:
        """Forget the link and its snapshots, so a later owner starts from a clean slate."""
        async with self._engine.begin() as connection:
            deleted = await connection.scalar(
                accounts.delete()
                .where(
                    accounts.c.login == login,
                    accounts.c.server_key == rules.server_key(server),
                    accounts.c.user_id == user_id,
                )
                .returning(accounts.c.login)
            )
        if deleted is None:
            raise NotFound(f"MT5 account {login}@{server} is not linked to user {user_id}")

    async def list_accounts(self, user_id: str) -> Sequence[rules.LinkedAccount]:
        """Oldest link first: the order in which links stay active under a cap."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(accounts).where(accounts.c.user_id == user_id).order_by(*_LINK_ORDER)
            )
            return [_account(row) for row in rows]

    async def get_account(self, login: int, server: str) -> tuple[rules.LinkedAccount, int]:
        """The account and how many of its owner's links are older (to tell if it is suspended)."""
        async with self._engine.connect() as connection:
            row = await self._account_row(connection, login, server)
            if row is None:
                raise NotFound(f"MT5 account {login}@{server} is not linked")
            return _account(row), await self._older_links(connection, row)

    async def report_snapshot(
        self, login: int, server: str, snapshot: rules.Snapshot
    ) -> tuple[rules.LinkedAccount, int, bool]:
        """Take in a snapshot if it is newer than the stored one; say whether it was applied.

        The row is locked while the newer-than test and the drawdown are worked out, so
        concurrent reports apply one after the other and the stored one never goes backwards.
        """
        async with self._engine.begin() as connection:
            row = await self._account_row(connection, login, server, for_update=True)
            if row is None:
                raise NotFound(f"MT5 account {login}@{server} is not linked; link it first")
            stored = _account(row)
            stored_time = stored.snapshot.time if stored.snapshot else None
            if not rules.is_newer(snapshot.time, stored_time):
                return stored, await self._older_links(connection, row), False
            drawdown = rules.after_snapshot(stored.drawdown, snapshot.equity)
            updated = (
                await connection.execute(
                    update(accounts)
                    .where(
                        accounts.c.login == login, accounts.c.server_key == rules.server_key(server)
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
            await connection.execute(
                pg_insert(snapshot_history)
                .values(
                    login=updated.login,
                    server_key=updated.server_key,
                    minute=rules.history_minute(snapshot.time),
                    time=snapshot.time,
                    balance=snapshot.balance,
                    equity=snapshot.equity,
                    drawdown=drawdown.drawdown,
                )
                .on_conflict_do_nothing()
            )
            return _account(updated), await self._older_links(connection, updated), True

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
        async with self._single.connect() as connection:
            rows = (await connection.execute(query.limit(limit))).all()
        return [
            rules.HistoryPoint(time=row[0], balance=row[1], equity=row[2], drawdown=row[3])
            for row in reversed(rows)
        ]

    async def forget_old_history(self, older_than: timedelta) -> int:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                snapshot_history.delete().where(snapshot_history.c.minute < func.now() - older_than)
            )
        return result.rowcount or 0

    async def _account_row(
        self, connection: AsyncConnection, login: int, server: str, *, for_update: bool = False
    ) -> Row[Any] | None:
        query = select(accounts).where(
            accounts.c.login == login, accounts.c.server_key == rules.server_key(server)
        )
        if for_update:
            query = query.with_for_update()
        return (await connection.execute(query)).first()

    async def _older_links(self, connection: AsyncConnection, row: Row[Any]) -> int:
        older = await connection.scalar(
            select(func.count())
            .select_from(accounts)
            .where(
                accounts.c.user_id == row.user_id,
                tuple_(*_LINK_ORDER) < tuple_(row.linked_at, row.login, row.server),
            )
        )
        return older or 0
