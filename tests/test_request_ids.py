"""One request id per event, from the webhook through every gRPC hop into every log line."""

from __future__ import annotations

import json
import secrets

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from tests.payments.helpers import post_stripe, wait_settled
from tests.stack import Stack


async def test_a_stripe_event_id_is_the_request_id_in_every_service_log(
    stack: Stack, engine: AsyncEngine
) -> None:
    catalogue = load_catalogue(stack.settings.catalogue_path)
    buyer = secrets.randbelow(10**12) + 10**9  # a new buyer: accounts logs the new user
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    async with aiohttp.ClientSession() as http:
        assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [event["id"]])

    request_id = f"stripe:{event['id']}"
    messages_by_service: dict[str, list[str]] = {}
    for name in ("gateway", "payments", "accounts", "entitlements"):
        for line in (stack.log_dir / f"{name}.log").read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    messages_by_service.setdefault(name, []).append(record["message"])
    assert set(messages_by_service) == {"gateway", "payments", "accounts", "entitlements"}, (
        messages_by_service
    )
    assert any("created user" in m for m in messages_by_service["accounts"])
    assert any(m.startswith("grant premium stripe/") for m in messages_by_service["entitlements"])
