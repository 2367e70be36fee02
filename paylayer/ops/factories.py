"""Realistic provider payloads: Stripe events (and their signature) and Telegram updates.

`paylayer trigger` posts these, and the tests and benchmarks send them, so all three speak one
dialect. Shapes follow Stripe's API objects and Telegram's Bot API updates.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import stripe

from paylayer.catalogue import Catalogue

STRIPE_API_VERSION = "2024-06-20"
_update_ids = itertools.count(int(time.time() * 1000) % 1_000_000_000)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def sign_stripe(body: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send for this body."""
    return str(stripe.WebhookSignature.generate_signature_header(body, secret, timestamp))


@dataclass(frozen=True)
class _Purchase:
    """What every Stripe object of one purchase shares."""

    now: int
    price: int
    currency: str
    metadata: dict[str, str]
    customer: str | None
    payment_intent: str
    charge: str
    telegram_user_id: int | None
    subscription: str | None
    period_end: int | None
    amount_refunded: int | None


def stripe_event(
    event_type: str,
    catalogue: Catalogue,
    *,
    sku: str | None = None,
    telegram_user_id: int | None = None,
    user_id: str | None = None,
    customer: str | None = None,
    payment_intent: str | None = None,
    charge: str | None = None,
    amount: int | None = None,
    amount_refunded: int | None = None,
    created: int | None = None,
    period_end: int | None = None,
    subscription: str | None = None,
    event_id: str | None = None,
    currency: str | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """A Stripe event of `event_type`, attributed through metadata as our checkout sets it."""
    product = catalogue.skus[sku] if sku else None
    listed = product.stripe_prices[0] if product and product.stripe_prices else None
    metadata: dict[str, str] = {}
    if sku:
        metadata["sku"] = sku
    if telegram_user_id is not None:
        metadata["telegram_user_id"] = str(telegram_user_id)
    if user_id:
        metadata["user_id"] = user_id
    purchase = _Purchase(
        now=created or int(time.time()),
        price=amount if amount is not None else (listed.amount if listed else 2900),
        currency=currency or (listed.currency if listed else "usd"),
        metadata=metadata,
        customer=customer,
        payment_intent=payment_intent or _id("pi"),
        charge=charge or _id("ch"),
        telegram_user_id=telegram_user_id,
        subscription=subscription,
        period_end=period_end,
        amount_refunded=amount_refunded,
    )
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": purchase.now,
        "data": {"object": _stripe_object(event_type, purchase)},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": _id("req"), "idempotency_key": secrets.token_hex(8)},
        "type": event_type,
    }


def _stripe_object(event_type: str, p: _Purchase) -> dict[str, Any]:
    """The `data.object` an event of this type carries."""
    if event_type in ("charge.succeeded", "charge.captured"):
        return _charge(p)
    if event_type == "charge.failed":
        return {
            **_charge(p),
            "status": "failed",
            "paid": False,
            "captured": False,
            "amount_captured": 0,
            "failure_code": "card_declined",
            "failure_message": "Your card was declined.",
        }
    if event_type == "charge.refunded":
        refunded = p.price if p.amount_refunded is None else p.amount_refunded
        return {**_charge(p), "amount_refunded": refunded, "refunded": refunded >= p.price}
    if event_type == "payment_intent.succeeded":
        return _payment_intent(p)
    if event_type.startswith("checkout.session."):
        return _checkout_session(p, paid=not event_type.endswith("async_payment_failed"))
    if event_type.startswith("charge.dispute."):
        return _dispute(p)
    if event_type == "invoice.paid":
        return _invoice(p)
    if event_type == "customer.subscription.deleted":
        return {
            "id": p.subscription or _id("sub"),
            "object": "subscription",
            "customer": p.customer,
            "metadata": p.metadata,
            "status": "canceled",
            "canceled_at": p.now,
        }
    return {
        "id": _id("obj"),
        "object": event_type.split(".")[0],
        "created": p.now,
        "metadata": p.metadata,
    }


def _charge(p: _Purchase) -> dict[str, Any]:
    return {
        "id": p.charge,
        "object": "charge",
        "amount": p.price,
        "amount_captured": p.price,
        "amount_refunded": 0,
        "captured": True,
        "created": p.now,
        "currency": p.currency,
        "customer": p.customer,
        "description": None,
        "invoice": None,
        "livemode": False,
        "metadata": p.metadata,
        "paid": True,
        "payment_intent": p.payment_intent,
        "payment_method": _id("pm"),
        "refunded": False,
        "status": "succeeded",
    }


def _payment_intent(p: _Purchase) -> dict[str, Any]:
    return {
        "id": p.payment_intent,
        "object": "payment_intent",
        "amount": p.price,
        "amount_received": p.price,
        "created": p.now,
        "currency": p.currency,
        "customer": p.customer,
        "latest_charge": p.charge,
        "livemode": False,
        "metadata": p.metadata,
        "status": "succeeded",
    }


def _checkout_session(p: _Purchase, *, paid: bool) -> dict[str, Any]:
    return {
        "id": _id("cs_test"),
        "object": "checkout.session",
        "amount_subtotal": p.price,
        "amount_total": p.price,
        "client_reference_id": (
            str(p.telegram_user_id) if p.telegram_user_id is not None else None
        ),
        "created": p.now,
        "currency": p.currency,
        "customer": p.customer,
        "livemode": False,
        "metadata": p.metadata,
        "mode": "payment",
        "payment_intent": p.payment_intent,
        "payment_status": "paid" if paid else "unpaid",
        "status": "complete",
        "subscription": None,
    }


def _dispute(p: _Purchase) -> dict[str, Any]:
    return {
        "id": _id("dp"),
        "object": "dispute",
        "amount": p.price,
        "charge": p.charge,
        "created": p.now,
        "currency": p.currency,
        "payment_intent": p.payment_intent,
        "reason": "fraudulent",
        "status": "needs_response",
    }


def _invoice(p: _Purchase) -> dict[str, Any]:
    line = {
        "id": _id("il"),
        "object": "line_item",
        "amount": p.price,
        "currency": p.currency,
        "metadata": p.metadata,
        "period": {"start": p.now, "end": p.period_end or p.now + 30 * 24 * 3600},
        "price": {
            "id": _id("price"),
            "object": "price",
            "unit_amount": p.price,
            "currency": p.currency,
        },
    }
    return {
        "id": _id("in"),
        "object": "invoice",
        "amount_due": p.price,
        "amount_paid": p.price,
        "created": p.now,
        "currency": p.currency,
        "customer": p.customer,
        "livemode": False,
        "metadata": {},
        "payment_intent": p.payment_intent,
        "status": "paid",
        "status_transitions": {"paid_at": p.now},
        "subscription": p.subscription or _id("sub"),
        "subscription_details": {"metadata": p.metadata},
        "lines": {"object": "list", "data": [line], "has_more": False},
    }


def _telegram_user(telegram_user_id: int) -> dict[str, Any]:
    return {"id": telegram_user_id, "is_bot": False, "first_name": "Test", "language_code": "en"}


def telegram_update(
    kind: str,
    catalogue: Catalogue,
    *,
    telegram_user_id: int,
    sku: str,
    charge_id: str | None = None,
    total_amount: int | None = None,
    currency: str = "XTR",
    payload: str | None = None,
    recurring_until: int | None = None,
    first_recurring: bool = False,
    update_id: int | None = None,
    state: str = "active",
) -> dict[str, Any]:
    """A Bot API Update: pre_checkout_query, successful_payment, refunded_payment, subscription."""
    product = catalogue.skus.get(sku)
    amount = total_amount if total_amount is not None else (product.stars if product else 1) or 0
    invoice_payload = payload if payload is not None else f"{sku}:{secrets.token_hex(4)}"
    user = _telegram_user(telegram_user_id)
    update: dict[str, Any] = {
        "update_id": update_id if update_id is not None else next(_update_ids)
    }
    chat = {"id": telegram_user_id, "type": "private", "first_name": "Test"}
    if kind == "pre-checkout":
        update["pre_checkout_query"] = {
            "id": str(secrets.randbelow(10**18)),
            "from": user,
            "currency": currency,
            "total_amount": amount,
            "invoice_payload": invoice_payload,
        }
    elif kind == "payment":
        payment: dict[str, Any] = {
            "currency": currency,
            "total_amount": amount,
            "invoice_payload": invoice_payload,
            "telegram_payment_charge_id": charge_id or f"stxt{secrets.token_hex(16)}",
            "provider_payment_charge_id": "",
        }
        if recurring_until is not None:
            payment.update(
                is_recurring=True,
                is_first_recurring=first_recurring,
                subscription_expiration_date=recurring_until,
            )
        update["message"] = {
            "message_id": secrets.randbelow(10**6),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "successful_payment": payment,
        }
    elif kind == "refund":
        update["message"] = {
            "message_id": secrets.randbelow(10**6),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "refunded_payment": {
                "currency": currency,
                "total_amount": amount,
                "invoice_payload": invoice_payload,
                "telegram_payment_charge_id": charge_id or "",
            },
        }
    elif kind == "subscription":
        update["subscription"] = {"user": user, "invoice_payload": invoice_payload, "state": state}
    else:
        raise ValueError(f"unknown update kind {kind}")
    return update
