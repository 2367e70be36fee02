"""The payments ledger's own rules, pure: the order a purchase's status moves in.

The store's upsert is generated from STATUS_RANK (store._upsert_payment_statement), and
tests/payments/test_status_order.py checks every pair of statuses through PostgreSQL against
`status_after`, so the SQL and this rule cannot drift apart.
"""

from __future__ import annotations

# A purchase's status only moves forward: a late `charge.failed` never hides a success, and a
# late `charge.succeeded` never hides a refund.
STATUS_RANK = {
    "failed": 0,
    "awaiting_payment": 1,
    "authorized": 2,
    "succeeded": 3,
    # Paid an invoice whose own grant stands for it (Stripe basil): its charge's grant was undone.
    "superseded": 4,
    "partially_refunded": 5,
    "refunded": 6,
    "disputed": 7,
    "dispute_lost": 8,
    "dispute_won": 9,
}
# A status this list does not know ranks below all: any known one replaces it.
UNKNOWN_RANK = -1


def status_after(stored: str, incoming: str) -> str:
    """The status a payment keeps when `incoming` arrives for it; ties go to the newcomer."""
    rank = STATUS_RANK.get
    return incoming if rank(incoming, UNKNOWN_RANK) >= rank(stored, UNKNOWN_RANK) else stored
