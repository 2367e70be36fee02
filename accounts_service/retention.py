"""Snapshot history older than SNAPSHOT_HISTORY_DAYS is forgotten, so it does not grow for ever."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from accounts_service.use_cases import Accounts

log = logging.getLogger(__name__)


async def forget_old_history(accounts: Accounts, days: int, every_seconds: float = 3600) -> None:
    """Background job: every hour, delete points older than `days` (0 keeps everything).

    Each round deletes about an hour of points, so no round holds locks for long.
    """
    if days <= 0:
        return
    while True:
        try:
            forgotten = await accounts.forget_old_history(timedelta(days=days))
            if forgotten:
                log.info("forgot %d snapshot history points older than %d days", forgotten, days)
        except Exception as error:  # the database may be restarting; the next round retries
            log.warning("old snapshot history not forgotten: %r", error)
        await asyncio.sleep(every_seconds)
