"""SQL of the entitlements schema: grants one per source, tombstones, audit, change notices.

Each change runs in the transaction of the use case's unit of work: the grant row, its audit
row and a NOTIFY to every replica commit together, so a replica hears of a change exactly when
it becomes visible, never before.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

from sqlalchemy import Row, exc, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from entitlements_service import wire
from entitlements_service.rules import Grant, Revocation, RevokeOutcome, Source
from entitlements_service.tables import CHANGES_CHANNEL, audit, grants
from paylayer import unit_of_work
from paylayer.errors import Unavailable
from protos.entitlements.v1 import entitlements_pb2

# Everything a revoke can fill into an existing row (or a new tombstone).
_REVOKE_COLUMNS = ("revoked_at", "revoke_event_id", "revoke_reason", "revoked_by")
# Everything a grant fills into a tombstone (keeping it revoked).
_GRANT_COLUMNS = (
    "user_id",
    "entitlement",
    "event_id",
    "purchased_at",
    "duration_seconds",
    "until",
    "lifetime",
    "reason",
    "granted_by",
)

_rows_in = insert(grants)
# A source granted before keeps its grant: ON CONFLICT rewrites only a tombstone's empty row.
_GRANT_MANY = _rows_in.on_conflict_do_update(
    constraint="uq_grants_source",
    set_={column: _rows_in.excluded[column] for column in _GRANT_COLUMNS},
    where=grants.c.user_id.is_(None),
).returning(*grants.c)


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _unavailable_when_unreachable(method: Method) -> Method:
    """A database that cannot be reached is UNAVAILABLE (callers retry), not INTERNAL."""

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (OSError, TimeoutError, exc.TimeoutError, exc.InterfaceError) as error:
            raise Unavailable("the entitlements database cannot be reached") from error
        except exc.DBAPIError as error:
            if error.connection_invalidated or isinstance(error, exc.OperationalError):
                raise Unavailable("the entitlements database cannot be reached") from error
            raise

    return call  # type: ignore[return-value]


class UnitOfWork(unit_of_work.UnitOfWork):
    """One transaction on the entitlements schema (see paylayer.unit_of_work)."""

    @property
    def grants(self) -> EntitlementStore:
        return EntitlementStore(self.connection)

    @_unavailable_when_unreachable
    async def __aenter__(self) -> Self:
        return await super().__aenter__()

    @_unavailable_when_unreachable
    async def commit(self) -> None:
        await super().commit()


class EntitlementStore:
    """SQL on one connection, inside the transaction of the unit of work that made it."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    @_unavailable_when_unreachable
    async def audit_of_user(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """A user's audit rows, newest first."""
        query = (
            select(audit)
            .where(audit.c.user_id == user_id)
            .order_by(audit.c.audit_id.desc())
            .limit(limit)
        )
        return [dict(row._mapping) for row in await self._connection.execute(query)]

    @_unavailable_when_unreachable
    async def grant(self, new: Grant, *, on_behalf_of: str = "") -> tuple[Grant, bool]:
        """Record `new` unless its source is known. Returns the grant that stands, and created.

        Same source again: the first grant stands. A tombstoned source: `new` is kept, revoked.
        """
        return await self._grant(self._connection, new, on_behalf_of)

    @_unavailable_when_unreachable
    async def grant_many(self, many: Sequence[Grant]) -> list[tuple[Grant, bool]]:
        """`grant` for each, answered in order, in four statements: the
        grants, the ones already standing, their audit rows and their change notices. A
        source given twice counts once, as two calls would."""
        first: dict[tuple[str, str], Grant] = {}
        for new in many:
            first.setdefault((new.source.provider, new.source.reference), new)
        if not first:
            return []
        connection = self._connection
        # Rows as parameters, not as values in the statement: the statement is then compiled
        # once, and SQLAlchemy still sends the batch as one multi-row INSERT.
        written = {
            (row.provider, row.reference): row
            for row in await connection.execute(
                _GRANT_MANY,
                [
                    {"grant_id": uuid.UUID(new.grant_id), **_grant_values(new)}
                    for new in first.values()
                ],
            )
        }
        # Sources already granted: ON CONFLICT touched nothing; the first grant stands.
        missing = [key for key in first if key not in written]
        standing: dict[tuple[str, str], Grant] = {}
        if missing:
            rows = await connection.execute(
                select(grants).where(tuple_(grants.c.provider, grants.c.reference).in_(missing))
            )
            standing = {(row.provider, row.reference): _grant_of(row) for row in rows}
        outcomes: dict[tuple[str, str], tuple[Grant, bool]] = {}
        audit_rows, notices = [], []
        for key, new in first.items():
            if key not in written:
                outcomes[key] = (standing[key], False)
                continue
            stored = _grant_of(written[key])
            created = stored.grant_id == new.grant_id
            outcomes[key] = (stored, created)
            audit_rows.append(
                _audit_row(
                    action="grant" if created else "grant_after_revoke",
                    grant=stored,
                    event_id=new.event_id,
                    reason=new.reason,
                    actor=new.granted_by,
                )
            )
            if created:
                notices.append(_change_notice("grant", stored))
        if audit_rows:
            await connection.execute(audit.insert(), audit_rows)
        if notices:
            await connection.execute(
                text(
                    "SELECT pg_notify(:channel, notice)"
                    " FROM unnest(CAST(:notices AS text[])) AS notice"
                ),
                {"channel": CHANGES_CHANNEL, "notices": notices},
            )
        answers = []
        for new in many:
            stored, created = outcomes[(new.source.provider, new.source.reference)]
            # A repeat of a source within the batch: not created a second time.
            answers.append((stored, created and stored.grant_id == new.grant_id))
        return answers

    async def _grant(
        self, connection: AsyncConnection, new: Grant, on_behalf_of: str = ""
    ) -> tuple[Grant, bool]:
        values = _grant_values(new)
        statement = (
            insert(grants)
            .values(grant_id=uuid.UUID(new.grant_id), **values)
            .on_conflict_do_update(
                constraint="uq_grants_source",
                set_={column: values[column] for column in _GRANT_COLUMNS},
                where=grants.c.user_id.is_(None),
            )
            .returning(*grants.c)
        )
        row = (await connection.execute(statement)).first()
        if row is None:
            # The source was already granted: ON CONFLICT touched nothing.
            standing = await self._grant_by_source(connection, new.source)
            return standing, False
        stored = _grant_of(row)
        created = str(row.grant_id) == new.grant_id
        await _write_audit(
            connection,
            action="grant" if created else "grant_after_revoke",
            grant=stored,
            event_id=new.event_id,
            reason=new.reason,
            actor=new.granted_by,
            on_behalf_of=on_behalf_of,
        )
        if created:
            await _notify(connection, "grant", stored)
        return stored, created

    @_unavailable_when_unreachable
    async def revoke(self, revocation: Revocation) -> RevokeOutcome:
        tombstone_id = uuid.uuid4()
        revoke_values: dict[str, Any] = {
            "revoked_at": datetime.now(UTC),
            "revoke_event_id": revocation.event_id,
            "revoke_reason": revocation.reason,
            "revoked_by": revocation.revoked_by,
        }
        statement = (
            insert(grants)
            .values(
                grant_id=tombstone_id,
                provider=revocation.source.provider,
                reference=revocation.source.reference,
                **revoke_values,
            )
            .on_conflict_do_update(
                constraint="uq_grants_source",
                set_={column: revoke_values[column] for column in _REVOKE_COLUMNS},
                where=grants.c.revoked_at.is_(None),
            )
            .returning(*grants.c)
        )
        connection = self._connection
        row = (await connection.execute(statement)).first()
        if row is None:
            # Already revoked (or tombstoned): nothing changes.
            existing = (
                await connection.execute(select(grants).where(*_source_is(revocation.source)))
            ).one()
            standing = _grant_of(existing) if existing.user_id is not None else None
            return RevokeOutcome(standing, tombstone=standing is None, changed=False)
        if row.grant_id == tombstone_id:
            await connection.execute(
                audit.insert().values(
                    action="tombstone",
                    provider=revocation.source.provider,
                    reference=revocation.source.reference,
                    grant_id=tombstone_id,
                    event_id=revocation.event_id,
                    reason=revocation.reason,
                    actor=revocation.revoked_by,
                    details=_behalf(revocation.on_behalf_of, revocation.revoked_by),
                )
            )
            return RevokeOutcome(None, tombstone=True, changed=True)
        revoked = _grant_of(row)
        await _write_audit(
            connection,
            action="revoke",
            grant=revoked,
            event_id=revocation.event_id,
            reason=revocation.reason,
            actor=revocation.revoked_by,
            on_behalf_of=revocation.on_behalf_of,
        )
        await _notify(connection, "revoke", revoked)
        return RevokeOutcome(revoked, tombstone=False, changed=True)

    @_unavailable_when_unreachable
    async def grants_of_user(self, user_id: str, *, include_revoked: bool) -> list[Grant]:
        query = select(grants).where(grants.c.user_id == user_id)
        if not include_revoked:
            query = query.where(grants.c.revoked_at.is_(None))
        rows = (await self._connection.execute(query)).all()
        return [_grant_of(row) for row in rows]

    async def _grant_by_source(self, connection: AsyncConnection, source: Source) -> Grant:
        row = (await connection.execute(select(grants).where(*_source_is(source)))).one()
        return _grant_of(row)


def _source_is(source: Source) -> tuple[Any, ...]:
    return (grants.c.provider == source.provider, grants.c.reference == source.reference)


def _grant_values(grant: Grant) -> dict[str, Any]:
    return {
        "provider": grant.source.provider,
        "reference": grant.source.reference,
        "user_id": grant.user_id,
        "entitlement": grant.entitlement,
        "event_id": grant.event_id,
        "purchased_at": grant.purchased_at,
        "duration_seconds": (
            None if grant.duration is None else int(grant.duration.total_seconds())
        ),
        "until": grant.until,
        "lifetime": grant.lifetime,
        "reason": grant.reason,
        "granted_by": grant.granted_by,
    }


def _grant_of(row: Row[Any]) -> Grant:
    return Grant(
        grant_id=str(row.grant_id),
        user_id=row.user_id,
        entitlement=row.entitlement,
        source=Source(row.provider, row.reference),
        event_id=row.event_id,
        purchased_at=row.purchased_at,
        duration=(
            None if row.duration_seconds is None else timedelta(seconds=row.duration_seconds)
        ),
        until=row.until,
        lifetime=row.lifetime,
        revoked=row.revoked_at is not None,
        reason=row.reason,
        granted_by=row.granted_by,
    )


def _audit_row(
    *,
    action: str,
    grant: Grant,
    event_id: str,
    reason: str,
    actor: str,
    on_behalf_of: str = "",
) -> dict[str, Any]:
    return {
        "action": action,
        "provider": grant.source.provider,
        "reference": grant.source.reference,
        "grant_id": uuid.UUID(grant.grant_id),
        "user_id": grant.user_id,
        "entitlement": grant.entitlement,
        "event_id": event_id,
        "reason": reason,
        "actor": actor,
        "details": {
            "purchased_at": grant.purchased_at.isoformat(),
            "duration_seconds": (
                None if grant.duration is None else int(grant.duration.total_seconds())
            ),
            "until": None if grant.until is None else grant.until.isoformat(),
            "lifetime": grant.lifetime,
            **(_behalf(on_behalf_of, actor) or {}),
        },
    }


async def _write_audit(connection: AsyncConnection, **fields: Any) -> None:
    await connection.execute(audit.insert().values(**_audit_row(**fields)))


def _behalf(on_behalf_of: str, actor: str) -> dict[str, str] | None:
    """The person a caller names, kept beside (never instead of) the caller itself."""
    if not on_behalf_of or on_behalf_of == actor:
        return None
    return {"on_behalf_of": on_behalf_of}


def _change_notice(action: str, grant: Grant) -> str:
    change = entitlements_pb2.EntitlementChange(
        user_id=grant.user_id,
        entitlement=grant.entitlement,
        action=action,
        grant=wire.grant_message(grant),
        changed_at=wire.to_proto_time(datetime.now(UTC)),
    )
    return wire.change_notice(change)


async def _notify(connection: AsyncConnection, action: str, grant: Grant) -> None:
    """Delivered to every replica's listener when (and only if) the transaction commits."""
    await connection.execute(select(func.pg_notify(CHANGES_CHANNEL, _change_notice(action, grant))))
