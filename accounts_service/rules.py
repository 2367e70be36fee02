"""The accounts domain, with no I/O: drawdown over snapshots, and the cap on linked accounts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from paylayer.catalogue import Catalogue

# A bridge's clock may run a little ahead of ours; further ahead, a snapshot would block every
# real one after it (only newer snapshots apply), so it is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Snapshot:
    """What an MT5 bridge reports about one account at one moment."""

    time: datetime
    balance: float
    equity: float
    margin: float
    free_margin: float
    margin_level: float
    currency: str
    leverage: int


@dataclass(frozen=True)
class DrawdownState:
    """What is kept between snapshots; the drawdowns are fractions (0.25 is 25%)."""

    peak_equity: float | None = None
    drawdown: float = 0.0
    max_drawdown: float = 0.0


def snapshot_problem(snapshot: Snapshot, now: datetime) -> str | None:
    """Why a bridge's snapshot cannot be stored, or None when it can."""
    numbers = {
        "balance": snapshot.balance,
        "equity": snapshot.equity,
        "margin": snapshot.margin,
        "free_margin": snapshot.free_margin,
        "margin_level": snapshot.margin_level,
    }
    for name, value in numbers.items():
        if not math.isfinite(value):
            return f"{name} must be a finite number"
    # Free margin is equity minus margin and may go below zero; the others cannot.
    for name in ("balance", "equity", "margin", "margin_level"):
        if numbers[name] < 0:
            return f"{name} must not be negative"
    if snapshot.leverage < 0:
        return "leverage must not be negative"
    if snapshot.time > now + MAX_CLOCK_SKEW:
        return "snapshot time is in the future"
    return None


def server_key(server: str) -> str:
    """A server name as MT5 compares it: `Audit-Live` and ` audit-live ` are one server."""
    return server.strip().lower()


def drawdown_from_peak(peak_equity: float, equity: float) -> float:
    """(peak - equity) / peak; an account that never held equity has nothing to draw down."""
    if peak_equity <= 0:
        return 0.0
    return max(0.0, (peak_equity - equity) / peak_equity)


def after_snapshot(state: DrawdownState, equity: float) -> DrawdownState:
    """The drawdown state once a newer snapshot with this equity is taken in."""
    peak = equity if state.peak_equity is None else max(state.peak_equity, equity)
    drawdown = drawdown_from_peak(peak, equity)
    return DrawdownState(
        peak_equity=peak, drawdown=drawdown, max_drawdown=max(state.max_drawdown, drawdown)
    )


def is_newer(snapshot_time: datetime, stored_time: datetime | None) -> bool:
    """Only a strictly newer snapshot applies, so a repeat or a late one never goes backwards."""
    return stored_time is None or snapshot_time > stored_time


def account_cap(catalogue: Catalogue, active_tiers: set[str]) -> int:
    """How many MT5 accounts a user may have active, given the tiers they hold now."""
    return catalogue.max_accounts(active_tiers)


def may_link_another(linked_count: int, cap: int) -> bool:
    return linked_count < cap


def suspended_flags(linked_count: int, cap: int) -> Sequence[bool]:
    """For links in link order (oldest first): the oldest `cap` stay active, the rest wait.

    Nothing is deleted when a tier ends, so the flags are worked out afresh on every read and
    the same accounts come back the moment the tier does.
    """
    return [position >= cap for position in range(linked_count)]


def is_suspended(older_links: int, cap: int) -> bool:
    """One account's flag, knowing only how many of its owner's links are older than it."""
    return older_links >= cap


def history_minute(snapshot_time: datetime) -> datetime:
    """The minute a snapshot's history point belongs to: one point a minute per account, the
    first applied snapshot of the minute (later ones that minute change only the latest)."""
    return snapshot_time.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class HistoryPoint:
    """One point of an account's chart."""

    time: datetime
    balance: float
    equity: float
    drawdown: float


@dataclass(frozen=True)
class User:
    user_id: str
    telegram_user_id: int | None
    stripe_customer_id: str | None
    email: str | None
    created_at: datetime


@dataclass(frozen=True)
class LinkedAccount:
    """An MT5 account as stored; whether it is suspended depends on the cap at read time."""

    login: int
    server: str
    user_id: str
    account_type: str
    broker: str
    label: str
    linked_at: datetime
    snapshot: Snapshot | None
    drawdown: DrawdownState
