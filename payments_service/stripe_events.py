"""Stripe events to intents: routing and attribution (who paid, what was bought), pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from paylayer.catalogue import Catalogue, Sku
from payments_service.intents import (
    Grant,
    Ignore,
    Intent,
    Payer,
    Record,
    Revoke,
    SubscriptionState,
    Unprocessable,
    shown,
)

PROVIDER = "stripe"

GRANTING = {
    "charge.succeeded",
    "payment_intent.succeeded",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
}


# Beyond these a timestamp is nonsense (and datetime would raise): treat it as absent.
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TIMESTAMP:
        return datetime.fromtimestamp(value, UTC)
    return None


def _text(value: Any) -> str | None:
    # Expanded objects ({"id": ...}) appear where an id is usual; accept both.
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    """An amount: a non-negative int64, else 0 (Stripe never sends more)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return 0


def payment_key(obj: dict[str, Any]) -> str:
    """One purchase, one key: its payment intent when there is one, else the charge."""
    if obj.get("object") == "payment_intent":
        key = _text(obj.get("id"))
    else:
        key = _text(obj.get("payment_intent")) or _text(
            obj.get("charge") if obj.get("object") == "dispute" else obj.get("id")
        )
    if not key:
        raise Unprocessable(f"{obj.get('object', 'object')} has no payment intent or charge id")
    return key


def _metadata(*sources: Any) -> dict[str, str]:
    merged: dict[str, str] = {}
    for source in sources:
        if isinstance(source, dict):
            for key, value in source.items():
                if isinstance(value, str) and value and key not in merged:
                    merged[key] = value
    return merged


def _telegram_id(text: str) -> int | None:
    """A Telegram user id: plain ASCII digits, positive, and small enough for an int64."""
    if text.isascii() and text.isdigit() and len(text) <= 18 and int(text) > 0:
        return int(text)
    return None


def payer(obj: dict[str, Any], metadata: dict[str, str]) -> Payer:
    """`metadata.user_id`, else `metadata.telegram_user_id`, else `client_reference_id`, else
    a customer already linked to a user."""
    customer = _text(obj.get("customer"))
    if metadata.get("user_id"):
        return Payer(user_id=metadata["user_id"], customer=customer)
    telegram_user_id = metadata.get("telegram_user_id", "").strip()
    if telegram_user_id:
        if _telegram_id(telegram_user_id) is None:
            raise Unprocessable(
                f"metadata.telegram_user_id is not a Telegram id: {shown(telegram_user_id)}"
            )
        return Payer(telegram_user_id=_telegram_id(telegram_user_id), customer=customer)
    reference = obj.get("client_reference_id")
    if isinstance(reference, str) and reference.strip():
        reference = reference.strip()
        # The Mini App puts the buyer's Telegram id here; other integrations put our user id.
        if _telegram_id(reference) is not None:
            return Payer(telegram_user_id=_telegram_id(reference), customer=customer)
        return Payer(user_id=reference, customer=customer)
    if customer:
        return Payer(customer=customer)
    raise Unprocessable(
        "cannot tell who paid: no metadata.user_id, metadata.telegram_user_id, "
        "client_reference_id or customer"
    )


def sku(catalogue: Catalogue, metadata: dict[str, str], amount: int, currency: str) -> Sku:
    """`metadata.sku`, else the one catalogue sku with this Stripe price."""
    named = metadata.get("sku")
    if named:
        if named not in catalogue.skus:
            raise Unprocessable(f"unknown sku {shown(named)}")
        return catalogue.skus[named]
    matched = catalogue.sku_for_stripe_price(amount, currency)
    if matched is None:
        raise Unprocessable(
            f"cannot tell what was bought: no metadata.sku and no sku priced {amount} {currency}"
        )
    return matched


def _grant(
    catalogue: Catalogue,
    obj: dict[str, Any],
    key: str,
    amount: int,
    purchased_at: datetime,
    until: datetime | None = None,
    subscription_id: str | None = None,
    extra_metadata: tuple[Any, ...] = (),
) -> Grant:
    metadata = _metadata(obj.get("metadata"), *extra_metadata)
    currency = str(obj.get("currency") or "").lower()
    return Grant(
        provider=PROVIDER,
        payment_key=key,
        payer=payer(obj, metadata),
        sku=sku(catalogue, metadata, amount, currency),
        purchased_at=purchased_at,
        amount=amount,
        currency=currency,
        until=until,
        subscription_id=subscription_id,
    )


def _dict(value: Any) -> dict[str, Any]:
    """Nested objects as Stripe sends them; anything else (a bad or future shape) as empty."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict[str, Any]]:
    data = _dict(value).get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _invoice_paid(catalogue: Catalogue, obj: dict[str, Any], created: datetime) -> Intent:
    lines = _list(obj.get("lines"))
    ends = [_timestamp(_dict(line.get("period")).get("end")) for line in lines]
    until = max((end for end in ends if end), default=None)
    if until is None:
        raise Unprocessable("invoice has no line with a period end")
    # Newer API versions moved the subscription under `parent`; older ones keep it on top.
    subscription_details = _dict(_dict(obj.get("parent")).get("subscription_details")) or _dict(
        obj.get("subscription_details")
    )
    subscription_id = _text(obj.get("subscription")) or _text(
        subscription_details.get("subscription")
    )
    first_line = lines[0] if lines else {}
    amount = (
        _int(_dict(first_line.get("price")).get("unit_amount"))
        or _int(first_line.get("amount"))
        or _int(obj.get("amount_paid"))
    )
    # The invoice's payment intent keys it like the charge that paid it: one purchase, one grant.
    intent_of_payment = next(
        (_text(_dict(p.get("payment")).get("payment_intent")) for p in _list(obj.get("payments"))),
        None,
    )
    key = _text(obj.get("payment_intent")) or intent_of_payment or _text(obj.get("id"))
    if not key:
        raise Unprocessable("invoice has no id")
    return _grant(
        catalogue,
        obj,
        key,
        amount,
        purchased_at=_timestamp(_dict(obj.get("status_transitions")).get("paid_at")) or created,
        until=until,
        subscription_id=subscription_id,
        extra_metadata=(subscription_details.get("metadata"), first_line.get("metadata")),
    )


def interpret(event: dict[str, Any], catalogue: Catalogue) -> Intent:
    """What this verified Stripe event means. Raises Unprocessable when it cannot be told."""
    event_type = event.get("type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_type, str) or not isinstance(obj, dict):
        raise Unprocessable("not a Stripe event: type or data.object missing")
    created = (
        _timestamp(obj.get("created")) or _timestamp(event.get("created")) or datetime.now(UTC)
    )

    if event_type in GRANTING:
        if event_type.startswith("checkout.session."):
            if obj.get("mode") == "subscription":
                return Ignore("subscription checkout: its invoice.paid grants")
            if obj.get("payment_status") != "paid":
                return Record(
                    PROVIDER,
                    payment_key(obj),
                    "awaiting_payment",
                    _int(obj.get("amount_total")),
                    str(obj.get("currency") or ""),
                )
            return _grant(catalogue, obj, payment_key(obj), _int(obj.get("amount_total")), created)
        if event_type == "charge.succeeded" and _text(obj.get("invoice")):
            return Ignore("charge of an invoice: its invoice.paid grants")
        amount = _int(obj.get("amount_received")) or _int(obj.get("amount"))
        return _grant(catalogue, obj, payment_key(obj), amount, created)
    if event_type == "invoice.paid":
        return _invoice_paid(catalogue, obj, created)
    if event_type == "charge.failed":
        return Record(
            PROVIDER,
            payment_key(obj),
            "failed",
            _int(obj.get("amount")),
            str(obj.get("currency") or ""),
        )
    if event_type == "charge.refunded":
        amount, refunded = _int(obj.get("amount")), _int(obj.get("amount_refunded"))
        if obj.get("refunded") is True or (amount and refunded >= amount):
            return Revoke(PROVIDER, payment_key(obj), "refunded", refunded)
        return Record(
            PROVIDER,
            payment_key(obj),
            "partially_refunded",
            amount,
            str(obj.get("currency") or ""),
            refunded,
        )
    if event_type == "charge.dispute.created":
        return Revoke(PROVIDER, payment_key(obj), "disputed")
    if event_type == "customer.subscription.deleted":
        subscription_id = _text(obj.get("id"))
        if not subscription_id:
            raise Unprocessable("subscription has no id")
        return SubscriptionState(PROVIDER, subscription_id, "canceled")
    return Ignore(f"{event_type} is not acted on")
