"""gRPC adapter of the entitlements service: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements_service import rules, wire
from entitlements_service.cache import CheckCache
from entitlements_service.feed import ChangeFeed
from entitlements_service.metrics import CHECK_CACHE_HITS, CHECK_CACHE_MISSES, GRANTS, REVOKES
from entitlements_service.rules import Grant, Source
from entitlements_service.store import EntitlementStore, Revocation
from paylayer.callers import GRANTS_LIMITED_TO, caller_var
from paylayer.errors import DomainError, InvalidArgument, PermissionDenied
from paylayer.logs import request_id_var
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

log = logging.getLogger(__name__)

# Grants from these come from a payment, which names its event; any other provider (manual,
# promotional, ...) is a person's decision and must say why and who.
PAYMENT_PROVIDERS = frozenset({"stripe", "telegram"})
MAX_ID_LENGTH = 256
MAX_REASON_LENGTH = 1000
MAX_BATCH = 500
# Far enough for any real term, near enough that datetime arithmetic cannot overflow.
MAX_DURATION = timedelta(days=365 * 100)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


# A batch of checks: its size, and its database loads at once (cache misses).
MAX_CHECKS_PER_CALL = 1000
BATCH_LOADS_AT_ONCE = 8


class EntitlementsServicer(entitlements_pb2_grpc.EntitlementsServiceServicer):
    def __init__(
        self,
        store: EntitlementStore,
        cache: CheckCache,
        feed: ChangeFeed,
        granting_tiers: Mapping[str, frozenset[str]],
    ) -> None:
        self._store = store
        self._cache = cache
        self._feed = feed
        # entitlement -> the tiers whose grants answer it (vip answers premium)
        self._granting_tiers = granting_tiers

    async def CheckEntitlement(
        self,
        request: entitlements_pb2.CheckEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.CheckEntitlementResponse:
        # The hot path: two cheap checks, then (nearly always) a dictionary hit.
        user_id = request.user_id
        entitlement = request.entitlement
        if not user_id or len(user_id) > MAX_ID_LENGTH or "\x00" in user_id:
            raise InvalidArgument("user_id is required (at most 256 characters, no NUL)")
        if entitlement not in self._granting_tiers:
            raise InvalidArgument(self._unknown_entitlement(entitlement))
        remembered = self._cache.answer_from_memory(user_id, entitlement)
        if remembered is not None:
            CHECK_CACHE_HITS.inc()
            return remembered
        CHECK_CACHE_MISSES.inc()
        return await self._cache.check(user_id, entitlement)

    async def CheckEntitlements(
        self,
        request: entitlements_pb2.CheckEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.CheckEntitlementsResponse:
        if len(request.checks) > MAX_CHECKS_PER_CALL:
            raise InvalidArgument(f"at most {MAX_CHECKS_PER_CALL} checks per call")
        for check in request.checks:
            if not check.user_id or len(check.user_id) > MAX_ID_LENGTH or "\x00" in check.user_id:
                raise InvalidArgument("user_id is required (at most 256 characters, no NUL)")
            if check.entitlement not in self._granting_tiers:
                raise InvalidArgument(self._unknown_entitlement(check.entitlement))
        loads = asyncio.Semaphore(BATCH_LOADS_AT_ONCE)

        async def answer(check: entitlements_pb2.CheckEntitlementRequest) -> Any:
            remembered = self._cache.answer_from_memory(check.user_id, check.entitlement)
            if remembered is not None:
                return remembered
            # Misses load from the database: a few at a time, so a pass leaves the pool to others.
            async with loads:
                return await self._cache.check(check.user_id, check.entitlement)

        results = await asyncio.gather(*(answer(check) for check in request.checks))
        return entitlements_pb2.CheckEntitlementsResponse(results=results)

    async def ListEntitlements(
        self,
        request: entitlements_pb2.ListEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.ListEntitlementsResponse:
        _require_id("user_id", request.user_id)
        grants = await self._store.grants_of_user(
            request.user_id, include_revoked=request.include_revoked
        )
        windows_by_entitlement = rules.stack_by_entitlement(grants)
        window_of = {
            window.grant.grant_id: window
            for windows in windows_by_entitlement.values()
            for window in windows
        }
        now = datetime.now(UTC)
        response = entitlements_pb2.ListEntitlementsResponse()
        for entitlement in sorted(self._granting_tiers):
            answer = rules.answer(
                rules.windows_for_check(windows_by_entitlement, self._granting_tiers[entitlement]),
                now,
            )
            status = response.entitlements.add(
                entitlement=entitlement, active=answer.active, lifetime=answer.lifetime
            )
            if answer.expires_at is not None:
                status.expires_at.CopyFrom(wire.timestamp(answer.expires_at))
        for grant in sorted(grants, key=lambda g: g.purchase_order):
            response.grants.append(wire.grant_message(grant, window_of.get(grant.grant_id)))
        return response

    async def GrantEntitlement(
        self,
        request: entitlements_pb2.GrantEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.GrantEntitlementResponse:
        caller = caller_var.get()
        _check_source_allowed(caller, request.source.provider)
        new = self._grant_of(request, caller)
        standing, created = await self._store.grant(new, on_behalf_of=request.granted_by)
        GRANTS.labels(new.source.provider, "created" if created else "duplicate").inc()
        log.info(
            "grant %s %s/%s to %s (%s)",
            standing.entitlement,
            new.source.provider,
            new.source.reference,
            standing.user_id,
            "created" if created else "already granted",
        )
        # Read-your-writes on this replica; the others hear the NOTIFY.
        self._cache.invalidate(standing.user_id)
        window = await self._window_of(standing)
        return entitlements_pb2.GrantEntitlementResponse(
            grant=wire.grant_message(standing, window), created=created
        )

    async def GrantEntitlements(
        self,
        request: entitlements_pb2.GrantEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.GrantEntitlementsResponse:
        if len(request.grants) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} grants in one call")
        caller = caller_var.get()
        results = [entitlements_pb2.GrantEntitlementResult() for _ in request.grants]
        valid: list[tuple[int, Grant]] = []
        for index, item in enumerate(request.grants):
            try:
                _check_source_allowed(caller, item.source.provider)
                valid.append((index, self._grant_of(item, caller)))
            except DomainError as error:
                results[index].code, results[index].message = error.code.value[0], error.message
        outcomes = await self._store.grant_many([new for _, new in valid])
        for (index, new), (standing, created) in zip(valid, outcomes, strict=True):
            GRANTS.labels(new.source.provider, "created" if created else "duplicate").inc()
            self._cache.invalidate(standing.user_id)
            results[index].grant.CopyFrom(wire.grant_message(standing))
            results[index].created = created
            # Each grant logged under its own event's request id, as a single grant is.
            token = request_id_var.set(new.event_id or request_id_var.get())
            log.info(
                "grant %s %s/%s to %s (%s, in a batch of %d)",
                standing.entitlement,
                new.source.provider,
                new.source.reference,
                standing.user_id,
                "created" if created else "already granted",
                len(request.grants),
            )
            request_id_var.reset(token)
        return entitlements_pb2.GrantEntitlementsResponse(results=results)

    async def RevokeEntitlement(
        self,
        request: entitlements_pb2.RevokeEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.RevokeEntitlementResponse:
        caller = caller_var.get()
        _check_source_allowed(caller, request.source.provider)
        source = _source_of(request.source)
        _limit("event_id", request.event_id, MAX_ID_LENGTH)
        _limit("reason", request.reason, MAX_REASON_LENGTH)
        _limit("revoked_by", request.revoked_by, MAX_ID_LENGTH)
        outcome = await self._store.revoke(
            Revocation(
                source=source,
                event_id=request.event_id,
                reason=request.reason,
                revoked_by=caller,
                on_behalf_of=request.revoked_by,
            )
        )
        REVOKES.labels(source.provider, "tombstone" if outcome.tombstone else "revoked").inc()
        log.info(
            "revoke %s/%s (%s)",
            source.provider,
            source.reference,
            "tombstone: not granted yet" if outcome.tombstone else "revoked",
        )
        response = entitlements_pb2.RevokeEntitlementResponse(tombstone=outcome.tombstone)
        if outcome.grant is not None:
            self._cache.invalidate(outcome.grant.user_id)
            response.grant.CopyFrom(wire.grant_message(outcome.grant))
        return response

    async def WatchEntitlements(
        self,
        request: entitlements_pb2.WatchEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[entitlements_pb2.EntitlementChange]:
        _limit("user_id", request.user_id, MAX_ID_LENGTH)
        subscription = self._feed.subscribe(request.user_id, heartbeats=request.heartbeats)
        try:
            while True:
                yield await subscription.next()
        finally:
            self._feed.unsubscribe(subscription)

    def _grant_of(self, request: entitlements_pb2.GrantEntitlementRequest, caller: str) -> Grant:
        _require_id("user_id", request.user_id)
        if request.entitlement not in self._granting_tiers:
            raise InvalidArgument(self._unknown_entitlement(request.entitlement))
        source = _source_of(request.source)
        _limit("event_id", request.event_id, MAX_ID_LENGTH)
        _limit("reason", request.reason, MAX_REASON_LENGTH)
        _limit("granted_by", request.granted_by, MAX_ID_LENGTH)
        if source.provider in PAYMENT_PROVIDERS:
            if not request.event_id:
                raise InvalidArgument("event_id is required for a grant paid through a provider")
        elif not request.reason:
            raise InvalidArgument("a manual grant needs a reason")
        purchased_at = (
            _moment("purchased_at", request.purchased_at)
            if request.HasField("purchased_at")
            else datetime.now(UTC)
        )
        term = request.WhichOneof("term")
        duration: timedelta | None = None
        until: datetime | None = None
        if term == "duration_seconds":
            duration = timedelta(seconds=request.duration_seconds)
            if not timedelta(0) < duration <= MAX_DURATION:
                raise InvalidArgument("duration_seconds must be positive (at most 100 years)")
        elif term == "until":
            until = _moment("until", request.until)
            if until <= purchased_at:
                raise InvalidArgument("until must be after purchased_at")
        elif term == "lifetime":
            if not request.lifetime:
                raise InvalidArgument("lifetime, when given, must be true")
        else:
            raise InvalidArgument("give a term: duration_seconds, until or lifetime")
        return Grant(
            grant_id=str(uuid.uuid4()),
            user_id=request.user_id,
            entitlement=request.entitlement,
            source=source,
            event_id=request.event_id,
            purchased_at=purchased_at,
            duration=duration,
            until=until,
            lifetime=term == "lifetime",
            reason=request.reason,
            # Who it was is taken from the credential, never from the request.
            granted_by=caller,
        )

    async def _window_of(self, grant: Grant) -> rules.Window | None:
        if grant.revoked:
            return None
        grants = await self._store.grants_of_user(grant.user_id, include_revoked=False)
        for window in rules.stack(g for g in grants if g.entitlement == grant.entitlement):
            if window.grant.grant_id == grant.grant_id:
                return window
        return None

    def _unknown_entitlement(self, entitlement: str) -> str:
        known = ", ".join(sorted(self._granting_tiers))
        return f"unknown entitlement {entitlement[:MAX_ID_LENGTH]!r} (known: {known})"


def _check_source_allowed(caller: str, provider: str) -> None:
    allowed = GRANTS_LIMITED_TO.get(caller)
    if allowed is not None and provider not in allowed:
        raise PermissionDenied(
            f"{caller} may grant and revoke only {', '.join(sorted(allowed))} sources"
        )


def _source_of(source: entitlements_pb2.Source) -> Source:
    _require_id("source.provider", source.provider)
    _require_id("source.reference", source.reference)
    return Source(provider=source.provider, reference=source.reference)


def _moment(name: str, message: Timestamp) -> datetime:
    try:
        moment = wire.moment_of(message)
    except (ValueError, OverflowError):
        moment = None
    if moment is None or not EARLIEST <= moment < LATEST:
        raise InvalidArgument(f"{name} must lie between the years 2000 and 2200")
    return moment


def _require_id(name: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} is required")
    _limit(name, value, MAX_ID_LENGTH)


def _limit(name: str, value: str, most: int) -> None:
    if len(value) > most:
        raise InvalidArgument(f"{name} is longer than {most} characters")
    if "\x00" in value:
        # PostgreSQL text cannot hold it: refused here rather than failing in the database.
        raise InvalidArgument(f"{name} contains a NUL character")
