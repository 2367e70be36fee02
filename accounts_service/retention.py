"""Snapshot history older than SNAPSHOT_HISTORY_DAYS is forgotten, so it does not grow for ever."""

from __future__ import annotations

from accounts_service.use_cases import Accounts
from paylayer.retention import forget_periodically


async def forget_old_history(accounts: Accounts, days: int, every_seconds: float = 3600) -> None:
    """Background job: every hour, delete points older than `days` (0 keeps everything)."""
    await forget_periodically(
        accounts.forget_old_history, days, "snapshot history points", every_seconds
    )
