"""Telegram Stars through the real gateway and services, with a local Bot API for Telegram."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event, telegram_update
from payments_service import telegram_updates
from payments_service.tables import inbox, payments
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import (
    DAY,
    check,
    days_left,
    eventually,
    new_buyer,
    post_stripe,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack


@pytest.fixture
async def payments_stub(stack: Stack) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceStub]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


def key_of(update: dict) -> str:  # type: ignore[type-arg]
    """The inbox key payments gives this update (its charge, for a payment or a refund)."""
    kind = telegram_updates.update_kind(update)
    return telegram_updates.event_key(update, kind) if kind else str(update["update_id"])


async def recorded(engine: AsyncEngine, update: dict) -> int:  # type: ignore[type-arg]
    """How many inbox rows this update left: by its key, and by anything with its update id."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).where(
                inbox.c.provider == "telegram",
                (inbox.c.event_id == key_of(update))
                | inbox.c.event_id.contains(f":{update['update_id']}:"),
            )
        )
    return int(count or 0)


async def pay(http: aiohttp.ClientSession, stack: Stack, engine: AsyncEngine, update: dict) -> str:  # type: ignore[type-arg]
    status, _ = await post_telegram(http, stack, update)
    assert status == 200
    return (await wait_settled(engine, "telegram", [key_of(update)]))[key_of(update)]


# --- the gate ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "wrong-secret"])
async def test_wrong_or_missing_secret_token_is_401_and_nothing_recorded(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine, token: str
) -> None:
    update = telegram_update("payment", catalogue, telegram_user_id=new_buyer(), sku="premium_30d")
    status, _ = await post_telegram(http, stack, update, token=token)
    assert status == 401
    assert await recorded(engine, update) == 0


async def test_oversized_and_malformed_bodies_are_refused(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert (await post_telegram(http, stack, b"[" + b"1," * 600_000 + b"1]"))[0] == 413
    for body in (
        b"not json",
        b"[]",
        b'{"update_id": "7"}',
        b'{"message": {}}',
        b'{"update_id": true}',
    ):
        assert (await post_telegram(http, stack, body))[0] == 400, body


async def test_other_update_types_are_answered_200_and_left_alone(
    stack: Stack, http: aiohttp.ClientSession, engine: AsyncEngine
) -> None:
    update = {
        "update_id": 990_000_000 + secrets.randbelow(10**6),
        "message": {"message_id": 1, "text": "hi"},
    }
    assert (await post_telegram(http, stack, update))[0] == 200
    assert await recorded(engine, update) == 0


# --- pre-checkout --------------------------------------------------------------------------


async def test_pre_checkout_for_a_catalogue_price_is_accepted_in_the_webhook_reply(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue
) -> None:
    update = telegram_update("pre-checkout", catalogue, telegram_user_id=new_buyer(), sku="vip_30d")
    status, reply = await post_telegram(http, stack, update)
    assert status == 200
    assert reply == {
        "method": "answerPreCheckoutQuery",
        "pre_checkout_query_id": update["pre_checkout_query"]["id"],
        "ok": True,
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"currency": "USD"}, "currency"),
        ({"total_amount": 1499}, "costs 1500"),
        ({"invoice_payload": "gold_forever:abc"}, "unknown sku"),
        ({"invoice_payload": "premium_30d:" + "x" * 120}, "128 bytes"),
        ({"invoice_payload": "premium_life"}, "cannot be bought with Stars"),
    ],
)
async def test_pre_checkout_refuses_what_the_catalogue_does_not_sell_with_a_readable_reason(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    change: dict,
    reason: str,  # type: ignore[type-arg]
) -> None:
    update = telegram_update(
        "pre-checkout", catalogue, telegram_user_id=new_buyer(), sku="premium_30d"
    )
    update["pre_checkout_query"].update(change)
    status, reply = await post_telegram(http, stack, update)
    assert status == 200
    assert reply["method"] == "answerPreCheckoutQuery" and reply["ok"] is False
    assert reason in reply["error_message"]


# --- payments ------------------------------------------------------------------------------


async def test_a_stars_payment_grants_once_however_often_it_is_delivered(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")
    replies = await asyncio.gather(*(post_telegram(http, stack, update) for _ in range(10)))
    assert {status for status, _ in replies} == {200}
    # The same charge brought again under another update id (as reconcile might) adds nothing.
    again = json.loads(json.dumps(update))
    again["update_id"] += 1_000_000
    assert await pay(http, stack, engine, again) == "processed"
    await wait_settled(engine, "telegram", [key_of(update)])
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert len(reply.grants) == 1 and 29.9 < days_left(reply) <= 30.0


async def test_an_underpaid_payment_grants_nothing_and_is_kept_failed(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    update = telegram_update(
        "payment", catalogue, telegram_user_id=buyer, sku="vip_30d", total_amount=1
    )
    assert await pay(http, stack, engine, update) == "failed"
    async with engine.connect() as connection:
        error = await connection.scalar(
            select(inbox.c.error).where(inbox.c.event_id == key_of(update))
        )
    assert "costs 5000" in error
    user_id = await user_of_telegram(stack, buyer)
    assert not (await check(stack, user_id, "vip")).active


async def test_refunded_payment_revokes_that_charge(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, charge = new_buyer(), f"stxt{secrets.token_hex(12)}"
    await pay(
        http,
        stack,
        engine,
        telegram_update(
            "payment", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
        ),
    )
    user_id = await user_of_telegram(stack, buyer)
    assert (await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)).active
    refund = telegram_update(
        "refund", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
    )
    assert await pay(http, stack, engine, refund) == "processed"
    assert not (
        await eventually(lambda: check(stack, user_id, "premium"), lambda r: not r.active)
    ).active


async def test_a_refund_that_arrives_before_its_payment_leaves_no_access(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, charge = new_buyer(), f"stxt{secrets.token_hex(12)}"
    refund = telegram_update(
        "refund", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
    )
    payment = telegram_update(
        "payment", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
    )
    assert await pay(http, stack, engine, refund) == "processed"
    assert await pay(http, stack, engine, payment) == "processed"
    # Both are applied: whatever the payment granted is already revoked.
    answer = await check(stack, await user_of_telegram(stack, buyer), "premium")
    assert not answer.active and not answer.grants


async def test_stars_and_card_payments_of_one_user_stack_to_sixty_days(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer = new_buyer()
    await pay(
        http,
        stack,
        engine,
        telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d"),
    )
    card = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    assert (await post_stripe(http, stack, card))[0] == 200
    await wait_settled(engine, "stripe", [card["id"]])
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: days_left(r) > 59)
    assert 59.9 < days_left(reply) <= 60.0 and len(reply.grants) == 2


async def test_recurring_payments_grant_until_expiry_and_a_renewal_extends_without_doubling(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    buyer, now = new_buyer(), int(time.time())
    first = telegram_update(
        "payment",
        catalogue,
        telegram_user_id=buyer,
        sku="premium_monthly",
        recurring_until=now + 30 * DAY,
        first_recurring=True,
    )
    await pay(http, stack, engine, first)
    user_id = await user_of_telegram(stack, buyer)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: r.active)
    assert abs(reply.expires_at.seconds - (now + 30 * DAY)) <= 1
    renewal = telegram_update(
        "payment",
        catalogue,
        telegram_user_id=buyer,
        sku="premium_monthly",
        recurring_until=now + 60 * DAY,
    )
    await pay(http, stack, engine, renewal)
    reply = await eventually(lambda: check(stack, user_id, "premium"), lambda r: days_left(r) > 31)
    assert abs(reply.expires_at.seconds - (now + 60 * DAY)) <= 1  # 60 days, not 90

    cancel = telegram_update(
        "subscription", catalogue, telegram_user_id=buyer, sku="premium_monthly", state="canceled"
    )
    assert await pay(http, stack, engine, cancel) == "processed"
    async with engine.connect() as connection:
        states = set(
            await connection.scalars(
                select(payments.c.subscription_state).where(payments.c.user_id == user_id)
            )
        )
    assert states == {"canceled"}


# --- outbound Bot API ----------------------------------------------------------------------


async def test_invoice_links_are_in_stars_with_one_price_and_a_nonce_payload(
    payments_stub: payments_pb2_grpc.PaymentsServiceStub, bot_api: FakeBotApi
) -> None:
    one = await payments_stub.CreateInvoiceLink(
        payments_pb2.CreateInvoiceLinkRequest(user_id="u", sku="vip_30d")
    )
    two = await payments_stub.CreateInvoiceLink(
        payments_pb2.CreateInvoiceLinkRequest(user_id="u", sku="vip_30d")
    )
    assert one.url.startswith("https://t.me/$") and one.payload != two.payload
    sent = bot_api.calls_of("createInvoiceLink")[-1]
    assert sent["currency"] == "XTR" and sent["prices"] == [{"label": "vip_30d", "amount": 5000}]
    assert sent["payload"] == two.payload and two.payload.startswith("vip_30d:")
    assert "subscription_period" not in sent
    await payments_stub.CreateInvoiceLink(
        payments_pb2.CreateInvoiceLinkRequest(user_id="u", sku="premium_monthly")
    )
    assert bot_api.calls_of("createInvoiceLink")[-1]["subscription_period"] == 30 * DAY


async def test_refunding_a_stars_payment_calls_telegram_and_revokes_once(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
    bot_api: FakeBotApi,
) -> None:
    buyer, charge = new_buyer(), f"stxt{secrets.token_hex(12)}"
    await pay(
        http,
        stack,
        engine,
        telegram_update(
            "payment", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
        ),
    )
    request = payments_pb2.RefundPaymentRequest(provider="telegram", payment_key=charge)
    first = await payments_stub.RefundPayment(request)
    second = await payments_stub.RefundPayment(request)  # Telegram says CHARGE_ALREADY_REFUNDED
    assert first.payment.status == second.payment.status == "refunded"
    assert [c["telegram_payment_charge_id"] for c in bot_api.calls_of("refundStarPayment")].count(
        charge
    ) == 2
    assert bot_api.calls_of("refundStarPayment")[-1]["user_id"] == buyer
    user_id = await user_of_telegram(stack, buyer)
    assert not (
        await eventually(lambda: check(stack, user_id, "premium"), lambda r: not r.active)
    ).active

    async def revokes_audited() -> int:
        async with engine.connect() as connection:
            return int(
                await connection.scalar(
                    text(
                        "SELECT count(*) FROM entitlements.audit"
                        " WHERE user_id = :user AND action = 'revoke'"
                    ),
                    {"user": user_id},
                )
                or 0
            )

    # Two refunds of one charge: one revoke in the audit, not one per refund.
    assert await eventually(revokes_audited, lambda n: n >= 1) == 1


async def test_reconcile_records_paid_charges_that_no_update_brought(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
    bot_api: FakeBotApi,
) -> None:
    seen_buyer, lost_buyer = new_buyer(), new_buyer()
    seen_charge, lost_charge = f"stxt{secrets.token_hex(12)}", f"stxt{secrets.token_hex(12)}"
    await pay(
        http,
        stack,
        engine,
        telegram_update(
            "payment",
            catalogue,
            telegram_user_id=seen_buyer,
            sku="premium_30d",
            charge_id=seen_charge,
        ),
    )

    def transaction(charge: str, buyer: int, payload: str, amount: int) -> dict:  # type: ignore[type-arg]
        return {
            "id": charge,
            "amount": amount,
            "date": int(time.time()) - 3 * DAY,
            "source": {
                "type": "user",
                "transaction_type": "invoice_payment",
                "user": {"id": buyer, "is_bot": False, "first_name": "T"},
                "invoice_payload": payload,
            },
        }

    bot_api.transactions = [
        transaction(seen_charge, seen_buyer, "premium_30d:a", 1500),
        transaction(lost_charge, lost_buyer, "vip_30d:b", 5000),
        # Money going out (a withdrawal) is not a purchase.
        {"id": "out-1", "amount": 100, "date": int(time.time()), "receiver": {"type": "fragment"}},
        *[transaction(f"old-{i}", new_buyer(), "premium_30d:c", 1500) for i in range(150)],
    ]
    reply = await payments_stub.ReconcileTelegram(payments_pb2.ReconcileTelegramRequest())
    assert reply.transactions_seen == 153
    assert reply.payments_recorded == 151  # the lost one and the 150 old ones; not the seen one
    again = await payments_stub.ReconcileTelegram(payments_pb2.ReconcileTelegramRequest())
    assert again.payments_recorded == 0
    lost_user = await user_of_telegram(stack, lost_buyer)
    vip = await eventually(lambda: check(stack, lost_user, "vip"), lambda r: r.active)
    assert vip.active and 26.9 < days_left(vip) <= 27.0  # bought three days ago


async def test_payments_down_pre_checkout_still_answers_try_again(
    stack: Stack, http: aiohttp.ClientSession, catalogue: Catalogue
) -> None:
    update = telegram_update(
        "pre-checkout", catalogue, telegram_user_id=new_buyer(), sku="premium_30d"
    )
    stack.stop("payments")
    try:
        status, reply = await post_telegram(http, stack, update)
        assert status == 200 and reply["ok"] is False and "try again" in reply["error_message"]
    finally:
        stack.start("payments")
        await stack.up()
