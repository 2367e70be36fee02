"""Realistic provider payloads: Stripe events (and their signature) and Telegram updates.

`paylayer trigger` posts these, and the tests and benchmarks send them, so all three speak one
dialect. Shapes follow Stripe's API objects and Telegram's Bot API updates.
"""

from __future__ import annotations

import itertools
import secrets
import time
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
    now = created or int(time.time())
    product = catalogue.skus[sku] if sku else None
    listed = product.stripe_prices[0] if product and product.stripe_prices else None
    price = amount if amount is not None else (listed.amount if listed else 2900)
    currency = currency or (listed.currency if listed else "usd")
    metadata: dict[str, str] = {}
    if sku:
        metadata["sku"] = sku
    if telegram_user_id is not None:
        metadata["telegram_user_id"] = str(telegram_user_id)
    if user_id:
        metadata["user_id"] = user_id
    payment_intent = payment_intent or _id("pi")
    charge = charge or _id("ch")
    charge_object = {
        "id": charge,
        "object": "charge",
        "amount": price,
        "amount_captured": price,
        "amount_refunded": 0,
        "captured": True,
        "created": now,
        "currency": currency,
        "customer": customer,
        "description": None,
        "invoice": None,
        "livemode": False,
        "metadata": metadata,
        "paid": True,
        "payment_intent": payment_intent,
        "payment_method": _id("pm"),
        "refunded": False,
        "status": "succeeded",
    }
    obj: dict[str, Any]
    if event_type in ("charge.succeeded", "charge.captured"):
        obj = charge_object
    elif event_type == "charge.failed":
        obj = {
            **charge_object,
            "status": "failed",
            "paid": False,
            "captured": False,
            "amount_captured": 0,
            "failure_code": "card_declined",
            "failure_message": "Your card was declined.",
        }
    elif event_type == "charge.refunded":
        refunded = price if amount_refunded is None else amount_refunded
        obj = {**charge_object, "amount_refunded": refunded, "refunded": refunded >= price}
    elif event_type == "payment_intent.succeeded":
        obj = {
            "id": payment_intent,
            "object": "payment_intent",
            "amount": price,
            "amount_received": price,
            "created": now,
            "currency": currency,
            "customer": customer,
            "latest_charge": charge,
            "livemode": False,
            "metadata": metadata,
            "status": "succeeded",
        }
    elif event_type.startswith("checkout.session."):
        obj = {
            "id": _id("cs_test"),
            "object": "checkout.session",
            "amount_subtotal": price,
            "amount_total": price,
            "client_reference_id": str(telegram_user_id) if telegram_user_id is not None else None,
            "created": now,
            "currency": currency,
            "customer": customer,
            "livemode": False,
            "metadata": metadata,
            "mode": "payment",
            "payment_intent": payment_intent,
            "payment_status": "unpaid" if event_type.endswith("async_payment_failed") else "paid",
            "status": "complete",
            "subscription": None,
        }
    elif event_type.startswith("charge.dispute."):
        obj = {
            "id": _id("dp"),
            "object": "dispute",
            "amount": price,
            "charge": charge,
            "created": now,
            "currency": currency,
            "payment_intent": payment_intent,
            "reason": "fraudulent",
            "status": "needs_response",
        }
    elif event_type == "invoice.paid":
        end = period_end or now + 30 * 24 * 3600
        obj = {
            "id": _id("in"),
            "object": "invoice",
            "amount_due": price,
            "amount_paid": price,
            "created": now,
            "currency": currency,
            "customer": customer,
            "livemode": False,
            "metadata": {},
            "payment_intent": payment_intent,
            "status": "paid",
            "status_transitions": {"paid_at": now},
            "subscription": subscription or _id("sub"),
            "subscription_details": {"metadata": metadata},
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": _id("il"),
                        "object": "line_item",
                        "amount": price,
                        "currency": currency,
                        "metadata": metadata,
                        "period": {"start": now, "end": end},
                        "price": {
                            "id": _id("price"),
                            "object": "price",
                            "unit_amount": price,
                            "currency": currency,
                        },
                    }
                ],
                "has_more": False,
            },
        }
    elif event_type == "customer.subscription.deleted":
        obj = {
            "id": subscription or _id("sub"),
            "object": "subscription",
            "customer": customer,
            "metadata": metadata,
            "status": "canceled",
            "canceled_at": now,
        }
    else:
        obj = {
            "id": _id("obj"),
            "object": event_type.split(".")[0],
            "created": now,
            "metadata": metadata,
        }
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": now,
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": _id("req"), "idempotency_key": secrets.token_hex(8)},
        "type": event_type,
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
