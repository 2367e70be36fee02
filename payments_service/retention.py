"""Old processed and ignored events leave the inbox, so it does not grow for ever."""

from __future__ import annotations

from paylayer.retention import forget_periodically
from payments_service.store import Store


async def forget_old_events(store: Store, days: int, every_seconds: float = 3600) -> None:
    """Background job: every hour, delete what is older than `days` (0 keeps everything).

    A provider redelivers for days, not months (Stripe 3 days, Telegram 24 h), so a duplicate
    of a forgotten event cannot come; and were one replayed, its grant is idempotent by source.
    """
    await forget_periodically(store.forget_done_events, days, "events", every_seconds)
