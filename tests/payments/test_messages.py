"""What users are told in their chat: receipts, notices and reminders, from the outbox, through
the real stack and the local Bot API (which records every sendMessage)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.ops.factories import stripe_event
from paylayer.settings import DEFAULT_MESSAGES_PATH
from payments_service.messages import (
    MessagesFileError,
    Recipient,
    load_texts,
    reminders,
    telegram_sender,
)
from payments_service.tables import messages
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import (
    DAY,
    check,
    eventually,
    new_buyer,
    post_stripe,
    wait_settled,
)
from tests.payments.shop import Shop, shop_fixture  # noqa: F401 (the fixture)
from tests.stack import Stack, free_port
from tests.test_cli import paylayer


async def outbox_of(engine: AsyncEngine, user_id: str) -> list[Any]:
    async with engine.connect() as connection:
        return list(
            await connection.execute(
                select(messages).where(messages.c.user_id == user_id).order_by(messages.c.id)
            )
        )


async def settled_outbox(engine: AsyncEngine, user_id: str, kinds: set[str]) -> list[Any]:
    """The user's outbox once none of these kinds is pending or being sent."""
    return await eventually(
        lambda: outbox_of(engine, user_id),
        lambda rows: (
            bool(rows)
            and {row.kind for row in rows} >= kinds
            and all(row.status not in ("pending", "sending") for row in rows if row.kind in kinds)
        ),
    )


async def test_a_stars_payment_delivered_twice_gets_one_receipt_in_the_buyers_language(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    update = shop.telegram("payment", buyer, "premium_30d")
    update["message"]["from"]["language_code"] = "ru"
    await shop.deliver(update)
    again = json.loads(json.dumps(update))
    again["update_id"] += 1_000_000  # the same charge, brought again (as reconcile might)
    await shop.deliver(again)
    user_id = await shop.user_of(buyer)
    await settled_outbox(shop.engine, user_id, {"receipt"})
    received = bot_api.sent_to(buyer)
    assert len(received) == 1, received
    ends = (await check(shop.stack, user_id, "premium")).expires_at.ToDatetime()
    assert "Premium на 30 дней" in received[0]
    assert ends.strftime("%Y-%m-%d") in received[0]


async def test_429_is_waited_out_and_the_receipt_arrives(shop: Shop, bot_api: FakeBotApi) -> None:
    buyer = new_buyer()
    bot_api.too_many_requests[buyer] = (2, 1)  # the next two sends: 429, retry after 1 s
    user_id = await shop.pay_stars(buyer, "vip_30d")
    rows = await settled_outbox(shop.engine, user_id, {"receipt"})
    assert [row.status for row in rows if row.kind == "receipt"] == ["sent"]
    attempts = [p for p in bot_api.calls_of("sendMessage") if p["chat_id"] == buyer]
    assert len(attempts) == 3  # refused twice, then sent
    assert len(bot_api.sent_to(buyer)) == 1
    assert "VIP, 30 days" in bot_api.sent_to(buyer)[0]


async def test_a_user_who_blocked_the_bot_is_sent_nothing_more(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    bot_api.blocked.add(buyer)
    user_id = await shop.pay_stars(buyer, "premium_30d")
    rows = await settled_outbox(shop.engine, user_id, {"receipt"})
    assert [row.status for row in rows if row.kind == "receipt"] == ["unreachable"]
    # A second purchase: its receipt is not even tried, nor are the first one's reminders.
    await shop.pay_stars(buyer, "vip_30d")
    rows = await settled_outbox(shop.engine, user_id, {"receipt"})
    assert [row.status for row in rows if row.kind == "receipt"] == ["unreachable"] * 2
    assert {row.status for row in rows} == {"unreachable"}
    assert len([p for p in bot_api.calls_of("sendMessage") if p["chat_id"] == buyer]) == 1
    assert bot_api.sent_to(buyer) == []


async def test_access_ending_in_three_days_gets_the_3_day_reminder_once_with_a_working_link(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    user_id = await shop.pay_stars(buyer, "premium_3d")
    rows = await settled_outbox(shop.engine, user_id, {"receipt", "reminder_3d"})
    by_kind = {row.kind: row for row in rows}
    assert by_kind["reminder_3d"].status == "sent"
    # The later ones wait for their time: a day before the end, and the end.
    ends = (await check(shop.stack, user_id, "premium")).expires_at.ToDatetime().timestamp()
    assert by_kind["reminder_1d"].status == "pending"
    assert abs(by_kind["reminder_1d"].due_at.timestamp() - (ends - DAY)) < 2
    assert by_kind["ended"].status == "pending"
    received = bot_api.sent_to(buyer)
    reminders = [text for text in received if "ends in 3 days" in text]
    assert len(reminders) == 1 and len(received) == 2, received
    # The link in it is the one Telegram made for this sku, in Stars (the user paid in Stars).
    links = {
        url
        for (method, params), url in zip(bot_api.calls, _invoice_urls(bot_api), strict=False)
        if method == "createInvoiceLink" and params["payload"].startswith("premium_3d:")
    }
    assert any(link in reminders[0] for link in links), (reminders[0], links)


def _invoice_urls(bot_api: FakeBotApi) -> list[str]:
    """The URL the fake answered each call with (createInvoiceLink's is numbered by call)."""
    return [f"https://t.me/$invoice{index + 1}" for index in range(len(bot_api.calls))]


async def test_stacked_grants_remind_only_before_the_last_one_ends(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    for _ in range(2):
        user_id = await shop.pay_stars(buyer, "premium_30d")
    reply = await check(shop.stack, user_id, "premium")
    ends = reply.expires_at.ToDatetime().timestamp()
    assert ends > 59 * DAY + reply.grants[0].purchased_at.seconds
    rows = await eventually(
        lambda: outbox_of(shop.engine, user_id),
        lambda rows: (
            [r.status for r in rows if r.kind == "receipt"] == ["sent", "sent"]
            and any(r.kind == "reminder_3d" and r.status == "pending" for r in rows)
        ),
    )
    waiting = [row for row in rows if row.kind.startswith("reminder") or row.kind == "ended"]
    pending = [row for row in waiting if row.status == "pending"]
    assert {row.kind for row in pending} == {"reminder_3d", "reminder_1d", "ended"}
    assert all(abs(row.ends_at.timestamp() - ends) < 2 for row in pending)
    # Any reminder of the first grant's end was superseded, none sent.
    assert all(row.status == "superseded" for row in waiting if row not in pending)
    assert len(bot_api.sent_to(buyer)) == 2  # the two receipts, nothing else


async def test_refunding_the_grant_on_top_brings_back_the_reminders_of_the_first_end(
    shop: Shop,
) -> None:
    buyer = new_buyer()
    user_id = await shop.pay_stars(buyer, "premium_30d")

    def pending_ends(rows: list[Any]) -> set[int]:
        return {
            round(r.ends_at.timestamp())
            for r in rows
            if r.kind == "reminder_3d" and r.status == "pending"
        }

    rows = await eventually(
        lambda: outbox_of(shop.engine, user_id), lambda rows: bool(pending_ends(rows))
    )
    (first_end,) = pending_ends(rows)
    on_top = shop.telegram("payment", buyer, "premium_30d")
    await shop.deliver(on_top)
    await eventually(
        lambda: outbox_of(shop.engine, user_id),
        lambda rows: bool(pending_ends(rows)) and first_end not in pending_ends(rows),
    )
    charge = on_top["message"]["successful_payment"]["telegram_payment_charge_id"]
    await shop.deliver(shop.telegram("refund", buyer, "premium_30d", charge_id=charge))
    # Access ends at the first end again, and so do the reminders waiting to go out.
    rows = await eventually(
        lambda: outbox_of(shop.engine, user_id),
        lambda rows: (
            any(r.kind == "revoked" and r.status == "sent" for r in rows)
            and bool(pending_ends(rows))
        ),
    )
    assert pending_ends(rows) == {first_end}
    kinds = {r.kind for r in rows if r.status == "pending" and r.ends_at is not None}
    assert kinds == {"reminder_3d", "reminder_1d", "ended"}


async def test_a_refund_tells_the_buyer(shop: Shop, bot_api: FakeBotApi) -> None:
    buyer = new_buyer()
    payment = shop.telegram("payment", buyer, "premium_30d")
    await shop.deliver(payment)
    charge = payment["message"]["successful_payment"]["telegram_payment_charge_id"]
    await shop.deliver(shop.telegram("refund", buyer, "premium_30d", charge_id=charge))
    user_id = await shop.user_of(buyer)
    rows = await settled_outbox(shop.engine, user_id, {"revoked"})
    assert any("was refunded" in text for text in bot_api.sent_to(buyer))
    # No reminder of the end of access that is gone.
    assert [row.kind for row in rows if row.status == "pending"] == []


def test_a_messages_file_with_an_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "messages.yaml"
    english = load_texts(DEFAULT_MESSAGES_PATH).templates["en"]
    path.write_text(
        json.dumps({"languages": {"en": {**english, "receipt": "Paid {sku.__class__}"}}})
    )
    with pytest.raises(MessagesFileError, match="unknown placeholder"):
        load_texts(path)


async def test_an_operator_lists_a_users_messages_and_retries_one_after_they_unblock_the_bot(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    bot_api.blocked.add(buyer)
    user_id = await shop.pay_stars(buyer, "premium_30d")
    await settled_outbox(shop.engine, user_id, {"receipt"})
    listed = paylayer(shop.stack, "messages", "list", "--user-id", user_id, "--json")
    assert listed.returncode == 0, listed.stderr
    receipt = next(m for m in json.loads(listed.stdout)["messages"] if m["kind"] == "receipt")
    assert receipt["status"] == "unreachable"
    assert "blocked" in receipt["error"]

    bot_api.blocked.discard(buyer)
    retried = paylayer(shop.stack, "messages", "retry", str(receipt["id"]))
    assert retried.returncode == 0, retried.stderr
    await eventually(lambda: _texts(bot_api, buyer), lambda texts: len(texts) == 1)
    assert "Premium, 30 days" in bot_api.sent_to(buyer)[0]
    rows = await outbox_of(shop.engine, user_id)
    assert {row.kind for row in rows if row.status == "pending"} == {
        "reminder_3d",
        "reminder_1d",
        "ended",
    }, "the reminders dropped while the bot was blocked hold again"
    # A message that went out is not sent again by a second retry.
    again = paylayer(shop.stack, "messages", "retry", str(receipt["id"]))
    assert again.returncode != 0 and "only" in again.stderr


async def _texts(bot_api: FakeBotApi, chat_id: int) -> list[str]:
    return bot_api.sent_to(chat_id)


async def test_a_failed_renewal_tells_the_subscriber(shop: Shop, bot_api: FakeBotApi) -> None:
    buyer, now = new_buyer(), int(time.time())
    first = shop.telegram(
        "payment",
        buyer,
        "premium_monthly",
        recurring_until=now + 30 * DAY,
        first_recurring=True,
    )
    await shop.deliver(first)
    await shop.deliver(shop.telegram("subscription", buyer, "premium_monthly", state="failed"))
    user_id = await shop.user_of(buyer)
    rows = await settled_outbox(shop.engine, user_id, {"receipt", "payment_failed"})
    assert [row.status for row in rows if row.kind == "payment_failed"] == ["sent"]
    received = bot_api.sent_to(buyer)
    assert any("did not go through" in text for text in received), received
    # A subscription renews by itself: no "access ends" reminders for it.
    assert not [row for row in rows if row.kind in ("reminder_3d", "reminder_1d", "ended")]


@pytest.mark.parametrize(
    ("days_left", "kinds"),
    [
        (30, ["reminder_3d", "reminder_1d", "ended"]),
        (2.99, ["reminder_3d", "reminder_1d", "ended"]),  # the 3-day one, due now
        (2, ["reminder_3d", "reminder_1d", "ended"]),  # late, but the nearest (it names the date)
        (0.5, ["reminder_1d", "ended"]),  # not a late 3-day one: the 1-day one is due too
        (-1, ["ended"]),
    ],
)
def test_reminders_of_an_end_are_the_ones_still_worth_sending(
    days_left: float, kinds: list[str]
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ends = now + timedelta(days=days_left)
    due = reminders(Recipient("u"), sku="premium_30d", entitlement="premium", ends_at=ends, now=now)
    assert [message.kind for message in due] == kinds
    assert {message.due_at for message in due if message.kind == "ended"} == {ends}
    # Keyed by the end: the same end gives the same keys, a moved end new ones.
    again = reminders(
        Recipient("u"), sku="premium_30d", entitlement="premium", ends_at=ends, now=now
    )
    assert [m.dedupe_key for m in due] == [m.dedupe_key for m in again]


async def test_a_card_payments_receipt_reaches_the_buyers_telegram_chat(
    shop: Shop, bot_api: FakeBotApi
) -> None:
    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", shop.catalogue, sku="premium_life", telegram_user_id=buyer
    )
    status, _ = await post_stripe(shop.http, shop.stack, event)
    assert status == 200
    assert (await wait_settled(shop.engine, "stripe", [event["id"]]))[event["id"]] == "processed"
    user_id = await shop.user_of(buyer)
    rows = await settled_outbox(shop.engine, user_id, {"receipt_lifetime"})
    assert [row.status for row in rows] == ["sent"]  # lifetime: no reminders
    (text,) = bot_api.sent_to(buyer)
    assert "Premium for life" in text and "yours for life" in text


def test_payments_refuses_to_start_with_a_broken_messages_file(
    stack: Stack, tmp_path: Path
) -> None:
    broken = tmp_path / "messages.yaml"
    broken.write_text("languages:\n  en:\n    receipt: 'Paid {amount}'\n")
    env = {
        **stack.env,
        "MESSAGES_PATH": str(broken),
        "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }
    started = subprocess.run(
        [sys.executable, "-m", "payments_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stderr[-2000:]
    assert "MESSAGES_PATH" in started.stderr and "{amount}" in started.stderr


@pytest.mark.parametrize(
    ("language_code", "kept"),
    [("ru", "ru"), ("pt-BR", "pt-br"), ("x\x00", ""), ("<b>en</b>", ""), (42, "")],
)
def test_only_a_language_tag_is_remembered_from_an_update(language_code: Any, kept: str) -> None:
    update = {"message": {"from": {"id": 42, "language_code": language_code}}}
    assert telegram_sender(update) == (42, kept)
