"""The `paylayer` command as an operator runs it, against the running stack."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys

import pytest

from tests.stack import Stack


def paylayer(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paylayer.cli", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_trigger_posts_a_signed_stripe_event_that_lands_in_the_inbox(stack: Stack) -> None:
    buyer = str(secrets.randbelow(10**12) + 10**9)
    sent = paylayer(
        stack,
        "trigger",
        "stripe",
        "checkout.session.completed",
        "--telegram-user",
        buyer,
        "--sku",
        "premium_30d",
        "--gateway",
        stack.gateway_url,
    )
    assert sent.returncode == 0, sent.stderr
    assert "HTTP 200" in sent.stdout
    event_id = sent.stdout.split()[1]
    listed = paylayer(
        stack, "events", "list", "--type", "checkout.session.completed", "--limit", "500", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    assert event_id in {e["event_id"] for e in json.loads(listed.stdout)["events"]}


def test_trigger_telegram_pre_checkout_gets_an_answer(stack: Stack) -> None:
    sent = paylayer(
        stack,
        "trigger",
        "telegram",
        "pre-checkout",
        "--user",
        "42",
        "--sku",
        "vip_30d",
        "--gateway",
        stack.gateway_url,
    )
    assert sent.returncode == 0, sent.stderr
    assert '"ok": true' in sent.stdout


def test_user_mistakes_are_one_line_errors_not_tracebacks(stack: Stack) -> None:
    missing = paylayer(stack, "events", "replay", "evt_does_not_exist")
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr
    unknown_sku = paylayer(
        stack,
        "trigger",
        "stripe",
        "charge.succeeded",
        "--sku",
        "gold",
        "--gateway",
        stack.gateway_url,
    )
    assert unknown_sku.returncode == 2 and "unknown sku" in unknown_sku.stderr


# One read per service, and the setting that says where that service is.
READS = {
    "payments": ("PAYMENTS_ADDR", ["events", "list"]),
    "entitlements": ("ENTITLEMENTS_ADDR", ["entitlements", "check", "user-nobody", "premium"]),
    "accounts": ("ACCOUNTS_ADDR", ["accounts", "resolve", "--telegram", "1"]),
}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("service", sorted(READS))
def test_a_service_that_is_not_there_is_a_one_line_error(stack: Stack, service: str) -> None:
    setting, args = READS[service]
    # A port nothing listens on: what the CLI meets when the service is stopped.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    result = subprocess.run(
        [sys.executable, "-m", "paylayer.cli", *args],
        env={**stack.env, setting: nowhere},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "UNAVAILABLE" in one_line_error(result)


@pytest.mark.parametrize("service", sorted(READS))
def test_a_wrong_token_is_a_one_line_unauthenticated_error(stack: Stack, service: str) -> None:
    _, args = READS[service]
    result = subprocess.run(
        [sys.executable, "-m", "paylayer.cli", *args],
        env={**stack.env, "INTERNAL_TOKEN": "not-the-token-" + secrets.token_hex(8)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "UNAUTHENTICATED" in one_line_error(result)


@pytest.mark.parametrize(
    "live",
    [
        {"PAYLAYER_TRIGGER_DISABLED": "1"},  # what the production image sets
        {"STRIPE_LIVEMODE": "true"},
        {"STRIPE_API_KEY": "sk_live_" + "0" * 24},
    ],
    ids=["production image", "livemode", "live key"],
)
def test_trigger_refuses_to_forge_webhooks_for_a_live_deployment(
    stack: Stack, live: dict[str, str]
) -> None:
    buyer = str(secrets.randbelow(10**12) + 10**9)
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "paylayer.cli", "trigger", "stripe", "charge.succeeded"),
            *("--telegram-user", buyer, "--sku", "vip_30d", "--gateway", stack.gateway_url),
        ],
        env={**stack.env, **live},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "refusing" in refused.stderr or "disabled" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""  # nothing was signed, nothing posted
