"""A retention job: every hour, forget what is older than a number of days."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

log = logging.getLogger(__name__)


async def forget_periodically(
    forget: Callable[[timedelta], Awaitable[int]],
    days: int,
    what: str,
    every_seconds: float = 3600,
) -> None:
    """Call `forget(older_than)` every `every_seconds` (0 days keeps everything). A round that
    fails (the database restarting) is logged; the next one tries again."""
    if days <= 0:
        return
    while True:
        try:
            forgotten = await forget(timedelta(days=days))
            if forgotten:
                log.info("forgot %d %s older than %d days", forgotten, what, days)
        except Exception as error:
            log.warning("old %s not forgotten: %r", what, error)
        await asyncio.sleep(every_seconds)
