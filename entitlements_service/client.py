"""A small client for internal callers of the entitlements service.

Every call carries a deadline; a call refused with UNAVAILABLE (nothing reached a server, or the
server could not reach its database) is retried within that deadline, and no other failure is.
Grant and revoke are idempotent per source, so retrying them is safe.

With `local_cache=True` check answers are kept in this process, fed by a WatchEntitlements
stream with heartbeats: an answer is served from memory only while a heartbeat came less than
`TRUST_SECONDS` ago, and dropped as soon as a change for its user arrives.

It imports only the protos and the shared kit, so it can live in any service's tree as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc

from paylayer.grpc_client import open_channel
from paylayer.tls import GrpcTls
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_SECONDS = 1.0
DEFAULT_ATTEMPTS = 3
FIRST_BACKOFF_SECONDS = 0.05
# The server sends a heartbeat every 0.2 s while it is in step with the database, itself at most
# 0.9 s behind: the two together keep a cached answer within about a second of the truth.
TRUST_SECONDS = 0.5
# A stream needs a deadline too; it is simply renewed when it passes.
WATCH_DEADLINE_SECONDS = 3600.0
MAX_CACHED_USERS = 100_000

Reply = TypeVar("Reply")
CheckResponse = entitlements_pb2.CheckEntitlementResponse


class EntitlementsClient:
    def __init__(
        self,
        addr: str,
        internal_token: str,
        *,
        deadline: float = DEFAULT_DEADLINE_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
        local_cache: bool = False,
        tls: GrpcTls | None = None,
    ) -> None:
        # This client retries by itself (within its deadline, `attempts` in all), so the
        # channel does not retry too; the channel's interceptors add the token to every call.
        self._channel = open_channel(
            addr, internal_token, tls=tls, default_deadline=deadline, retries=False
        )
        self._stub = entitlements_pb2_grpc.EntitlementsServiceStub(self._channel)
        self._deadline = deadline
        self._attempts = attempts
        self._local_cache = local_cache
        # user_id -> entitlement -> (answer, good until as time.time())
        self._answers: dict[str, dict[str, tuple[CheckResponse, float]]] = {}
        self._heard_at = -math.inf  # time.monotonic() of the last heartbeat
        self._changes_seen = 0  # an answer fetched across a change is not kept
        self._follower: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EntitlementsClient:
        if self._local_cache and self._follower is None:
            self._follower = asyncio.create_task(self._follow_changes(), name="entitlements-watch")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await self._channel.close()

    async def check(self, user_id: str, entitlement: str) -> CheckResponse:
        trusted = time.monotonic() - self._heard_at < TRUST_SECONDS
        if trusted:
            cached = self._answers.get(user_id, {}).get(entitlement)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
        changes_before = self._changes_seen
        answer = await self._call(
            self._stub.CheckEntitlement,
            entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=entitlement),
        )
        if self._local_cache and trusted and self._changes_seen == changes_before:
            # Whole seconds, rounded down: a little early is safe, late is not.
            good_until = answer.recheck_at.seconds if answer.HasField("recheck_at") else math.inf
            if user_id not in self._answers and len(self._answers) >= MAX_CACHED_USERS:
                del self._answers[next(iter(self._answers))]  # the oldest first
            self._answers.setdefault(user_id, {})[entitlement] = (answer, good_until)
        return answer

    def cached(self, user_id: str) -> bool:
        """Whether an answer for this user would come from memory now (for tests and metrics)."""
        return bool(self._answers.get(user_id)) and (
            time.monotonic() - self._heard_at < TRUST_SECONDS
        )

    async def list(
        self, user_id: str, *, include_revoked: bool = False
    ) -> entitlements_pb2.ListEntitlementsResponse:
        return await self._call(
            self._stub.ListEntitlements,
            entitlements_pb2.ListEntitlementsRequest(
                user_id=user_id, include_revoked=include_revoked
            ),
        )

    async def grant(
        self, request: entitlements_pb2.GrantEntitlementRequest
    ) -> entitlements_pb2.GrantEntitlementResponse:
        return await self._call(self._stub.GrantEntitlement, request)

    async def revoke(
        self, request: entitlements_pb2.RevokeEntitlementRequest
    ) -> entitlements_pb2.RevokeEntitlementResponse:
        return await self._call(self._stub.RevokeEntitlement, request)

    async def watch(
        self, user_id: str = "", *, heartbeats: bool = False
    ) -> AsyncIterator[entitlements_pb2.EntitlementChange]:
        """Changes as they happen; ends with the stream (resubscribe, and reload what you keep)."""
        call = self._stub.WatchEntitlements(
            entitlements_pb2.WatchEntitlementsRequest(user_id=user_id, heartbeats=heartbeats),
            timeout=WATCH_DEADLINE_SECONDS,
        )
        try:
            async for change in call:
                yield change
        finally:
            call.cancel()

    async def _call(self, method: Callable[..., Awaitable[Reply]], request: Any) -> Reply:
        give_up_at = time.monotonic() + self._deadline
        backoff = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self._attempts + 1):
            remaining = give_up_at - time.monotonic()
            try:
                return await method(request, timeout=max(remaining, 0.001))
            except grpc.aio.AioRpcError as error:
                retryable = error.code() == grpc.StatusCode.UNAVAILABLE
                if not retryable or attempt == self._attempts or remaining <= backoff:
                    raise
            await asyncio.sleep(backoff)
            backoff *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _follow_changes(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            self._forget_everything()
            try:
                async for change in self.watch(heartbeats=True):
                    backoff = FIRST_BACKOFF_SECONDS
                    if change.action == "heartbeat":
                        self._heard_at = time.monotonic()
                        continue
                    self._changes_seen += 1
                    self._answers.pop(change.user_id, None)
            except grpc.aio.AioRpcError as error:
                log.info("entitlements watch ended (%s); resubscribing", error.code().name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _forget_everything(self) -> None:
        self._heard_at = -math.inf
        self._changes_seen += 1
        self._answers.clear()


def expires_at(answer: entitlements_pb2.CheckEntitlementResponse) -> datetime | None:
    """The end of the entitled span, or None when inactive or lifetime."""
    if not answer.HasField("expires_at"):
        return None
    return answer.expires_at.ToDatetime(tzinfo=UTC)
