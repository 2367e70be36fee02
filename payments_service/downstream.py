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


def _proto_time(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _resolve_request(payer: Payer) -> accounts_pb2.ResolveUserRequest:
    """A Telegram buyer is made a user on first sight; other identities must be known."""
    if payer.user_id:
        return accounts_pb2.ResolveUserRequest(user_id=payer.user_id)
    if payer.telegram_user_id:
        return accounts_pb2.ResolveUserRequest(telegram_user_id=payer.telegram_user_id, create=True)
    if payer.customer:
        return accounts_pb2.ResolveUserRequest(stripe_customer_id=payer.customer)
    raise Unprocessable("cannot tell who paid", "unknown_payer")


def _no_user(payer: Payer) -> Exception:
    """No user for this payer: for good, unless the payer is a customer whose link is due."""
    if payer.awaits_link:
        return Retryable(
            f"no user is linked to customer {payer.customer} yet; its invoice links it"
        )
    return Unprocessable(f"cannot tell who paid: no user for {payer}", "unknown_payer")


def _classify_code(code: int, message: str, what: str) -> Exception:
    """An item's status in a batch answer, classified as the same failure of a single call."""
    status = next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)
    if status in _RETRYABLE:
        return Retryable(f"{what}: {status.name} {message}".strip())
    return Unprocessable(f"{what}: {status.name} {message}".strip(), "refused")


def _classify(error: grpc.aio.AioRpcError, what: str) -> Exception:
    if error.code() in _RETRYABLE:
        return Retryable(f"{what}: {error.code().name} {error.details() or ''}".strip())
    return Unprocessable(f"{what}: {error.code().name} {error.details() or ''}".strip(), "refused")


def grant_request(
    *,
    user_id: str,
    sku: Sku,
    provider: str,
    payment_key: str,
    event_id: str,
    purchased_at: datetime,
    until: datetime | None,
) -> entitlements_pb2.GrantEntitlementRequest:
    """The grant a purchase makes: the sku's tier, for its term (or until a fixed end)."""
    request = entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement=sku.grants,
        source=entitlements_pb2.Source(provider=provider, reference=payment_key),
        event_id=event_id,
        purchased_at=_proto_time(purchased_at),
        reason=f"purchase of {sku.name}",
        granted_by="payments",
    )
    if until is not None:
        request.until.CopyFrom(_proto_time(until))
    elif sku.duration is None:
        request.lifetime = True
    else:
        request.duration_seconds = int(sku.duration.total_seconds())
    return request


class Downstream:
    def __init__(self, accounts: grpc.aio.Channel, entitlements: grpc.aio.Channel) -> None:
        self._accounts = accounts_pb2_grpc.AccountsServiceStub(accounts)
        self._entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements)

    async def resolve_payers(self, payers: list[Payer]) -> list[str | Exception]:
        """`resolve_payer` for many in one call: each a user id, or the error for that one
        (Unprocessable, Retryable). A failure of the call itself is raised."""
        requests = [_resolve_request(payer) for payer in payers]
        try:
            reply = await self._accounts.ResolveUsers(
                accounts_pb2.ResolveUsersRequest(requests=requests),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "accounts.ResolveUsers") from None
        answers: list[str | Exception] = []
        for payer, result in zip(payers, reply.results, strict=True):
            if result.code == grpc.StatusCode.NOT_FOUND.value[0]:
                answers.append(_no_user(payer))
            elif result.code:
                answers.append(_classify_code(result.code, result.message, "accounts.ResolveUsers"))
            else:
                answers.append(str(result.user.user_id))
                if payer.customer and result.user.stripe_customer_id != payer.customer:
                    try:
                        await self._link_customer(str(result.user.user_id), payer.customer)
                    except Exception as error:
                        answers[-1] = error
        return answers

    async def resolve_payer(self, payer: Payer) -> str:
        """The internal user id of whoever paid; a Telegram buyer is created on first sight."""
        request = _resolve_request(payer)
        try:
            reply = await self._accounts.ResolveUser(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise _no_user(payer) from None
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

    async def grant_many(
        self, requests: list[entitlements_pb2.GrantEntitlementRequest]
    ) -> list[Exception | None]:
        """Many grants in one call and one transaction on the other side; None for each that
        stands, else its error. A failure of the call itself is raised."""
        try:
            reply = await self._entitlements.GrantEntitlements(
                entitlements_pb2.GrantEntitlementsRequest(grants=requests),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.GrantEntitlements") from None
        return [
            _classify_code(result.code, result.message, "entitlements.GrantEntitlements")
            if result.code
            else None
            for result in reply.results
        ]

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
        request = grant_request(
            user_id=user_id,
            sku=sku,
            provider=provider,
            payment_key=payment_key,
            event_id=event_id,
            purchased_at=purchased_at,
            until=until,
        )
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

    async def telegram_id_of(self, user_id: str) -> int:
        """The user's Telegram id (0 when they have none): whom a message goes to."""
        try:
            reply = await self._accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(user_id=user_id), timeout=CALL_DEADLINE_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise _classify(error, "accounts.ResolveUser") from None
        return int(reply.user.telegram_user_id)

    async def entitlement_now(
        self, user_id: str, entitlement: str
    ) -> entitlements_pb2.CheckEntitlementResponse:
        """Whether the user has this entitlement now, and until when (unset when lifetime)."""
        try:
            return await self._entitlements.CheckEntitlement(
                entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=entitlement),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "entitlements.CheckEntitlement") from None
