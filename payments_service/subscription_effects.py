"""What a subscription change does, inside the processor's unit of work (on its ledger): the
merged state, a grace grant while a renewal is past due, and access cut short when the
subscription ended.

Exactly once and any order: every change and every paid period of one subscription takes the
subscription's lock first, so the state read here is the one the other events left; grants and
revokes are idempotent by source (a grace grant is keyed by the period it follows), and a
period paid after the subscription ended is granted only up to that end.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from payments_service import subscriptions
from payments_service.downstream import Downstream
from payments_service.intents import Grant, SubscriptionChange
from payments_service.store import Ledger

ENDED_REASON = "subscription ended"


def _state(row: dict[str, Any] | None) -> subscriptions.State | None:
    if row is None:
        return None
    return subscriptions.State(
        status=row["status"],
        observed_at=row["observed_at"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"]
        if "cancel_at_period_end" in row["stated"]
        else None,
        canceled_at=row["canceled_at"],
        ended_at=row["ended_at"],
        stated=tuple(
            (name, datetime.fromtimestamp(float(when), UTC)) for name, when in row["stated"].items()
        ),
    )


async def _merge(
    ledger: Ledger, change: SubscriptionChange, user_id: str
) -> tuple[subscriptions.State | None, subscriptions.State]:
    """Lock the subscription, merge the change into what is stored, write it back."""
    await ledger.lock_payment(change.provider, f"subscription:{change.subscription_id}")
    stored = _state(await ledger.subscription_row(change.provider, change.subscription_id))
    merged = subscriptions.merge(change.provider, stored, change)
    await ledger.save_subscription(
        change.provider,
        change.subscription_id,
        {
            "user_id": user_id,
            "sku": change.sku.name,
            "status": merged.status,
            "current_period_start": merged.current_period_start,
            "current_period_end": merged.current_period_end,
            "cancel_at_period_end": bool(merged.cancel_at_period_end),
            "canceled_at": merged.canceled_at,
            "ended_at": merged.ended_at,
            "observed_at": merged.observed_at,
            "stated": {name: when.timestamp() for name, when in merged.stated},
        },
    )
    # The ledger's own column, which ListPayments shows.
    await ledger.set_subscription_state(change.provider, change.subscription_id, merged.status)
    return stored, merged


async def apply_change(
    ledger: Ledger,
    downstream: Downstream,
    change: SubscriptionChange,
    event_ref: str,
) -> str:
    """Merge the change and act on it; the subscriber's user id."""
    user_id = await downstream.resolve_payer(change.payer)
    stored, merged = await _merge(ledger, change, user_id)
    grace_from = change.grace_from
    if grace_from is None and change.status == "past_due" and stored is not None:
        # A Stars renewal that failed says no period: the paid one is the last one stored.
        grace_from = stored.current_period_end
    if grace_from is not None:
        await _grant_grace(downstream, change, user_id, grace_from, merged.ended_at, event_ref)
    if merged.ended_at is not None:
        await _cut(ledger, downstream, change, user_id, merged.ended_at, event_ref)
    return user_id


async def _grant_grace(
    downstream: Downstream,
    change: SubscriptionChange,
    user_id: str,
    paid_until: datetime,
    ended_at: datetime | None,
    event_ref: str,
) -> None:
    until = subscriptions.grace_until(change.sku, paid_until, ended_at)
    if until is None:
        return
    await downstream.grant(
        user_id=user_id,
        sku=change.sku,
        provider=change.provider,
        payment_key=subscriptions.grace_key(change.subscription_id, paid_until),
        event_id=event_ref,
        purchased_at=paid_until,
        until=until,
    )


async def _cut(
    ledger: Ledger,
    downstream: Downstream,
    change: SubscriptionChange,
    user_id: str,
    ended_at: datetime,
    event_ref: str,
) -> None:
    """Revoke every grant of this subscription that runs past its end (an immediate cancel,
    or a past-due one that was given up on). Periods that end by then keep their time."""
    keys = set(await ledger.subscription_payment_keys(change.provider, change.subscription_id))
    grace_prefix = f"{change.subscription_id}:grace:"
    for grant in await downstream.grants_of(user_id):
        reference = grant.source.reference
        if grant.source.provider != change.provider or not (
            reference in keys or reference.startswith(grace_prefix)
        ):
            continue
        if grant.HasField("until") and grant.until.ToDatetime(tzinfo=UTC) > ended_at:
            await downstream.revoke(
                provider=change.provider,
                payment_key=reference,
                event_id=event_ref,
                reason=ENDED_REASON,
            )


async def before_grant(
    ledger: Ledger, downstream: Downstream, intent: Grant, event_ref: str
) -> Grant:
    """A paid subscription period (invoice.paid, a recurring Stars payment): note it on the
    subscription, and never grant past the moment the subscription ended."""
    if intent.subscription_id is None or intent.until is None:
        return intent
    change = subscriptions.from_renewal_payment(
        intent.provider,
        intent.subscription_id,
        intent.purchased_at,
        intent.until,
        intent.payer,
        intent.sku,
    )
    user_id = await downstream.resolve_payer(intent.payer)
    _, merged = await _merge(ledger, change, user_id)
    if merged.ended_at is None or intent.until <= merged.ended_at:
        return intent
    if merged.ended_at > intent.purchased_at:
        return replace(intent, until=merged.ended_at)
    # Paid for a period that starts after the end: a tombstone, so the grant stays revoked.
    await downstream.revoke(
        provider=intent.provider,
        payment_key=intent.payment_key,
        event_id=event_ref,
        reason=ENDED_REASON,
    )
    return intent
