"""Pure shaping of service answers into what pages and charts show; no I/O, `now` passed in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Currencies Stripe counts without a minor unit; everything else in hundredths. Stars are whole.
ZERO_DECIMAL = frozenset({"jpy", "krw", "vnd", "clp", "pyg", "ugx", "xaf", "xof", "xtr"})


def major_units(amount: int, currency: str) -> float:
    return float(amount) if currency.lower() in ZERO_DECIMAL else amount / 100


def money(amount: int, currency: str) -> str:
    if currency.lower() == "xtr":
        return f"{amount} Stars"
    if currency.lower() in ZERO_DECIMAL:
        return f"{amount} {currency.upper()}"
    return f"{amount / 100:,.2f} {currency.upper()}"


def age(since: datetime | None, now: datetime) -> str:
    """`3 h 12 min`, `45 s`; empty for none."""
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def hourly_series(
    counts: list[tuple[datetime, str, int]], now: datetime, hours: int
) -> dict[str, Any]:
    """Events per hour and outcome, every hour present (zero when none) for the chart."""
    last = now.replace(minute=0, second=0, microsecond=0)
    slots = [last - HOUR * (hours - 1 - i) for i in range(hours)]
    index = {slot: i for i, slot in enumerate(slots)}
    series: dict[str, list[int]] = {}
    for hour, status, count in counts:
        if hour in index:
            series.setdefault(status, [0] * hours)[index[hour]] += count
    return {"x": [int(slot.timestamp()) for slot in slots], "series": series}


def revenue_series(
    days: list[tuple[datetime, str, str, int, int]], now: datetime, span: int
) -> dict[str, Any]:
    """Revenue per day, one series per channel and currency, in major units."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    slots = [today - DAY * (span - 1 - i) for i in range(span)]
    index = {slot: i for i, slot in enumerate(slots)}
    series: dict[str, list[float]] = {}
    for day, provider, currency, amount, _ in days:
        if day in index:
            name = f"{provider} {currency.upper()}"
            series.setdefault(name, [0.0] * span)[index[day]] += major_units(amount, currency)
    return {"x": [int(slot.timestamp()) for slot in slots], "series": series}


@dataclass(frozen=True)
class Bar:
    """One grant on the timeline: where its window falls, in percent of the width."""

    grant_id: str
    entitlement: str
    label: str
    left: float
    width: float
    row: int
    revoked: bool
    open_ended: bool


def timeline(grants: list[dict[str, Any]], now: datetime) -> tuple[list[Bar], datetime, datetime]:
    """Grants as bars on one time axis, one row per entitlement, stacked end to end as the
    service stacked them. Lifetime grants run to the right edge."""
    windows = [g for g in grants if g["starts_at"] is not None]
    if not windows:
        return [], now, now
    start = min(g["starts_at"] for g in windows)
    ends = [g["ends_at"] for g in windows if g["ends_at"] is not None]
    end = max([*ends, now]) + DAY
    span = (end - start).total_seconds() or 1.0
    rows: dict[str, int] = {}
    bars = []
    for grant in windows:
        row = rows.setdefault(grant["entitlement"], len(rows))
        grant_end = grant["ends_at"] or end
        left = (grant["starts_at"] - start).total_seconds() / span * 100
        width = max(0.5, (grant_end - grant["starts_at"]).total_seconds() / span * 100)
        bars.append(
            Bar(
                grant_id=grant["grant_id"],
                entitlement=grant["entitlement"],
                label=f"{grant['provider']}:{grant['reference']}",
                left=round(left, 3),
                width=round(min(width, 100 - left), 3),
                row=row,
                revoked=grant["revoked"],
                open_ended=grant["ends_at"] is None,
            )
        )
    return bars, start, end


def pretty_payload(payload: bytes) -> str:
    """A payload for reading: indented JSON when it is JSON, else the text as received."""
    text = payload.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return text


def downsample(
    times: list[int], equity: list[float], drawdown: list[float], most: int
) -> dict[str, list[float] | list[int]]:
    """At most `most` points for a chart: per bucket of neighbours, the one with the deepest
    drawdown, so no dip an operator must see is averaged away."""
    if len(times) <= most:
        return {"x": times, "equity": equity, "drawdown": drawdown}
    size = -(-len(times) // most)  # ceiling division
    picked = [
        max(range(start, min(start + size, len(times))), key=lambda i: drawdown[i])
        for start in range(0, len(times), size)
    ]
    return {
        "x": [times[i] for i in picked],
        "equity": [equity[i] for i in picked],
        "drawdown": [drawdown[i] for i in picked],
    }
