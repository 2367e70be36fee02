"""LISTEN on a dedicated asyncpg connection: hear every replica's changes, prove it by heartbeat.

It reconnects by itself. While it is away the cache is distrusted and watch streams are ended;
on its return the cache starts empty, because changes may have passed unheard.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg

from entitlements_service import wire
from entitlements_service.cache import CheckCache
from entitlements_service.feed import ChangeFeed
from entitlements_service.tables import CHANGES_CHANNEL

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 0.1
STATEMENT_TIMEOUT_SECONDS = 2.0
RECONNECT_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0)
UNANSWERED_HEARTBEATS_BEFORE_RECONNECT = 30


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class ChangeListener:
    def __init__(self, database_url: str, cache: CheckCache, feed: ChangeFeed) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._cache = cache
        self._feed = feed
        self._replica = uuid.uuid4().hex[:12]
        self._sequence = 0
        # heartbeat sequence -> time.monotonic() when it was sent
        self._sent: dict[int, float] = {}

    async def run(self) -> None:
        """Background job of the server: listen for ever, reconnecting after any failure."""
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    timeout=STATEMENT_TIMEOUT_SECONDS,
                    server_settings={"application_name": "entitlements-listener"},
                )
                await connection.add_listener(CHANGES_CHANNEL, self._on_notice)
                # Anything committed while we were away went unheard.
                self._cache.invalidate_all()
                log.info("listening for entitlement changes")
                failures = 0
                await self._beat(connection)
            except Exception as error:
                # Whatever went wrong, the answer is the same: distrust, reconnect.
                log.warning("change listener lost PostgreSQL: %r", error)
            finally:
                self._cache.distrust()
                self._feed.interrupt("entitlement changes interrupted; resubscribe")
                self._sent.clear()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(RECONNECT_BACKOFF_SECONDS[min(failures, 3)])
            failures += 1

    async def _beat(self, connection: asyncpg.Connection) -> None:
        while not connection.is_closed():
            if len(self._sent) > UNANSWERED_HEARTBEATS_BEFORE_RECONNECT:
                # Open but deaf (a proxy, a stuck backend): only a new connection can tell.
                raise TimeoutError("heartbeats are not coming back")
            self._sequence += 1
            self._sent[self._sequence] = time.monotonic()
            await connection.execute(
                "SELECT pg_notify($1, $2)",
                CHANGES_CHANNEL,
                f"{wire.HEARTBEAT_PREFIX}{self._replica}:{self._sequence}",
                timeout=STATEMENT_TIMEOUT_SECONDS,
            )
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
        raise asyncpg.InterfaceError("listener connection closed")

    def _on_notice(
        self, connection: asyncpg.Connection, pid: int, channel: str, payload: str
    ) -> None:
        if payload.startswith(wire.HEARTBEAT_PREFIX):
            replica, _, sequence = payload[len(wire.HEARTBEAT_PREFIX) :].partition(":")
            if replica == self._replica:
                self._heard_heartbeat(int(sequence))
            return
        if payload.startswith(wire.USER_CHANGED_PREFIX):
            self._cache.invalidate(payload[len(wire.USER_CHANGED_PREFIX) :])
            return
        if payload == wire.ALL_CHANGED:
            self._cache.invalidate_all()
            return
        try:
            change = wire.parse_change_notice(payload)
        except Exception:
            # Not ours to understand; a malformed notice must not stop the listener.
            log.exception("unreadable change notice")
            return
        self._cache.invalidate(change.user_id)
        self._feed.publish(change)

    def _heard_heartbeat(self, sequence: int) -> None:
        sent_at = self._sent.get(sequence)
        if sent_at is None:
            return
        for earlier in [s for s in self._sent if s <= sequence]:
            del self._sent[earlier]
        self._cache.heard_everything_before(sent_at)
        self._feed.heard_everything()
