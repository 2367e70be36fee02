"""Refunds asked of us (RefundPayment): the provider refunds, and the revoke goes through the
inbox like the provider's own refund notice would, so the two together take effect once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from paylayer.errors import NotFound
from payments_service import telegram_updates
from payments_service.bot_api import BotApi
from payments_service.checkout import Checkout
from payments_service.processor import Processor
from payments_service.store import Store


class Refunds:
    def __init__(
        self,
        store: Store,
        processor: Processor,
        bot: BotApi,
        checkout: Callable[[], Checkout],
    ) -> None:
        self._store = store
        self._processor = processor
        self._bot = bot
        # Reached only for a Stripe refund: a process without Stripe calls can refund Stars.
        self._checkout = checkout

    async def refund(self, provider: str, payment_key: str) -> dict[str, Any]:
        """Refund the whole payment; the payment as it stands afterwards."""
        if provider == "stripe":
            # The refund's charge.refunded webhook revokes, as for a refund made in Stripe.
            await self._checkout().refund_stripe(payment_key)
        else:
            await self._refund_stars(payment_key)
        payment = await self._store.get_payment(provider, payment_key)
        if payment is None:
            raise NotFound(f"no payment {payment_key}")
        return payment

    async def _refund_stars(self, charge_id: str) -> None:
        stored = await self._store.successful_payment_update(charge_id)
        purchase = None if stored is None else telegram_updates.stars_purchase(stored)
        if purchase is None:
            raise NotFound(f"no Stars payment {charge_id}")
        await self._bot.refund_star_payment(purchase.telegram_user_id, charge_id)
        refund = telegram_updates.refund_update(
            charge_id, purchase.invoice_payload, purchase.total_amount
        )
        event, _ = await self._store.record(
            "telegram",
            telegram_updates.event_key(refund, "refunded_payment"),
            "refunded_payment",
            json.dumps(refund).encode(),
        )
        # Applied now, so that the answer shows the refund.
        await self._processor.process(event.id)
