"""Payments killed (SIGKILL) around a message to a user: the user gets it once, never twice.

A stack of its own, with a short outbox lease so that a sender killed mid-call is noticed in
seconds rather than a minute.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.ops.factories import telegram_update
from payments_service.tables import inbox, messages
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import (
    check,
    eventually,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.payments.test_telegram import key_of
from tests.stack import Stack

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def crash_database_url(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def crash_stack(
    crash_database_url: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = make_settings(crash_database_url, bot_api)
    with running_stack(
        settings,
        tmp_path_factory.mktemp("messages-crash-logs"),
        extra_env={"PAYMENTS_OUTBOX_LEASE_SECONDS": "3"},
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
async def crash_engine(crash_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(crash_database_url, application_name="crash-tests", pool_size=2)
    yield engine
    await engine.dispose()


async def _receipts(engine: AsyncEngine, user_id: str) -> list[Any]:
    async with engine.connect() as connection:
        return list(
            await connection.execute(
                select(messages).where(messages.c.user_id == user_id, messages.c.kind == "receipt")
            )
        )


async def _restart_payments(stack: Stack) -> None:
    stack.stop("payments", signal.SIGKILL)
    stack.start("payments")
    await stack.up()


async def test_killed_between_the_grant_and_the_send_the_receipt_arrives_once(
    crash_stack: Stack, crash_engine: AsyncEngine, bot_api: FakeBotApi
) -> None:
    """Held after the grant and before the event is marked done (so before its receipt is
    written), payments is killed; after the restart the event is applied again and the buyer
    gets one receipt.

    How it is held there: an uncommitted source row in entitlements makes the grant wait; once
    the event is claimed, its inbox row is locked and the grant let through, so the worker
    blocks marking it done."""
    bot_api.reset()
    catalogue = load_catalogue(crash_stack.settings.catalogue_path)
    buyer = secrets.randbelow(10**12) + 10**9
    update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")
    charge = update["message"]["successful_payment"]["telegram_payment_charge_id"]

    async def claimed() -> bool:
        async with crash_engine.connect() as observer:
            until = await observer.scalar(
                select(inbox.c.claimed_until).where(inbox.c.event_id == key_of(update))
            )
        return until is not None

    async with crash_engine.connect() as grant_blocker, crash_engine.connect() as row_blocker:
        await grant_blocker.execute(
            text(
                "INSERT INTO entitlements.grants (grant_id, provider, reference, revoked_at)"
                " VALUES (gen_random_uuid(), 'telegram', :key, now())"
            ),
            {"key": charge},
        )
        async with aiohttp.ClientSession() as http:
            assert (await post_telegram(http, crash_stack, update))[0] == 200
        assert await eventually(claimed, bool), "the worker never claimed the payment"
        await row_blocker.execute(
            select(inbox.c.id).where(inbox.c.event_id == key_of(update)).with_for_update()
        )
        await grant_blocker.rollback()
        user_id = await user_of_telegram(crash_stack, buyer)
        granted = await eventually(
            lambda: check(crash_stack, user_id, "premium"), lambda r: r.active
        )
        assert granted.active, "the grant was never made"
        assert await _receipts(crash_engine, user_id) == [], "the receipt came before the crash"
        crash_stack.stop("payments", signal.SIGKILL)
        await row_blocker.rollback()
    crash_stack.start("payments")
    await crash_stack.up()
    await wait_settled(crash_engine, "telegram", [key_of(update)], within=60)
    receipts = await eventually(
        lambda: _receipts(crash_engine, user_id),
        lambda rows: [row.status for row in rows] == ["sent"],
        within=60,
    )
    assert [row.status for row in receipts] == ["sent"]
    assert len(bot_api.sent_to(buyer)) == 1, bot_api.sent_to(buyer)


async def test_killed_while_telegram_answers_the_receipt_is_not_sent_again(
    crash_stack: Stack, crash_engine: AsyncEngine, bot_api: FakeBotApi
) -> None:
    """Telegram has the message but its answer is late; payments is killed before it comes.
    Whether it went out is unknown to the layer, so it is kept as unknown, not sent again."""
    bot_api.reset()
    catalogue = load_catalogue(crash_stack.settings.catalogue_path)
    buyer = secrets.randbelow(10**12) + 10**9
    bot_api.answer_late[buyer] = 5  # payments is killed well within this
    update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")
    async with aiohttp.ClientSession() as http:
        assert (await post_telegram(http, crash_stack, update))[0] == 200
    await eventually(lambda: _sent(bot_api, buyer), lambda texts: len(texts) == 1)
    await _restart_payments(crash_stack)
    user_id = await user_of_telegram(crash_stack, buyer)
    receipts = await eventually(
        lambda: _receipts(crash_engine, user_id),
        lambda rows: [row.status for row in rows] == ["unknown"],
    )
    assert [row.status for row in receipts] == ["unknown"]
    # The sender keeps running (a later purchase's receipt arrives), and this one stays sent once.
    other = secrets.randbelow(10**12) + 10**9
    second = telegram_update("payment", catalogue, telegram_user_id=other, sku="vip_30d")
    async with aiohttp.ClientSession() as http:
        assert (await post_telegram(http, crash_stack, second))[0] == 200
    await eventually(lambda: _sent(bot_api, other), lambda texts: len(texts) == 1)
    assert len(bot_api.sent_to(buyer)) == 1


async def _sent(bot_api: FakeBotApi, chat_id: int) -> list[str]:
    return bot_api.sent_to(chat_id)


async def test_a_reminder_that_fell_due_while_payments_was_down_goes_out_once_after_it_starts(
    crash_stack: Stack, crash_engine: AsyncEngine, bot_api: FakeBotApi
) -> None:
    """Three days of access: its 3-day reminder is due at once. Telegram asks the first send
    to wait (429), and payments is stopped during the wait, with the receipt and the reminder
    due. Once it is back, each goes out once."""
    bot_api.reset()
    catalogue = load_catalogue(crash_stack.settings.catalogue_path)
    buyer = secrets.randbelow(10**12) + 10**9
    bot_api.too_many_requests[buyer] = (1, 2)
    update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_3d")
    async with aiohttp.ClientSession() as http:
        assert (await post_telegram(http, crash_stack, update))[0] == 200
    user_id = await user_of_telegram(crash_stack, buyer)

    async def outbox() -> list[Any]:
        async with crash_engine.connect() as connection:
            return list(
                await connection.execute(select(messages).where(messages.c.user_id == user_id))
            )

    waiting = await eventually(
        outbox,
        lambda rows: (
            any(r.kind == "receipt" and r.error.startswith("429") for r in rows)
            and any(r.kind == "reminder_3d" for r in rows)
        ),
    )
    crash_stack.stop("payments", signal.SIGTERM)
    due = {row.kind: row.status for row in await outbox()}
    assert due["receipt"] == "pending" and due["reminder_3d"] == "pending", due
    assert bot_api.sent_to(buyer) == [], "sent before payments stopped"
    crash_stack.start("payments")
    await crash_stack.up()
    rows = await eventually(
        outbox,
        lambda rows: (
            {r.kind: r.status for r in rows}.get("reminder_3d") == "sent"
            and {r.kind: r.status for r in rows}.get("receipt") == "sent"
        ),
        within=60,
    )
    assert len(waiting) >= 2 and len(rows) == len(waiting)
    received = bot_api.sent_to(buyer)
    assert len(received) == 2, received
    assert sum("ends in 3 days" in text for text in received) == 1
