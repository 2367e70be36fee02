"""Subscription rules, pure: what an event says about a subscription, and which state wins.

Subscription events arrive in any order, and Stripe sends no "updated at" on its objects, so
each change carries when it was observed (the event's `created`). The rules:

- each field is decided by the newest change that states it (None states nothing), so a
  change arriving late changes only what nothing newer has said;
- a Stripe subscription that has ended (`canceled`, `incomplete_expired`) stays ended: no
  later-processed change of an older or newer time brings it back (Stripe never does);
- `ended_at` once known is kept (the earliest one seen): access never runs past it;
- a renewal past due keeps access `grace_days` past the end of the last paid period, as a grant
  of its own keyed by that period's end, so a failed payment retried five times grants once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from paylayer.catalogue import Sku
from payments_service.intents import Payer, SubscriptionChange, Unprocessable

# Stripe statuses after which a subscription never runs again.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
STRIPE_STATUSES = frozenset(
    {"incomplete", "incomplete_expired", "trialing", "active", "past_due", "unpaid", "paused"}
    | FINAL_STATUSES
)
# Beyond these a timestamp is nonsense (and datetime would raise): treat it as absent.
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31


def from_epoch(value: Any) -> datetime | None:
    """A provider's Unix time (whole seconds) as a datetime; None when absent or nonsense."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TIMESTAMP:
        return datetime.fromtimestamp(value, UTC)
    return None


def _items(obj: dict[str, Any]) -> list[dict[str, Any]]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def current_period(obj: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The period a Stripe subscription is in: on the subscription up to API 2025-03-31.basil,
    on each subscription item from basil on (the latest end of them counts)."""
    start, end = (
        from_epoch(obj.get("current_period_start")),
        from_epoch(obj.get("current_period_end")),
    )
    if end is None:
        items = _items(obj)
        ends = [e for e in (from_epoch(i.get("current_period_end")) for i in items) if e]
        starts = [s for s in (from_epoch(i.get("current_period_start")) for i in items) if s]
        end = max(ends, default=None)
        start = start or max(starts, default=None)
    return start, end


def item_prices(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The prices a subscription's items bill, for telling the sku when metadata does not."""
    prices = [item.get("price") or item.get("plan") for item in _items(obj)]
    return [price for price in prices if isinstance(price, dict)]


def from_stripe_subscription(
    event_type: str, obj: dict[str, Any], observed_at: datetime, payer: Payer, sku: Sku
) -> SubscriptionChange:
    """customer.subscription.created|updated|deleted as a change of state."""
    subscription_id = obj.get("id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise Unprocessable("subscription has no id")
    status = obj.get("status")
    if event_type == "customer.subscription.deleted":
        status = "canceled"
    if status not in STRIPE_STATUSES:
        raise Unprocessable(f"unknown subscription status {str(status)[:40]!r}")
    start, end = current_period(obj)
    cancel_at = from_epoch(obj.get("cancel_at"))
    # Newer API versions may say "cancel at the period end" as a cancel_at equal to it.
    at_period_end = obj.get("cancel_at_period_end") is True or (
        cancel_at is not None and cancel_at == end
    )
    ended_at = None
    if status in FINAL_STATUSES:
        ended_at = (
            from_epoch(obj.get("ended_at")) or from_epoch(obj.get("canceled_at")) or observed_at
        )
    return SubscriptionChange(
        provider="stripe",
        subscription_id=subscription_id,
        observed_at=observed_at,
        payer=payer,
        sku=sku,
        status=status,
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=at_period_end,
        canceled_at=from_epoch(obj.get("canceled_at")),
        ended_at=ended_at,
        # Stripe has already moved a past-due subscription into the unpaid period: the paid
        # one ended where this one starts.
        grace_from=start if status == "past_due" else None,
    )


def from_failed_invoice(
    subscription_id: str,
    obj: dict[str, Any],
    period_starts: list[datetime],
    observed_at: datetime,
    payer: Payer,
    sku: Sku,
) -> SubscriptionChange:
    """invoice.payment_failed of a subscription: its renewal is past due. The first invoice of
    a subscription failing leaves it incomplete: nothing was paid, so there is no grace."""
    if obj.get("billing_reason") == "subscription_create":
        return SubscriptionChange(
            "stripe", subscription_id, observed_at, payer, sku, status="incomplete"
        )
    return SubscriptionChange(
        "stripe",
        subscription_id,
        observed_at,
        payer,
        sku,
        status="past_due",
        grace_from=min(period_starts, default=None),
    )


def from_stars_update(
    subscription_id: str, state: str, observed_at: datetime, payer: Payer, sku: Sku
) -> SubscriptionChange:
    """A Stars `subscription` update. A canceled Stars subscription runs to its period end and
    may be resumed until then (editUserStarSubscription), so it is never final here."""
    if state == "canceled":
        return SubscriptionChange(
            "telegram",
            subscription_id,
            observed_at,
            payer,
            sku,
            status="canceled",
            cancel_at_period_end=True,
        )
    if state == "failed":
        # The renewal could not be charged: grace runs from the paid period's end (known from
        # the last payment, so left to whoever holds the stored state).
        return SubscriptionChange(
            "telegram", subscription_id, observed_at, payer, sku, status="past_due"
        )
    return SubscriptionChange(
        "telegram",
        subscription_id,
        observed_at,
        payer,
        sku,
        status="active",
        cancel_at_period_end=False,
    )


def from_renewal_payment(
    provider: str,
    subscription_id: str,
    paid_at: datetime,
    paid_until: datetime,
    payer: Payer,
    sku: Sku,
) -> SubscriptionChange:
    """A paid period (Stripe invoice.paid, a recurring Stars payment): active until its end."""
    return SubscriptionChange(
        provider,
        subscription_id,
        paid_at,
        payer,
        sku,
        status="active",
        current_period_end=paid_until,
    )


# The fields a change may state, each kept with the time of the change that stated it.
FIELDS = (
    "status",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "canceled_at",
)


@dataclass(frozen=True)
class State:
    """A subscription as stored: the merge of every change seen so far."""

    status: str
    observed_at: datetime
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    # Per field, when the change that set it was observed: what a later-arriving change of an
    # earlier time is compared with, so the order of arrival never matters.
    stated: tuple[tuple[str, datetime], ...] = ()


def _final(provider: str, status: str | None) -> bool:
    return provider == "stripe" and status in FINAL_STATUSES


def merge(provider: str, stored: State | None, change: SubscriptionChange) -> State:
    """The state after `change`, whatever order the changes come in (see the module doc)."""
    stated = dict(stored.stated) if stored is not None else {}
    values: dict[str, Any] = {}
    for name in FIELDS:
        new, old = getattr(change, name), getattr(stored, name, None)
        when = stated.get(name)
        if new is not None and (when is None or change.observed_at >= when):
            values[name], stated[name] = new, change.observed_at
        else:
            values[name] = old
    if (
        stored is not None
        and _final(provider, stored.status)
        and not _final(provider, change.status)
    ):
        values["status"] = stored.status
    elif _final(provider, change.status):
        values["status"] = change.status
    ended = [m for m in (getattr(stored, "ended_at", None), change.ended_at) if m is not None]
    observed = [m for m in (getattr(stored, "observed_at", None), change.observed_at) if m]
    return State(
        status=values["status"] or "active",
        observed_at=max(observed),
        current_period_start=values["current_period_start"],
        current_period_end=values["current_period_end"],
        cancel_at_period_end=values["cancel_at_period_end"],
        canceled_at=values["canceled_at"],
        ended_at=min(ended, default=None),
        stated=tuple(sorted(stated.items())),
    )


def grace_key(subscription_id: str, paid_until: datetime) -> str:
    """The source of a grace grant: one per subscription and unpaid period."""
    return f"{subscription_id}:grace:{int(paid_until.timestamp())}"


def grace_until(sku: Sku, paid_until: datetime, ended_at: datetime | None) -> datetime | None:
    """Where a grace period ends, or None when it would cover nothing."""
    until = paid_until + timedelta(days=sku.grace_days)
    if ended_at is not None:
        until = min(until, ended_at)
    return until if until > paid_until else None


def bounded(until: datetime, ended_at: datetime | None) -> datetime:
    """A paid period's end, never past the moment the subscription ended."""
    return until if ended_at is None else min(until, ended_at)
