"""The `paylayer` command as an operator runs it, against the running stack."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

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
