"""Telegram updates to intents, and the pre-checkout rules, pure.

A Stars invoice payload is `<sku>` or `<sku>:<anything>` (a nonce), at most 128 bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paylayer.catalogue import Catalogue, Sku
from payments_service import subscriptions
from payments_service.intents import (
    ChannelUpdate,
    Grant,
    Ignore,
    Intent,
    Payer,
    Revoke,
    Unprocessable,
    shown,
)
from payments_service.subscriptions import from_epoch

PROVIDER = "telegram"
STARS = "XTR"
MAX_PAYLOAD_BYTES = 128
# Updates of the chats channel access keeps in step (payments_service/channels.py).
CHANNEL_KINDS = ("chat_join_request", "chat_member")


@dataclass(frozen=True)
class PreCheckoutVerdict:
    ok: bool
    error_message: str = ""


def update_kind(update: dict[str, Any]) -> str | None:
    if isinstance(update.get("pre_checkout_query"), dict):
        return "pre_checkout_query"
    message = update.get("message")
    if isinstance(message, dict):
        for kind in ("successful_payment", "refunded_payment"):
            if isinstance(message.get(kind), dict):
                return kind
    if isinstance(update.get("subscription"), dict):
        return "subscription"
    for kind in CHANNEL_KINDS:
        if isinstance(update.get(kind), dict):
            return kind
    return None


def _charge_id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 200 and value.isascii() and value.isprintable():
        return value
    return None


def event_key(update: dict[str, Any], kind: str) -> str:
    """The inbox key of a payment update: its charge, never its update_id alone.

    Telegram reuses update ids (they restart after a week without updates, and for a re-created
    bot), so a seen update id must never hide a new charge. A redelivery of the same update
    has the same key, and so takes effect once.
    """
    message = update.get("message")
    if kind in ("successful_payment", "refunded_payment") and isinstance(message, dict):
        charge = _charge_id(_dict(message.get(kind)).get("telegram_payment_charge_id"))
        if charge is not None:
            return f"{'payment' if kind == 'successful_payment' else 'refund'}:{charge}"
    # No charge to key by: the update id plus what it says, so a reused id with new content
    # is a new event, and a redelivery is not.
    content = json.dumps(update.get(kind) or message, sort_keys=True, default=str)
    return f"{kind}:{update.get('update_id')}:{hashlib.sha256(content.encode()).hexdigest()[:24]}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def sku_of_payload(catalogue: Catalogue, payload: Any) -> Sku:
    if not isinstance(payload, str) or not payload:
        raise Unprocessable("invoice payload is missing")
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise Unprocessable("invoice payload is over 128 bytes")
    name = payload.split(":", 1)[0]
    if name not in catalogue.skus:
        raise Unprocessable(f"unknown sku {shown(name)}", "unknown_sku")
    return catalogue.skus[name]


def check_price(sku: Sku, currency: Any, total_amount: Any) -> None:
    if currency != STARS:
        raise Unprocessable(f"currency must be {STARS}, not {shown(currency)}", "price_mismatch")
    if sku.stars is None:
        raise Unprocessable(f"{sku.name} cannot be bought with Stars", "price_mismatch")
    if total_amount != sku.stars:
        raise Unprocessable(
            f"{sku.name} costs {sku.stars} Stars, not {shown(total_amount)}", "price_mismatch"
        )


def pre_checkout(catalogue: Catalogue, query: dict[str, Any]) -> PreCheckoutVerdict:
    """Accept only what the catalogue sells, at its price; the message is shown to the buyer."""
    try:
        sku = sku_of_payload(catalogue, query.get("invoice_payload"))
        check_price(sku, query.get("currency"), query.get("total_amount"))
    except Unprocessable as reason:
        return PreCheckoutVerdict(False, f"This purchase cannot be completed: {reason.message}.")
    return PreCheckoutVerdict(True)


def _user_id(container: dict[str, Any]) -> int:
    user = container.get("from") or container.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id < 2**63:
        raise Unprocessable("update names no user", "unknown_payer")
    return user_id


def subscription_id(telegram_user_id: int, sku: Sku) -> str:
    """A Stars subscription is one user's recurring payment for one sku."""
    return f"{telegram_user_id}:{sku.name}"


def interpret(update: dict[str, Any], catalogue: Catalogue) -> Intent:
    kind = update_kind(update)
    if kind == "successful_payment":
        message = update["message"]
        payment = message["successful_payment"]
        charge_id = payment.get("telegram_payment_charge_id")
        if not isinstance(charge_id, str) or not charge_id:
            raise Unprocessable("successful_payment has no telegram_payment_charge_id")
        sku = sku_of_payload(catalogue, payment.get("invoice_payload"))
        check_price(sku, payment.get("currency"), payment.get("total_amount"))
        telegram_user_id = _user_id(message)
        purchased_at = from_epoch(message.get("date")) or datetime.now(UTC)
        recurring = payment.get("is_recurring") is True
        until = from_epoch(payment.get("subscription_expiration_date")) if recurring else None
        if recurring and until is None:
            raise Unprocessable("recurring payment without subscription_expiration_date")
        return Grant(
            provider=PROVIDER,
            payment_key=charge_id,
            payer=Payer(telegram_user_id=telegram_user_id),
            sku=sku,
            purchased_at=purchased_at,
            amount=int(payment["total_amount"]),
            currency=STARS,
            until=until,
            subscription_id=subscription_id(telegram_user_id, sku) if recurring else None,
        )
    if kind == "refunded_payment":
        refund = update["message"]["refunded_payment"]
        charge_id = refund.get("telegram_payment_charge_id")
        if not isinstance(charge_id, str) or not charge_id:
            raise Unprocessable("refunded_payment has no telegram_payment_charge_id")
        amount = refund.get("total_amount")
        in_range = isinstance(amount, int) and not isinstance(amount, bool) and 0 <= amount < 2**63
        return Revoke(PROVIDER, charge_id, "refunded", amount if in_range else 0)
    if kind == "subscription":
        subscription = update["subscription"]
        state = subscription.get("state")
        if state not in ("canceled", "active", "failed"):
            raise Unprocessable(f"unknown subscription state {shown(state)}")
        sku = sku_of_payload(catalogue, subscription.get("invoice_payload"))
        telegram_user_id = _user_id(subscription)
        return subscriptions.from_stars_update(
            subscription_id(telegram_user_id, sku),
            state,
            # Updates carry no time of their own unless we made them: then it is processing time.
            from_epoch(subscription.get("date")) or datetime.now(UTC),
            Payer(telegram_user_id=telegram_user_id),
            sku,
        )
    if kind in CHANNEL_KINDS:
        return ChannelUpdate(kind, update)
    return Ignore("update carries nothing payments acts on")


def update_from_transaction(transaction: dict[str, Any]) -> dict[str, Any] | None:
    """A paid Stars transaction as the successful_payment update that should have brought it.

    Used by reconcile: updates older than Telegram's 24 h retention are lost, transactions
    are not. Its id is the payment's telegram_payment_charge_id.
    """
    source = transaction.get("source")
    if not isinstance(source, dict) or source.get("type") != "user":
        return None
    if source.get("transaction_type", "invoice_payment") != "invoice_payment":
        return None
    user = source.get("user")
    charge_id = transaction.get("id")
    payload = source.get("invoice_payload")
    if not (isinstance(user, dict) and isinstance(charge_id, str) and isinstance(payload, str)):
        return None
    date: int = transaction["date"] if isinstance(transaction.get("date"), int) else 0
    payment: dict[str, Any] = {
        "currency": STARS,
        "total_amount": transaction.get("amount"),
        "invoice_payload": payload,
        "telegram_payment_charge_id": charge_id,
        "provider_payment_charge_id": "",
    }
    period = source.get("subscription_period")
    if isinstance(period, int) and period > 0:
        payment["is_recurring"] = True
        payment["subscription_expiration_date"] = date + period
    return {"message": {"from": user, "date": date, "successful_payment": payment}}


@dataclass(frozen=True)
class StarsPurchase:
    """What a refund of a Stars payment needs from the update that brought the payment."""

    telegram_user_id: int
    invoice_payload: str
    total_amount: int


def stars_purchase(payload: bytes) -> StarsPurchase | None:
    """The buyer and the payment of a stored successful_payment update; None when the update
    does not name them (it came from the Internet: nothing in it is taken on trust)."""
    try:
        update = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    message = _dict(_dict(update).get("message"))
    payment = _dict(message.get("successful_payment"))
    buyer = _dict(message.get("from")).get("id")
    if not isinstance(buyer, int) or isinstance(buyer, bool):
        return None
    total_amount = payment.get("total_amount")
    return StarsPurchase(
        telegram_user_id=buyer,
        invoice_payload=str(payment.get("invoice_payload", "")),
        total_amount=(
            total_amount
            if isinstance(total_amount, int) and not isinstance(total_amount, bool)
            else 0
        ),
    )


def refund_update(charge_id: str, invoice_payload: str, total_amount: int) -> dict[str, Any]:
    """A refund we made ourselves, as the refunded_payment update Telegram would send."""
    return {
        "message": {
            "refunded_payment": {
                "currency": STARS,
                "total_amount": total_amount,
                "invoice_payload": invoice_payload,
                "telegram_payment_charge_id": charge_id,
            }
        }
    }


def subscription_update(
    telegram_user_id: int, invoice_payload: str, state: str, date: int
) -> dict[str, Any]:
    """A cancel or resume we made ourselves (editUserStarSubscription), as the `subscription`
    update that records it; `date` tells it apart from an earlier identical one."""
    return {
        "subscription": {
            "user": {"id": telegram_user_id},
            "invoice_payload": invoice_payload,
            "state": state,
            "date": date,
        }
    }
