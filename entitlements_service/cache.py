"""The in-process check cache: one entry per user, never wrong for more than a second.

Entries are dropped the moment the listener hears a change for their user (NOTIFY, sent in the
change's own transaction). The safety net is not a TTL but a proof of hearing: the listener
sends itself a heartbeat notice several times a second, and PostgreSQL delivers notices in commit
order, so once a heartbeat sent at time T comes back, every change committed before T has been
applied. The cache answers only while such a T lies less than `TRUST_SECONDS` in the past;
otherwise every check reads the database. A TTL of a second would give the same bound but
would send most checks of a large user base to the database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from entitlements_service import rules, wire
from entitlements_service.rules import Grant, Window
from protos.entitlements.v1 import entitlements_pb2

log = logging.getLogger(__name__)

# Below a second, with room for a heartbeat or two to be late.
TRUST_SECONDS = 0.9
MAX_USERS = 500_000

CheckResponse = entitlements_pb2.CheckEntitlementResponse


class _UserEntry:
    """One user's stacked windows, and the answers computed from them so far."""

    __slots__ = ("answers", "windows_by_entitlement")

    def __init__(self, windows_by_entitlement: dict[str, list[Window]]) -> None:
        self.windows_by_entitlement = windows_by_entitlement
        # entitlement -> (response, valid until, as time.time())
        self.answers: dict[str, tuple[CheckResponse, float]] = {}


class CheckCache:
    def __init__(
        self,
        load_grants: Callable[[str], Awaitable[list[Grant]]],
        granting_tiers: Mapping[str, frozenset[str]],
        *,
        max_users: int = MAX_USERS,
        chats_by_tier: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        self._load_grants = load_grants
        # For explain: tier -> the Telegram chats it gives a seat in.
        self._chats_by_tier = chats_by_tier or {}
        self._granting_tiers = granting_tiers
        self._max_users = max_users
        self._users: dict[str, _UserEntry] = {}
        self._loading: dict[str, asyncio.Task[_UserEntry]] = {}
        # Users changed while their load was in flight: that load may predate the change.
        self._stale_loads: set[str] = set()
        self._trusted_until = 0.0  # time.monotonic()

    def answer_from_memory(self, user_id: str, entitlement: str) -> CheckResponse | None:
        """The hot path, with no await and no allocation: None when memory cannot answer."""
        entry = self._users.get(user_id)
        if entry is None or time.monotonic() >= self._trusted_until:
            return None
        cached = entry.answers.get(entitlement)
        now = time.time()
        if cached is not None and now < cached[1]:
            return cached[0]
        return self._answer(entry, entitlement, now)

    async def check(self, user_id: str, entitlement: str) -> CheckResponse:
        """The answer for `user_id` now; from memory when it can be trusted, else the database."""
        remembered = self.answer_from_memory(user_id, entitlement)
        if remembered is not None:
            return remembered
        entry = await self._load(user_id)
        return self._answer(entry, entitlement, time.time())

    def invalidate(self, user_id: str) -> None:
        self._users.pop(user_id, None)
        if user_id in self._loading:
            self._stale_loads.add(user_id)

    def invalidate_all(self) -> None:
        self._users.clear()
        self._stale_loads.update(self._loading)

    def heard_everything_before(self, sent_at: float) -> None:
        """Every change committed before `sent_at` (time.monotonic()) has been applied."""
        self._trusted_until = max(self._trusted_until, sent_at + TRUST_SECONDS)

    def distrust(self) -> None:
        self._trusted_until = 0.0

    def _answer(self, entry: _UserEntry, entitlement: str, now: float) -> CheckResponse:
        windows = rules.windows_for_check(
            entry.windows_by_entitlement, self._granting_tiers[entitlement]
        )
        if not windows:
            entry.answers[entitlement] = (_NEVER_ACTIVE, math.inf)
            return _NEVER_ACTIVE
        answer = rules.answer(windows, datetime.fromtimestamp(now, UTC))
        response = wire.check_response(answer, self._chats_by_tier)
        entry.answers[entitlement] = (response, _valid_until(answer))
        return response

    async def _load(self, user_id: str) -> _UserEntry:
        task = self._loading.get(user_id)
        if task is None:
            # One load per user however many checks wait for it; a cancelled caller does not
            # cancel the others' load.
            task = asyncio.create_task(self._fetch(user_id))
            task.add_done_callback(_retrieve_exception)
            self._loading[user_id] = task
        return await asyncio.shield(task)

    async def _fetch(self, user_id: str) -> _UserEntry:
        try:
            grants = await self._load_grants(user_id)
        finally:
            del self._loading[user_id]
            stale = user_id in self._stale_loads
            self._stale_loads.discard(user_id)
        entry = _UserEntry(rules.stack_by_entitlement(grants))
        if not stale:
            if len(self._users) >= self._max_users:
                # Oldest loaded first: dicts keep insertion order.
                del self._users[next(iter(self._users))]
            self._users[user_id] = entry
        return entry


_NEVER_ACTIVE = CheckResponse(active=False)


def _valid_until(answer: rules.Answer) -> float:
    """Until when this exact response stays right: its recheck time, or a window leaving it."""
    moments = [w.ends_at for w in answer.explain if w.ends_at is not None]
    if answer.recheck_at is not None:
        moments.append(answer.recheck_at)
    return min(moments).timestamp() if moments else math.inf


def _retrieve_exception(task: asyncio.Task[_UserEntry]) -> None:
    if not task.cancelled():
        task.exception()
