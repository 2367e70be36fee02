"""A payment's status moves one way, and the SQL that stores it agrees with the rule.

rules.status_after is the one statement of the order; the store's upsert is generated from
the same ranks. Every pair of statuses (and one the ranks do not know) is written through
PostgreSQL and must leave what the rule says, so neither can change without the other.
"""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from payments_service.rules import STATUS_RANK, status_after
from payments_service.store import Ledger

STATUSES = [*STATUS_RANK, "some_status_from_the_future"]


def test_a_late_failure_never_hides_a_success_nor_a_late_success_a_refund() -> None:
    assert status_after("succeeded", "failed") == "succeeded"
    assert status_after("refunded", "succeeded") == "refunded"
    assert status_after("succeeded", "refunded") == "refunded"
    assert status_after("some_status_from_the_future", "failed") == "failed"


async def test_the_database_keeps_the_status_the_rule_gives_for_every_pair(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            for stored, incoming in itertools.product(STATUSES, repeat=2):
                key = "pi_order_" + uuid.uuid4().hex
                ledger = Ledger(connection)
                for status in (stored, incoming):
                    await ledger.upsert_payment(provider="stripe", payment_key=key, status=status)
                row = await ledger.payment_row("stripe", key)
                assert row is not None
                assert row["status"] == status_after(stored, incoming), (stored, incoming)
        finally:
            # Nothing of it is kept: these payments were never made.
            await transaction.rollback()
