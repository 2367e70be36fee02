"""Read-only figures for the operator console: inbox outcomes per hour, revenue per day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from payments_service.tables import inbox, payments

# Payments that brought money in; refunds are netted out by amount_refunded.
_EARNING_STATUSES = ("succeeded", "refunded", "partially_refunded", "disputed")


@dataclass(frozen=True)
class Overview:
    events_per_hour: list[tuple[datetime, str, int]]
    failed_events: int
    pending_events: int
    oldest_pending_received_at: datetime | None
    revenue_per_day: list[tuple[datetime, str, str, int, int]]


async def overview(engine: AsyncEngine, *, now: datetime, hours: int, days: int) -> Overview:
    """Four aggregate statements; each reads one index or a bounded range."""
    hour = func.date_trunc("hour", inbox.c.received_at)
    per_hour = (
        select(hour, inbox.c.status, func.count())
        .where(inbox.c.received_at >= now - timedelta(hours=hours))
        .group_by(hour, inbox.c.status)
        .order_by(hour)
    )
    failed = select(func.count()).select_from(inbox).where(inbox.c.status == "failed")
    pending = select(func.count(), func.min(inbox.c.received_at)).where(inbox.c.status == "pending")
    bought_at = func.coalesce(payments.c.purchased_at, payments.c.created_at)
    day = cast(func.timezone("UTC", bought_at), Date)
    revenue = (
        select(
            day,
            payments.c.provider,
            payments.c.currency,
            func.sum(payments.c.amount - payments.c.amount_refunded),
            func.count(),
        )
        .where(
            payments.c.status.in_(_EARNING_STATUSES),
            bought_at >= now - timedelta(days=days),
        )
        .group_by(day, payments.c.provider, payments.c.currency)
        .order_by(day)
    )
    async with engine.connect() as connection:
        hourly = [(row[0], row[1], int(row[2])) for row in await connection.execute(per_hour)]
        failed_count = int(await connection.scalar(failed) or 0)
        pending_row = (await connection.execute(pending)).one()
        daily = [
            (
                datetime(row[0].year, row[0].month, row[0].day, tzinfo=now.tzinfo),
                row[1],
                row[2],
                int(row[3] or 0),
                int(row[4]),
            )
            for row in await connection.execute(revenue)
        ]
    return Overview(
        events_per_hour=hourly,
        failed_events=failed_count,
        pending_events=int(pending_row[0]),
        oldest_pending_received_at=pending_row[1],
        revenue_per_day=daily,
    )
