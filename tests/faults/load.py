"""A steady load of signed Stripe and Telegram purchases, and the exactly-once verdict on it.

Each purchase is by a new buyer for `premium_30d`, so after everything settles each buyer must
hold exactly one grant of exactly 30 days: a lost event shows as no access, a doubled one as
60 days or two grants.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import sign_stripe, stripe_event, telegram_update
from payments_service import telegram_updates
from payments_service.tables import inbox
from tests.payments.helpers import check, days_left, user_of_telegram
from tests.stack import Stack


@dataclass
class Purchase:
    provider: str
    event_id: str
    buyer: int
    statuses: list[int] = field(default_factory=list)
    # Set by assert_each_took_effect_once: "once", "lost" or "doubled".
    outcome: str = "unchecked"

    @property
    def delivered(self) -> bool:
        return 200 in self.statuses


@dataclass
class Load:
    stack: Stack
    rate_per_second: float = 20
    # Like Stripe and Telegram: a delivery answered with anything but 2xx is sent again.
    redeliver: bool = False
    purchases: list[Purchase] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        catalogue = load_catalogue(self.stack.settings.catalogue_path)
        tasks: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            sequence = 0
            while not self._stop.is_set():
                buyer = secrets.randbelow(10**12) + 10**9
                if sequence % 2:
                    update = telegram_update(
                        "payment", catalogue, telegram_user_id=buyer, sku="premium_30d"
                    )
                    purchase = Purchase(
                        "telegram", telegram_updates.event_key(update, "successful_payment"), buyer
                    )
                    send = self._telegram(http, json.dumps(update).encode(), purchase)
                else:
                    event = stripe_event(
                        "checkout.session.completed",
                        catalogue,
                        sku="premium_30d",
                        telegram_user_id=buyer,
                    )
                    purchase = Purchase("stripe", event["id"], buyer)
                    send = self._stripe(http, json.dumps(event), purchase)
                self.purchases.append(purchase)
                tasks.append(asyncio.create_task(send))
                sequence += 1
                await asyncio.sleep(1 / self.rate_per_second)
            await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()

    async def _deliver(
        self,
        http: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: dict[str, str] | None,
        purchase: Purchase,
        sign: bool = False,
    ) -> None:
        deadline = time.monotonic() + 120
        while True:
            if sign:
                headers = {
                    "Stripe-Signature": sign_stripe(
                        body.decode(), self.stack.settings.stripe_webhook_secrets[0]
                    )
                }
            try:
                async with http.post(
                    url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
                ) as reply:
                    await reply.read()
                    purchase.statuses.append(reply.status)
            except (aiohttp.ClientError, TimeoutError):
                purchase.statuses.append(0)  # no answer at all (the gateway itself was down)
            if purchase.delivered or not self.redeliver or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    async def _stripe(self, http: aiohttp.ClientSession, body: str, purchase: Purchase) -> None:
        await self._deliver(
            http,
            f"{self.stack.gateway_url}/api/v1/stripe/webhook",
            body.encode(),
            None,
            purchase,
            sign=True,
        )

    async def _telegram(self, http: aiohttp.ClientSession, body: bytes, purchase: Purchase) -> None:
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.stack.settings.telegram_webhook_secret}
        await self._deliver(
            http, f"{self.stack.gateway_url}/api/v1/telegram/webhook", body, headers, purchase
        )


async def pending_count(engine: AsyncEngine, purchases: list[Purchase]) -> int:
    """Delivered purchases not applied yet: pending, or not in the inbox at all (a wrong key
    must not pass for settled)."""
    delivered = {p.event_id for p in purchases if p.delivered}
    async with engine.connect() as connection:
        settled = await connection.scalar(
            select(func.count()).where(
                inbox.c.provider.in_(("stripe", "telegram")),
                inbox.c.status != "pending",
                inbox.c.event_id.in_(delivered),
            )
        )
    return len(delivered) - int(settled or 0)


async def settle(engine: AsyncEngine, purchases: list[Purchase], within: float) -> float:
    """Seconds until none of these purchases is pending; fails after `within`."""
    started = time.monotonic()
    while await pending_count(engine, purchases):
        if time.monotonic() - started > within:
            raise AssertionError(
                f"still pending after {within} s: {await pending_count(engine, purchases)}"
            )
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def assert_each_took_effect_once(stack: Stack, purchases: list[Purchase]) -> None:
    """Each delivered purchase: one grant of 30 days for its buyer; none lost, none doubled."""
    problems = []
    for purchase in purchases:
        if not purchase.delivered:
            continue
        user_id = await user_of_telegram(stack, purchase.buyer)
        reply = await check(stack, user_id, "premium")
        once = reply.active and len(reply.grants) == 1 and 29.9 < days_left(reply) <= 30.0
        purchase.outcome = "once" if once else ("lost" if not reply.active else "doubled")
        if not once:
            problems.append(
                (
                    purchase.provider,
                    purchase.event_id,
                    reply.active,
                    len(reply.grants),
                    round(days_left(reply), 2),
                )
            )
    # Printed before the assert, so a failing run shows its real tally, not only a passing one.
    tally = {
        kind: sum(p.outcome == kind for p in purchases) for kind in ("once", "lost", "doubled")
    }
    print(f"\nTALLY delivered={sum(p.delivered for p in purchases)} {tally}")
    assert not problems, (
        f"{len(problems)} purchases did not take effect exactly once ({tally}): {problems[:5]}"
    )


def figure(what: str, purchases: list[Purchase], **extra: object) -> None:
    """One line of figures for docs/RELIABILITY.md (shown with pytest -s)."""
    answers: dict[int, int] = {}
    for purchase in purchases:
        for status in purchase.statuses:
            answers[status] = answers.get(status, 0) + 1
    outcomes = {kind: sum(p.outcome == kind for p in purchases) for kind in ("lost", "doubled")}
    unchecked = sum(p.outcome == "unchecked" for p in purchases)
    details = " ".join(f"{key}={value}" for key, value in extra.items())
    print(
        f"\nFIGURE {what}: purchases={len(purchases)} answers={answers}"
        f" lost={outcomes['lost']} doubled={outcomes['doubled']} unchecked={unchecked} {details}"
    )
