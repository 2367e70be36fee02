"""Old processed and ignored events leave the inbox, so it does not grow for ever."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from payments_service.store import Store

log = logging.getLogger(__name__)


async def forget_old_events(store: Store, days: int, every_seconds: float = 3600) -> None:
    """Background job: every hour, delete what is older than `days` (0 keeps everything).

    A provider redelivers for days, not months (Stripe 3 days, Telegram 24 h), so a duplicate
    of a forgotten event cannot come; and were one replayed, its grant is idempotent by source.
    """
    if days <= 0:
        return
    while True:
        try:
            forgotten = await store.forget_done_events(timedelta(days=days))
            if forgotten:
                log.info("forgot %d events older than %d days", forgotten, days)
        except Exception as error:  # the database may be restarting; the next round retries
            log.warning("old events not forgotten: %r", error)
        await asyncio.sleep(every_seconds)
