"""The gateway as the bot's webhook: other updates reach the bot behind it, payments never wait.

A stack of its own, with `BOT_UPDATES_URL` pointing at a small local bot. The stack without a
bot (other updates answered 200 and left alone) is covered in test_telegram.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.ops.factories import telegram_update
from paylayer.settings import REPO_ROOT, Settings
from tests.conftest import KNOWN_SECRETS, running_stack
from tests.fakes.bot_backend import FakeBotBackend
from tests.payments.helpers import (
    check,
    eventually,
    new_buyer,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.payments.test_telegram import key_of
from tests.stack import Stack

BOT_SECRET = "bot-secret-" + secrets.token_hex(8)
KNOWN_SECRETS.append(BOT_SECRET)


@pytest.fixture(scope="module")
def bot() -> Iterator[FakeBotBackend]:
    backend = FakeBotBackend()
    backend.start()
    yield backend
    backend.stop()


@pytest.fixture(autouse=True)
def fresh_bot(bot: FakeBotBackend) -> Iterator[None]:
    bot.reset()
    yield
    if bot._runner is None:  # a test that took the bot down brings it back for the next
        bot.start()


@pytest.fixture(scope="module")
def bot_stack(
    settings: Settings, bot: FakeBotBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra_env = {"BOT_UPDATES_URL": bot.url, "BOT_UPDATES_SECRET": BOT_SECRET}
    with running_stack(
        settings, tmp_path_factory.mktemp("bot-stack-logs"), extra_env=extra_env
    ) as running:
        yield running


@pytest.fixture(scope="module")
def catalogue(settings: Settings) -> Catalogue:
    return load_catalogue(settings.catalogue_path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def start_command(telegram_user_id: int) -> dict[str, object]:
    chat = {"id": telegram_user_id, "type": "private", "first_name": "Test"}
    return {
        "update_id": 700_000_000 + secrets.randbelow(10**8),
        "message": {
            "message_id": 1,
            "date": 1_760_000_000,
            "chat": chat,
            "from": {"id": telegram_user_id, "is_bot": False, "first_name": "Test"},
            "text": "/start",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        },
    }


async def test_start_reaches_the_bot_with_its_secret_and_telegram_gets_the_bot_reply(
    bot_stack: Stack, bot: FakeBotBackend, http: aiohttp.ClientSession
) -> None:
    buyer = new_buyer()
    bot.reply = {"method": "sendMessage", "chat_id": buyer, "text": "Welcome!"}
    update = start_command(buyer)

    status, reply = await post_telegram(http, bot_stack, update)

    assert (status, reply) == (200, bot.reply)
    [seen] = bot.updates_with(int(update["update_id"]))  # type: ignore[call-overload]
    assert seen.update == update
    assert seen.secret == BOT_SECRET


@pytest.mark.parametrize("kind", ["chat_join_request", "callback_query"])
async def test_join_requests_and_button_presses_reach_the_bot_too(
    bot_stack: Stack, bot: FakeBotBackend, http: aiohttp.ClientSession, kind: str
) -> None:
    bot.reply = {"method": "answerCallbackQuery", "callback_query_id": "1"}
    update_id = 710_000_000 + secrets.randbelow(10**8)
    user = {"id": new_buyer(), "is_bot": False, "first_name": "Test"}
    update = {"update_id": update_id, kind: {"from": user, "chat": {"id": -100123}, "date": 1}}

    status, reply = await post_telegram(http, bot_stack, update)

    assert (status, reply) == (200, bot.reply)
    assert [seen.update for seen in bot.updates_with(update_id)] == [update]


async def test_bot_down_makes_telegram_retry_but_a_pre_checkout_is_still_answered(
    bot_stack: Stack, bot: FakeBotBackend, http: aiohttp.ClientSession, catalogue: Catalogue
) -> None:
    bot.stop()
    message_status, _ = await post_telegram(http, bot_stack, start_command(new_buyer()))
    query = telegram_update("pre-checkout", catalogue, telegram_user_id=new_buyer(), sku="vip_30d")
    query_status, answer = await post_telegram(http, bot_stack, query)

    assert not 200 <= message_status < 300  # Telegram delivers it again later
    assert query_status == 200
    assert answer["method"] == "answerPreCheckoutQuery"
    assert answer["ok"] is True


async def test_a_bot_error_goes_back_to_telegram_as_it_came(
    bot_stack: Stack, bot: FakeBotBackend, http: aiohttp.ClientSession
) -> None:
    # A bot that answers but fails: its status reaches Telegram, so Telegram retries.
    bot.status, bot.reply = 500, {"error": "bot crashed"}
    status, body = await post_telegram(http, bot_stack, start_command(new_buyer()))
    assert (status, body) == (500, {"error": "bot crashed"})


async def test_a_stars_payment_is_granted_and_the_bot_gets_a_copy_afterwards(
    bot_stack: Stack,
    bot: FakeBotBackend,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
) -> None:
    buyer = new_buyer()
    # The buyer talked to the bot first; its answer also tells the gateway the bot is up (after
    # an outage copies pause for a second).
    assert (await post_telegram(http, bot_stack, start_command(buyer)))[0] == 200
    bot.reply = {"method": "sendMessage", "chat_id": buyer, "text": "ignored"}
    update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")

    status, reply = await post_telegram(http, bot_stack, update)

    assert status == 200
    assert reply.get("method") is None  # payments answered, not the bot
    assert (await wait_settled(engine, "telegram", [key_of(update)]))[key_of(update)] == "processed"
    user_id = await user_of_telegram(bot_stack, buyer)
    assert (await check(bot_stack, user_id, "premium")).active
    copies = await eventually(
        lambda: _async(bot.updates_with(update["update_id"])), lambda seen: len(seen) == 1
    )
    assert [(seen.update, seen.secret) for seen in copies] == [(update, BOT_SECRET)]


async def _async(value: list) -> list:  # type: ignore[type-arg]
    return value


def test_a_bot_url_without_its_secret_refuses_to_start(settings: Settings) -> None:
    env = {
        **os.environ,
        "STRIPE_WEBHOOK_SECRETS": ",".join(settings.stripe_webhook_secrets),
        "TELEGRAM_WEBHOOK_SECRET": settings.telegram_webhook_secret,
        "INTERNAL_TOKEN": settings.internal_token,
        "BOT_UPDATES_URL": "http://127.0.0.1:9/updates",
        "BOT_UPDATES_SECRET": "",
    }
    gateway = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gateway.returncode == 2
    assert "BOT_UPDATES_SECRET" in gateway.stderr
