"""ReconcileTelegram: Stars payments whose update never reached us (Telegram keeps updates
24 hours, transactions for ever) are recorded from the transaction list. The inbox's workers
apply them, in batches, as they apply any recorded event: a backfill of thousands does not
hold the RPC open for one apply after another."""

from __future__ import annotations

import json
from dataclasses import dataclass

from payments_service import telegram_updates
from payments_service.bot_api import BotApi
from payments_service.store import Store


@dataclass(frozen=True)
class Reconciled:
    transactions_seen: int
    payments_recorded: int


async def reconcile_telegram(store: Store, bot: BotApi) -> Reconciled:
    """Record each paid transaction we have no payment for, under the key its update would
    have had: a second run, or the update arriving late, records nothing more."""
    transactions = await bot.star_transactions()
    recorded = 0
    for transaction in transactions:
        update = telegram_updates.update_from_transaction(transaction)
        if update is None:
            continue
        charge_id = update["message"]["successful_payment"]["telegram_payment_charge_id"]
        if await store.has_payment("telegram", charge_id):
            continue
        _event, duplicate = await store.record(
            "telegram",
            telegram_updates.event_key(update, "successful_payment"),
            "successful_payment",
            json.dumps(update).encode(),
        )
        if not duplicate:
            recorded += 1
    return Reconciled(transactions_seen=len(transactions), payments_recorded=recorded)
