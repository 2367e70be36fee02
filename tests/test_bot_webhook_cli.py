"""`paylayer telegram set-webhook` and the webhook line of `paylayer health`, against the
local Bot API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fakes.bot_api import FakeBotApi
from tests.stack import Stack, free_port

GATEWAY_URL = "https://pay.example.com/api/v1/telegram/webhook"


@pytest.fixture(autouse=True)
def fresh_bot_api(bot_api: FakeBotApi) -> None:
    bot_api.reset()


def paylayer(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paylayer.cli", *args],
        env={**stack.env, "GATEWAY_ADDR": stack.instances["gateway"].listen_addr, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_set_webhook_points_telegram_at_the_gateway_with_its_secret(
    stack: Stack, bot_api: FakeBotApi
) -> None:
    done = paylayer(stack, "telegram", "set-webhook", GATEWAY_URL)

    assert done.returncode == 0, done.stderr
    [params] = bot_api.calls_of("setWebhook")
    assert params["url"] == GATEWAY_URL
    assert params["secret_token"] == stack.settings.telegram_webhook_secret
    # Payments (as pre-checkouts and messages), the bot's own traffic, and channel access.
    assert {"message", "callback_query", "pre_checkout_query"} <= set(params["allowed_updates"])
    assert {"chat_join_request", "chat_member"} <= set(params["allowed_updates"])


def test_a_webhook_telegram_refuses_is_one_line_not_a_traceback(
    stack: Stack, bot_api: FakeBotApi
) -> None:
    done = paylayer(stack, "telegram", "set-webhook", "http://pay.example.com/hook")

    assert done.returncode == 2
    assert "HTTPS URL must be provided" in done.stderr
    assert "Traceback" not in done.stderr
    assert bot_api.webhook == {}


def test_health_shows_pending_updates_and_the_last_delivery_error(
    stack: Stack, bot_api: FakeBotApi
) -> None:
    assert paylayer(stack, "telegram", "set-webhook", GATEWAY_URL).returncode == 0
    bot_api.pending_update_count = 3
    bot_api.last_error_message = "Wrong response from the webhook: 502 Bad Gateway"

    shown = paylayer(stack, "health")
    as_json = paylayer(stack, "health", "--json")

    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "3 pending, last error: Wrong response from the webhook: 502 Bad Gateway" in shown.stdout
    assert json.loads(as_json.stdout)["telegram_webhook"] == {
        "url": GATEWAY_URL,
        "pending_update_count": 3,
        "last_error_message": "Wrong response from the webhook: 502 Bad Gateway",
    }


def test_health_says_when_telegram_cannot_be_asked(stack: Stack) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"

    shown = paylayer(stack, "health", TELEGRAM_API_BASE=nowhere)

    assert shown.returncode == 0, shown.stdout + shown.stderr  # our services are still up
    assert "webhook       UNKNOWN (Bot API unreachable" in shown.stdout
    assert "Traceback" not in shown.stderr
