"""gRPC adapter of the entitlements service: proto in (wire), use case call, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from entitlements_service import wire
from entitlements_service.cache import CheckCache
from entitlements_service.feed import ChangeFeed
from entitlements_service.metrics import CHECK_CACHE_HITS, CHECK_CACHE_MISSES
from entitlements_service.use_cases import Entitlements, Granted
from paylayer import validation
from paylayer.callers import caller_var
from paylayer.errors import DomainError, InvalidArgument
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

MAX_BATCH = 500
MAX_AUDIT_ROWS = 1000


# A batch of checks: its size, and its database loads at once (cache misses).
MAX_CHECKS_PER_CALL = 1000
BATCH_LOADS_AT_ONCE = 8


class EntitlementsServicer(entitlements_pb2_grpc.EntitlementsServiceServicer):
    def __init__(self, entitlements: Entitlements, cache: CheckCache, feed: ChangeFeed) -> None:
        self._entitlements = entitlements
        self._cache = cache
        self._feed = feed

    async def CheckEntitlement(
        self,
        request: entitlements_pb2.CheckEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.CheckEntitlementResponse:
        # The hot path: two cheap checks, then (nearly always) a dictionary hit.
        user_id = validation.text("user_id", request.user_id, required=True)
        entitlement = request.entitlement
        self._entitlements.require_known(entitlement)
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
            validation.text("user_id", check.user_id, required=True)
            self._entitlements.require_known(check.entitlement)
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
        holdings = await self._entitlements.holdings(
            validation.text("user_id", request.user_id, required=True),
            include_revoked=request.include_revoked,
        )
        response = entitlements_pb2.ListEntitlementsResponse()
        for entitlement, answer in holdings.answers:
            status = response.entitlements.add(
                entitlement=entitlement, active=answer.active, lifetime=answer.lifetime
            )
            if answer.expires_at is not None:
                status.expires_at.CopyFrom(wire.to_proto_time(answer.expires_at))
        for grant, window in holdings.grants:
            response.grants.append(wire.grant_message(grant, window))
        return response

    async def GrantEntitlement(
        self,
        request: entitlements_pb2.GrantEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.GrantEntitlementResponse:
        granted = await self._entitlements.grant(wire.grant_order(request), caller_var.get())
        return entitlements_pb2.GrantEntitlementResponse(
            grant=wire.grant_message(granted.grant, granted.window), created=granted.created
        )

    async def GrantEntitlements(
        self,
        request: entitlements_pb2.GrantEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.GrantEntitlementsResponse:
        if len(request.grants) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} grants in one call")
        orders: list[wire.GrantOrder | DomainError] = []
        for item in request.grants:
            try:
                orders.append(wire.grant_order(item))
            except DomainError as error:
                orders.append(error)
        results = []
        for outcome in await self._entitlements.grant_many(orders, caller_var.get()):
            result = entitlements_pb2.GrantEntitlementResult()
            if isinstance(outcome, Granted):
                result.grant.CopyFrom(wire.grant_message(outcome.grant))
                result.created = outcome.created
            else:
                result.code, result.message = outcome.code.value[0], outcome.message
            results.append(result)
        return entitlements_pb2.GrantEntitlementsResponse(results=results)

    async def RevokeEntitlement(
        self,
        request: entitlements_pb2.RevokeEntitlementRequest,
        context: grpc.aio.ServicerContext,
    ) -> entitlements_pb2.RevokeEntitlementResponse:
        outcome = await self._entitlements.revoke(wire.revocation(request, caller=caller_var.get()))
        response = entitlements_pb2.RevokeEntitlementResponse(tombstone=outcome.tombstone)
        if outcome.grant is not None:
            response.grant.CopyFrom(wire.grant_message(outcome.grant))
        return response

    async def WatchEntitlements(
        self,
        request: entitlements_pb2.WatchEntitlementsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[entitlements_pb2.EntitlementChange]:
        validation.text("user_id", request.user_id)
        subscription = self._feed.subscribe(request.user_id, heartbeats=request.heartbeats)
        try:
            while True:
                yield await subscription.next()
        finally:
            self._feed.unsubscribe(subscription)

    async def ListAudit(
        self, request: entitlements_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> entitlements_pb2.ListAuditResponse:
        user_id = validation.text("user_id", request.user_id, required=True)
        if not 0 <= request.limit <= MAX_AUDIT_ROWS:
            raise InvalidArgument(f"limit must be between 0 and {MAX_AUDIT_ROWS}")
        rows = await self._entitlements.audit_of_user(user_id, request.limit or 100)
        return entitlements_pb2.ListAuditResponse(entries=[wire.audit_entry(row) for row in rows])
