"""The change feed behind WatchEntitlements: every change this replica hears, fanned out.

A subscriber that falls behind, or a listener that loses PostgreSQL, ends the streams with
UNAVAILABLE: changes may have been missed, so the caller must resubscribe and reload.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime

from entitlements_service import wire
from paylayer.errors import Unavailable
from protos.entitlements.v1 import entitlements_pb2

MAX_PENDING = 10_000
HEARTBEAT_EVERY_SECONDS = 0.2


class Subscription:
    def __init__(self, user_id: str, heartbeats: bool) -> None:
        self.user_id = user_id
        self.heartbeats = heartbeats
        self._pending: deque[entitlements_pb2.EntitlementChange] = deque()
        self._wake = asyncio.Event()
        self._ended: str | None = None

    def offer(self, change: entitlements_pb2.EntitlementChange) -> None:
        if len(self._pending) >= MAX_PENDING:
            self.end("watcher fell behind; resubscribe")
            return
        self._pending.append(change)
        self._wake.set()

    def end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
        self._wake.set()

    async def next(self) -> entitlements_pb2.EntitlementChange:
        while True:
            if self._ended is not None:
                raise Unavailable(self._ended)
            if self._pending:
                return self._pending.popleft()
            self._wake.clear()
            await self._wake.wait()


class ChangeFeed:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._in_step = False
        self._last_heartbeat = 0.0

    def subscribe(self, user_id: str, *, heartbeats: bool) -> Subscription:
        if not self._in_step:
            raise Unavailable("not listening to changes yet; try again")
        subscription = Subscription(user_id, heartbeats)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, change: entitlements_pb2.EntitlementChange) -> None:
        for subscription in self._subscriptions:
            if not subscription.user_id or subscription.user_id == change.user_id:
                subscription.offer(change)

    def heard_everything(self) -> None:
        """The listener is in step: pass a heartbeat on to those who asked, a few a second."""
        self._in_step = True
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_EVERY_SECONDS:
            return
        self._last_heartbeat = now
        heartbeat = entitlements_pb2.EntitlementChange(
            action="heartbeat", changed_at=wire.to_proto_time(datetime.now(UTC))
        )
        for subscription in self._subscriptions:
            if subscription.heartbeats:
                subscription.offer(heartbeat)

    def interrupt(self, reason: str) -> None:
        """Changes may be missed from now on: end every stream so callers start afresh."""
        self._in_step = False
        for subscription in self._subscriptions:
            subscription.end(reason)
        self._subscriptions.clear()
