"""Each internal caller, with its own token, through the real stack: what its role allows, and
what it refuses with nothing done."""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.server import build as build_entitlements
from paylayer.callers import (
    CALLER_NAMES,
    CallerTokens,
    CallerTokensError,
    token_digest_hex,
)
from paylayer.catalogue import load_catalogue
from paylayer.devsecrets import complete_caller_tokens
from paylayer.ops import processes
from paylayer.ops.factories import stripe_event, telegram_update
from paylayer.settings import ConfigError, Settings
from payments_service import telegram_updates
from payments_service.tables import inbox
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2
from tests.conftest import CALLER_TOKENS
from tests.fakes.bot_api import FakeBotApi
from tests.grpc_helpers import channel_to, serving
from tests.payments.helpers import eventually, post_telegram, wait_settled
from tests.stack import Stack

PAYMENTS = "/paylayer.payments.v1.PaymentsService/"
ENTITLEMENTS = "/paylayer.entitlements.v1.EntitlementsService/"
ACCOUNTS = "/paylayer.accounts.v1.AccountsService/"
SERVICE_OF = {PAYMENTS: "payments", ENTITLEMENTS: "entitlements", ACCOUNTS: "accounts"}


def _manual_grant(user_id: str) -> entitlements_pb2.GrantEntitlementRequest:
    return entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement="vip",
        source=entitlements_pb2.Source(provider="manual", reference=f"m-{uuid.uuid4().hex}"),
        lifetime=True,
        reason="role test",
    )


def _stripe_grant(user_id: str) -> entitlements_pb2.GrantEntitlementRequest:
    return entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement="premium",
        source=entitlements_pb2.Source(provider="stripe", reference=f"pi_{uuid.uuid4().hex}"),
        event_id=f"evt_{uuid.uuid4().hex}",
        duration_seconds=3600,
    )


def _check() -> entitlements_pb2.CheckEntitlementRequest:
    return entitlements_pb2.CheckEntitlementRequest(user_id=str(uuid.uuid4()), entitlement="vip")


def _telegram_id() -> int:
    return secrets.randbelow(10**12) + 1


def _resolve(create: bool) -> accounts_pb2.ResolveUserRequest:
    return accounts_pb2.ResolveUserRequest(telegram_user_id=_telegram_id(), create=create)


def _snapshot() -> accounts_pb2.ReportAccountSnapshotRequest:
    return accounts_pb2.ReportAccountSnapshotRequest(
        login=secrets.randbelow(10**9) + 1, server="Roles-Demo", balance=1.0, equity=1.0
    )


def _get_account() -> accounts_pb2.GetAccountRequest:
    return accounts_pb2.GetAccountRequest(login=1, server="Roles-Demo")


def _snapshot_history() -> accounts_pb2.ListAccountSnapshotsRequest:
    return accounts_pb2.ListAccountSnapshotsRequest(login=1, server="Roles-Demo")


def _list_events() -> payments_pb2.ListEventsRequest:
    return payments_pb2.ListEventsRequest(page_size=1)


def _refund() -> payments_pb2.RefundPaymentRequest:
    return payments_pb2.RefundPaymentRequest(provider="telegram", payment_key="stxt-none")


def _replay() -> payments_pb2.ReplayEventRequest:
    return payments_pb2.ReplayEventRequest(provider="stripe", event_id="evt_none")


def _stripe_payload() -> payments_pb2.HandleStripeEventRequest:
    # Not a purchase: recorded and ignored, so the allowed call leaves nothing to undo.
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "roles.test", "data": {"object": {}}}
    return payments_pb2.HandleStripeEventRequest(payload=json.dumps(event).encode())


# Per role: (method, request) pairs it may call and pairs it may not; at least one of each per
# service the role touches. "May" means the server looked at the request (any code but
# PERMISSION_DENIED); "may not" means PERMISSION_DENIED.
ALLOWED: dict[str, list[tuple[str, Any]]] = {
    "gateway": [(PAYMENTS + "HandleStripeEvent", _stripe_payload)],
    "payments": [
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=True)),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _stripe_grant(str(uuid.uuid4()))),
        (
            ENTITLEMENTS + "CheckEntitlements",
            lambda: entitlements_pb2.CheckEntitlementsRequest(checks=[_check()]),
        ),
    ],
    "accounts": [(ENTITLEMENTS + "CheckEntitlement", _check)],
    "bot": [
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=True)),
        (ENTITLEMENTS + "CheckEntitlement", _check),
        (PAYMENTS + "ListEvents", _list_events),
    ],
    "mt5": [(ACCOUNTS + "ReportAccountSnapshot", _snapshot)],
    "reader": [
        (ACCOUNTS + "GetAccount", _get_account),
        (ACCOUNTS + "ListAccountSnapshots", _snapshot_history),
        (ENTITLEMENTS + "CheckEntitlement", _check),
        (PAYMENTS + "ListEvents", _list_events),
    ],
    "operator": [
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=True)),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _manual_grant(str(uuid.uuid4()))),
        (PAYMENTS + "ReplayEvent", _replay),
        (PAYMENTS + "ListMessages", lambda: payments_pb2.ListMessagesRequest(page_size=1)),
        (ACCOUNTS + "ListAccountSnapshots", _snapshot_history),
    ],
}
REFUSED: dict[str, list[tuple[str, Any]]] = {
    "gateway": [
        (PAYMENTS + "ReplayEvent", _replay),
        (PAYMENTS + "RefundPayment", _refund),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _manual_grant(str(uuid.uuid4()))),
        (ENTITLEMENTS + "CheckEntitlement", _check),
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=False)),
    ],
    "payments": [
        (PAYMENTS + "ListEvents", _list_events),
        (PAYMENTS + "ReconcileChannels", lambda: payments_pb2.ReconcileChannelsRequest()),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _manual_grant(str(uuid.uuid4()))),
        (ACCOUNTS + "LinkAccount", lambda: accounts_pb2.LinkAccountRequest()),
    ],
    "accounts": [
        (ENTITLEMENTS + "GrantEntitlement", lambda: _stripe_grant(str(uuid.uuid4()))),
        (ACCOUNTS + "GetAccount", _get_account),
        (PAYMENTS + "ListEvents", _list_events),
    ],
    "bot": [
        (ENTITLEMENTS + "GrantEntitlement", lambda: _stripe_grant(str(uuid.uuid4()))),
        (ACCOUNTS + "ReportAccountSnapshot", _snapshot),
        (PAYMENTS + "RefundPayment", _refund),
        (PAYMENTS + "HandleStripeEvent", _stripe_payload),
        (PAYMENTS + "RetryMessage", lambda: payments_pb2.RetryMessageRequest(message_id=1)),
    ],
    "mt5": [
        (ACCOUNTS + "GetAccount", _get_account),
        (ACCOUNTS + "ListAccountSnapshots", _snapshot_history),
        (ENTITLEMENTS + "CheckEntitlement", _check),
        (PAYMENTS + "ListEvents", _list_events),
    ],
    "reader": [
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=True)),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _stripe_grant(str(uuid.uuid4()))),
        (PAYMENTS + "RefundPayment", _refund),
        (PAYMENTS + "HandleStripeEvent", _stripe_payload),
        (PAYMENTS + "ListMessages", lambda: payments_pb2.ListMessagesRequest(page_size=1)),
    ],
    "operator": [],
}


async def call(stack: Stack, caller: str, method: str, request: Message) -> grpc.StatusCode:
    """One call with `caller`'s token; the status it ends with."""
    prefix = method[: method.rindex("/") + 1]
    async with grpc.aio.insecure_channel(stack.addrs[SERVICE_OF[prefix]]) as channel:
        rpc = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
        try:
            await rpc(
                request,
                metadata=(("authorization", f"Bearer {CALLER_TOKENS[caller]}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _cases(table: dict[str, list[tuple[str, Any]]]) -> list[Any]:
    return [
        pytest.param(caller, method, make, id=f"{caller}-{method.rsplit('/', 1)[-1]}")
        for caller, pairs in table.items()
        for method, make in pairs
    ]


@pytest.mark.parametrize(("caller", "method", "make"), _cases(ALLOWED))
async def test_a_caller_may_call_the_methods_of_its_role(
    stack: Stack, caller: str, method: str, make: Any
) -> None:
    code = await call(stack, caller, method, make())
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), code


@pytest.mark.parametrize(("caller", "method", "make"), _cases(REFUSED))
async def test_a_caller_is_refused_every_method_outside_its_role(
    stack: Stack, caller: str, method: str, make: Any
) -> None:
    assert await call(stack, caller, method, make()) == grpc.StatusCode.PERMISSION_DENIED


def test_every_role_is_tried_against_every_service_it_touches() -> None:
    for caller in ALLOWED:
        touched = {m[: m.rindex("/") + 1] for m, _ in ALLOWED[caller] + REFUSED[caller]}
        assert caller == "operator" or touched == set(SERVICE_OF), caller


async def _entitlements_of(stack: Stack, user_id: str) -> entitlements_pb2.ListEntitlementsResponse:
    async with grpc.aio.insecure_channel(stack.addrs["entitlements"]) as channel:
        rpc = channel.unary_unary(
            ENTITLEMENTS + "ListEntitlements",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=entitlements_pb2.ListEntitlementsResponse.FromString,
        )
        reply: entitlements_pb2.ListEntitlementsResponse = await rpc(
            entitlements_pb2.ListEntitlementsRequest(user_id=user_id, include_revoked=True),
            metadata=(("authorization", f"Bearer {CALLER_TOKENS['operator']}"),),
            timeout=10,
        )
        return reply


async def _user_of(stack: Stack, telegram_user_id: int) -> str:
    async def resolve() -> str:
        async with grpc.aio.insecure_channel(stack.addrs["accounts"]) as channel:
            rpc = channel.unary_unary(
                ACCOUNTS + "ResolveUser",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=accounts_pb2.ResolveUserResponse.FromString,
            )
            try:
                reply = await rpc(
                    accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_user_id),
                    metadata=(("authorization", f"Bearer {CALLER_TOKENS['operator']}"),),
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return ""
            return str(reply.user.user_id)

    return await eventually(resolve, bool)


async def _events_named(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).where(inbox.c.provider == "stripe", inbox.c.event_id == event_id)
        )
    return int(count or 0)


async def test_an_unsigned_event_is_trusted_from_the_gateway_only(
    stack: Stack, engine: AsyncEngine
) -> None:
    """The gateway verified the signature; anyone else handing in an event is an intruder."""
    catalogue = load_catalogue(stack.settings.catalogue_path)
    buyer = _telegram_id()
    for intruder in ("reader", "bot", "mt5", "accounts", "payments"):
        event = stripe_event("charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer)
        request = payments_pb2.HandleStripeEventRequest(payload=json.dumps(event).encode())
        code = await call(stack, intruder, PAYMENTS + "HandleStripeEvent", request)
        assert code == grpc.StatusCode.PERMISSION_DENIED, intruder
        assert await _events_named(engine, event["id"]) == 0
    look = accounts_pb2.ResolveUserRequest(telegram_user_id=buyer)
    assert await call(stack, "operator", ACCOUNTS + "ResolveUser", look) == (
        grpc.StatusCode.NOT_FOUND
    )

    event = stripe_event("charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer)
    request = payments_pb2.HandleStripeEventRequest(payload=json.dumps(event).encode())
    assert await call(stack, "gateway", PAYMENTS + "HandleStripeEvent", request) == (
        grpc.StatusCode.OK
    )
    user_id = await _user_of(stack, buyer)
    listed = await eventually(
        lambda: _entitlements_of(stack, user_id), lambda reply: len(reply.grants) == 1
    )
    assert [g.entitlement for g in listed.grants] == ["vip"]


async def test_the_readers_refused_writes_leave_no_grant_no_user_and_no_refund(
    stack: Stack, engine: AsyncEngine, bot_api: FakeBotApi
) -> None:
    catalogue = load_catalogue(stack.settings.catalogue_path)
    buyer, charge = _telegram_id(), f"stxt{secrets.token_hex(12)}"
    update = telegram_update(
        "payment", catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
    )
    async with aiohttp.ClientSession() as http:
        status, _ = await post_telegram(http, stack, update)
    assert status == 200
    await wait_settled(
        engine, "telegram", [telegram_updates.event_key(update, "successful_payment")]
    )

    refund = payments_pb2.RefundPaymentRequest(provider="telegram", payment_key=charge)
    assert await call(stack, "reader", PAYMENTS + "RefundPayment", refund) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert charge not in bot_api.refunded

    stranger = _telegram_id()
    create = accounts_pb2.ResolveUserRequest(telegram_user_id=stranger, create=True)
    assert await call(stack, "reader", ACCOUNTS + "ResolveUser", create) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    look = accounts_pb2.ResolveUserRequest(telegram_user_id=stranger)
    assert await call(stack, "operator", ACCOUNTS + "ResolveUser", look) == (
        grpc.StatusCode.NOT_FOUND
    )

    user_id = str(uuid.uuid4())
    assert await call(
        stack, "reader", ENTITLEMENTS + "GrantEntitlement", _manual_grant(user_id)
    ) == (grpc.StatusCode.PERMISSION_DENIED)
    assert not (await _entitlements_of(stack, user_id)).grants


async def test_payments_may_grant_only_what_a_payment_grants(stack: Stack) -> None:
    """A compromised payments process cannot hand out lifetime vip by hand."""
    user_id = str(uuid.uuid4())
    manual = _manual_grant(user_id)
    assert await call(stack, "payments", ENTITLEMENTS + "GrantEntitlement", manual) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    revoke = entitlements_pb2.RevokeEntitlementRequest(source=manual.source, reason="x")
    assert await call(stack, "payments", ENTITLEMENTS + "RevokeEntitlement", revoke) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert not (await _entitlements_of(stack, user_id)).grants

    paid = _stripe_grant(user_id)
    assert await call(stack, "payments", ENTITLEMENTS + "GrantEntitlement", paid) == (
        grpc.StatusCode.OK
    )
    [grant] = (await _entitlements_of(stack, user_id)).grants
    assert grant.granted_by == "payments"


async def test_a_manual_grant_records_the_caller_its_token_belongs_to(
    stack: Stack, engine: AsyncEngine
) -> None:
    user_id = str(uuid.uuid4())
    request = _manual_grant(user_id)
    request.granted_by = "payments"  # a claim in the request is not who did it
    assert await call(stack, "operator", ENTITLEMENTS + "GrantEntitlement", request) == (
        grpc.StatusCode.OK
    )
    [grant] = (await _entitlements_of(stack, user_id)).grants
    assert grant.granted_by == "operator"


async def test_a_replay_records_who_replayed_it(stack: Stack, engine: AsyncEngine) -> None:
    # Nobody can be told as the buyer: kept as failed, replayable.
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "charge.succeeded",
        "livemode": False,
        "data": {"object": {"id": f"ch_{uuid.uuid4().hex}", "object": "charge"}},
    }
    handed = payments_pb2.HandleStripeEventRequest(payload=json.dumps(event).encode())
    assert await call(stack, "gateway", PAYMENTS + "HandleStripeEvent", handed) == (
        grpc.StatusCode.OK
    )
    assert (await wait_settled(engine, "stripe", [event["id"]]))[event["id"]] == "failed"

    replay = payments_pb2.ReplayEventRequest(provider="stripe", event_id=event["id"])
    assert await call(stack, "reader", PAYMENTS + "ReplayEvent", replay) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await call(stack, "operator", PAYMENTS + "ReplayEvent", replay) == grpc.StatusCode.OK
    async with engine.connect() as connection:
        replayed_by = await connection.scalar(
            select(inbox.c.replayed_by).where(
                inbox.c.provider == "stripe", inbox.c.event_id == event["id"]
            )
        )
    assert replayed_by == "operator"


# --- tokens: how they are read, generated and handed out ----------------------------------


def test_caller_tokens_take_plain_and_sha256_tokens_several_per_name() -> None:
    callers = CallerTokens.parse(
        f"bot:old-token, bot:new-token, mt5:{token_digest_hex('bridge-token')}"
    )
    assert callers.caller_of("Bearer old-token") == "bot"
    assert callers.caller_of("Bearer new-token") == "bot"  # rotation: both valid at once
    assert callers.caller_of("Bearer bridge-token") == "mt5"  # the server holds no secret
    assert callers.caller_of("Bearer sha256=" + "0" * 64) is None
    assert callers.caller_of("bridge-token") is None


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("robot:abc", "unknown caller 'robot'"),
        ("bot", "not name:token"),
        ("bot:sha256=abc", "64 hex digits"),
        ("bot:same,mt5:same", "one token to two callers"),
    ],
)
def test_a_malformed_caller_tokens_is_refused_with_a_clear_reason(
    value: str, complaint: str
) -> None:
    with pytest.raises(CallerTokensError, match=complaint):
        CallerTokens.parse(value)


def test_dev_gives_every_caller_a_token_and_the_cli_the_operators() -> None:
    completed, cli = complete_caller_tokens("bot:my-bot-token", "")
    callers = CallerTokens.parse(completed)
    assert set(callers.by_digest.values()) == set(CALLER_NAMES)
    assert callers.belongs_to("my-bot-token", "bot")
    assert callers.belongs_to(cli, "operator")
    # Each process presents its own name's token; entitlements calls no one and gets none.
    env = {"CALLER_TOKENS": completed, "INTERNAL_TOKEN": cli}
    assert callers.belongs_to(processes.own_token("gateway", env)["INTERNAL_TOKEN"], "gateway")
    assert processes.own_token("entitlements", env) == {"INTERNAL_TOKEN": ""}


def test_a_cli_token_set_by_the_user_must_be_the_operators() -> None:
    completed, cli = complete_caller_tokens("", "my-own-token")
    assert cli == "my-own-token"
    assert CallerTokens.parse(completed).belongs_to("my-own-token", "operator")
    with pytest.raises(ConfigError, match="operator"):
        complete_caller_tokens("operator:theirs", "mine")


async def test_single_token_mode_takes_the_internal_token_as_the_operators_and_warns(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    single = replace(settings, caller_tokens="", internal_token="only-" + secrets.token_hex(8))
    with caplog.at_level(logging.WARNING):
        service = build_entitlements(single)
    assert any("single-token mode" in r.getMessage() for r in caplog.records)
    async with serving(service) as addr, channel_to(addr, single.internal_token) as channel:
        stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        granted = await stub.GrantEntitlement(_manual_grant(str(uuid.uuid4())))
    assert granted.grant.granted_by == "operator"
