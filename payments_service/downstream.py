"""Calls from payments to accounts (who paid) and entitlements (grant, revoke)."""

from __future__ import annotations

import logging
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.catalogue import Sku
from payments_service.intents import Payer, Unprocessable
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

log = logging.getLogger(__name__)

CALL_DEADLINE_SECONDS = 3.0

# The event stays pending and is retried: the call may succeed later without any change.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.CANCELLED,
}


class Retryable(Exception):
    """A downstream could not answer now; the event is retried later with backoff."""


def reinstated_key(payment_key: str) -> str:
    """The source of the grant that gives back what a won dispute of this payment took."""
    return f"{payment_key}:dispute_won"


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _classify(error: grpc.aio.AioRpcError, what: str) -> Exception:
    if error.code() in _RETRYABLE:
        return Retryable(f"{what}: {error.code().name} {error.details() or ''}".strip())
    return Unprocessable(f"{what}: {error.code().name} {error.details() or ''}".strip(), "refused")


class Downstream:
    def __init__(self, accounts: grpc.aio.Channel, entitlements: grpc.aio.Channel) -> None:
        self._accounts = accounts_pb2_grpc.AccountsServiceStub(accounts)
        self._entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements)

    async def resolve_payer(self, payer: Payer) -> str:
        """The internal user id of whoever paid; a Telegram buyer is created on first sight."""
        if payer.user_id:
            request = accounts_pb2.ResolveUserRequest(user_id=payer.user_id)
        elif payer.telegram_user_id:
            request = accounts_pb2.ResolveUserRequest(
                telegram_user_id=payer.telegram_user_id, create=True
            )
        elif payer.customer:
            request = accounts_pb2.ResolveUserRequest(stripe_customer_id=payer.customer)
        else:
            raise Unprocessable("cannot tell who paid", "unknown_payer")
        try:
            reply = await self._accounts.ResolveUser(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise Unprocessable(
                    f"cannot tell who paid: no user for {payer}", "unknown_payer"
                ) from None
            raise _classify(error, "accounts.ResolveUser") from None
        user_id = str(reply.user.user_id)
        if payer.customer and reply.user.stripe_customer_id != payer.customer:
            await self._link_customer(user_id, payer.customer)
        return user_id

    async def _link_customer(self, user_id: str, customer: str) -> None:
        """Later card payments by this customer are then attributed to the same user."""
        try:
            await self._accounts.LinkIdentity(
                accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=customer),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                # Not worth failing a paid purchase over; the grant goes to the named buyer.
                log.warning("customer %s is linked to another user; not moved", customer)
                return
            raise _classify(error, "accounts.LinkIdentity") from None

    async def grant(
        self,
        *,
        user_id: str,
        sku: Sku,
        provider: str,
        payment_key: str,
        event_id: str,
        purchased_at: datetime,
        until: datetime | None,
    ) -> None:
        request = entitlements_pb2.GrantEntitlementRequest(
            user_id=user_id,
            entitlement=sku.grants,
            source=entitlements_pb2.Source(provider=provider, reference=payment_key),
            event_id=event_id,
            purchased_at=_timestamp(purchased_at),
            reason=f"purchase of {sku.name}",
            granted_by="payments",
        )
        if until is not None:
            request.until.CopyFrom(_timestamp(until))
        elif sku.duration is None:
            request.lifetime = True
        else:
            request.duration_seconds = int(sku.duration.total_seconds())
        try:
            await self._entitlements.GrantEntitlement(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.GrantEntitlement") from None

    async def revoke(self, *, provider: str, payment_key: str, event_id: str, reason: str) -> None:
        try:
            await self._entitlements.RevokeEntitlement(
                entitlements_pb2.RevokeEntitlementRequest(
                    source=entitlements_pb2.Source(provider=provider, reference=payment_key),
                    event_id=event_id,
                    reason=reason,
                    revoked_by="payments",
                ),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.RevokeEntitlement") from None

    async def reinstate(
        self, *, user_id: str, provider: str, payment_key: str, event_id: str
    ) -> None:
        """Give back a revoked grant's time: a grant of its own, with the same entitlement,
        purchase time and term, so it stacks where the revoked one stood."""
        try:
            reply = await self._entitlements.ListEntitlements(
                entitlements_pb2.ListEntitlementsRequest(user_id=user_id, include_revoked=True),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.ListEntitlements") from None
        by_reference = {
            grant.source.reference: grant
            for grant in reply.grants
            if grant.source.provider == provider
        }
        if reinstated_key(payment_key) in by_reference:
            return
        revoked = by_reference.get(payment_key)
        if revoked is None or not revoked.revoked:
            raise Retryable(f"no revoked grant of {payment_key} yet")
        request = entitlements_pb2.GrantEntitlementRequest(
            user_id=user_id,
            entitlement=revoked.entitlement,
            source=entitlements_pb2.Source(
                provider=provider, reference=reinstated_key(payment_key)
            ),
            event_id=event_id,
            purchased_at=revoked.purchased_at,
            reason="dispute won: the revoked time is given back",
            granted_by="payments",
        )
        if revoked.lifetime:
            request.lifetime = True
        elif revoked.HasField("until"):
            request.until.CopyFrom(revoked.until)
        else:
            request.duration_seconds = revoked.duration_seconds
        try:
            await self._entitlements.GrantEntitlement(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.GrantEntitlement") from None

    async def grants_of(self, user_id: str) -> list[entitlements_pb2.Grant]:
        """A user's unrevoked grants, with their terms (to cut a subscription's short)."""
        try:
            reply = await self._entitlements.ListEntitlements(
                entitlements_pb2.ListEntitlementsRequest(user_id=user_id),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.ListEntitlements") from None
        return [grant for grant in reply.grants if not grant.revoked]
