"""Each internal caller, with its own token, through the real stack: what its role allows, and
what it refuses with nothing done."""

from __future__ import annotations

import json
import logging
import re
import secrets
import subprocess
import sys
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
    EVERYTHING,
    ROLES,
    CallerTokens,
    CallerTokensError,
    may_call,
    token_digest_hex,
)
from paylayer.catalogue import load_catalogue
from paylayer.devsecrets import complete_caller_tokens
from paylayer.ops import processes
from paylayer.ops.factories import stripe_event, telegram_update
from paylayer.settings import REPO_ROOT, ConfigError, Settings
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


def _link_account(user_id: str = "") -> accounts_pb2.LinkAccountRequest:
    return accounts_pb2.LinkAccountRequest(
        user_id=user_id or str(uuid.uuid4()),
        login=secrets.randbelow(10**9) + 1,
        server="Roles-Demo",
        account_type=accounts_pb2.ACCOUNT_TYPE_DEMO,
    )


def _invoice_link() -> payments_pb2.CreateInvoiceLinkRequest:
    return payments_pb2.CreateInvoiceLinkRequest(user_id=str(uuid.uuid4()), sku="vip_30d")


def _checkout_session() -> payments_pb2.CreateCheckoutSessionRequest:
    return payments_pb2.CreateCheckoutSessionRequest(telegram_user_id=_telegram_id(), sku="vip_30d")


def _cancel_subscription() -> payments_pb2.CancelSubscriptionRequest:
    return payments_pb2.CancelSubscriptionRequest(
        user_id=str(uuid.uuid4()), provider="stripe", subscription_id="sub_none", at_period_end=True
    )


def _get_subscription() -> payments_pb2.GetSubscriptionRequest:
    return payments_pb2.GetSubscriptionRequest(provider="stripe", subscription_id="sub_none")


def _list_subscriptions() -> payments_pb2.ListSubscriptionsRequest:
    return payments_pb2.ListSubscriptionsRequest(user_id=str(uuid.uuid4()), page_size=1)


def _invite_links() -> payments_pb2.CreateInviteLinksRequest:
    return payments_pb2.CreateInviteLinksRequest(user_id=str(uuid.uuid4()))


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
        (ACCOUNTS + "LinkAccount", _link_account),
        (ENTITLEMENTS + "CheckEntitlement", _check),
        (PAYMENTS + "ListEvents", _list_events),
        # Its writes: with no Stripe here a checkout may end UNAVAILABLE or FAILED_PRECONDITION,
        # and an unknown subscription NOT_FOUND; what counts is that the server looked.
        (PAYMENTS + "CreateInvoiceLink", _invoice_link),
        (PAYMENTS + "CreateCheckoutSession", _checkout_session),
        (PAYMENTS + "CancelSubscription", _cancel_subscription),
        (PAYMENTS + "CreateInviteLinks", _invite_links),
        (PAYMENTS + "GetSubscription", _get_subscription),
        (PAYMENTS + "ListSubscriptions", _list_subscriptions),
    ],
    "mt5": [(ACCOUNTS + "ReportAccountSnapshot", _snapshot)],
    "reader": [
        (ACCOUNTS + "ResolveUser", lambda: _resolve(create=False)),
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
        (ENTITLEMENTS + "ListAudit", lambda: entitlements_pb2.ListAuditRequest()),
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
        (ACCOUNTS + "LinkAccount", _link_account),
        (ENTITLEMENTS + "GrantEntitlement", lambda: _stripe_grant(str(uuid.uuid4()))),
        (PAYMENTS + "RefundPayment", _refund),
        (PAYMENTS + "HandleStripeEvent", _stripe_payload),
        (PAYMENTS + "ListMessages", lambda: payments_pb2.ListMessagesRequest(page_size=1)),
        (PAYMENTS + "ListSubscriptions", _list_subscriptions),  # the bot's, not the reader's
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


def _service_of(method: str) -> str:
    return method[: method.rindex("/") + 1]


def _services_with_methods_of(caller: str) -> set[str]:
    allowed = ROLES[caller]
    if allowed is EVERYTHING:
        return set(SERVICE_OF)
    return {_service_of(method) for method in allowed}


@pytest.mark.parametrize("caller", CALLER_NAMES)
def test_every_role_is_tried_allowed_and_refused_on_every_service(caller: str) -> None:
    """Per service where the role has a method: one call it may make and one it may not (bar
    the operator's, which may make them all); elsewhere, one it may not. A refusal counts here
    only for a method outside the role, not a partial one such as ResolveUser with create."""
    allowed_on = {_service_of(m) for m, _ in ALLOWED[caller]}
    refused_on = {_service_of(m) for m, _ in REFUSED[caller] if not may_call(caller, m)}
    for method, _ in ALLOWED[caller]:
        assert may_call(caller, method), method
    services = _services_with_methods_of(caller)
    assert allowed_on == services
    expected_refusals = set(SERVICE_OF) if ROLES[caller] is not EVERYTHING else set()
    assert refused_on == expected_refusals


def _method_paths_served() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for module in (accounts_pb2, entitlements_pb2, payments_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_method_a_role_names_exists() -> None:
    """A misspelt method in the role table would be allowed to no one, silently."""
    served = _method_paths_served()
    for caller, allowed in ROLES.items():
        assert allowed is EVERYTHING or allowed <= served, (caller, allowed - served)


def _readme_roles() -> dict[str, str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Internal callers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_the_readmes_role_table_is_the_one_the_servers_apply() -> None:
    by_name = {path.rsplit("/", 1)[1]: path for path in _method_paths_served()}
    rows = _readme_roles()
    assert list(rows) == list(ROLES)
    for caller, text in rows.items():
        named = re.findall(r"`(?:\w+Service\.)?([A-Z]\w+)`", text)
        assert set(named) <= set(by_name), (caller, set(named) - set(by_name))
        if ROLES[caller] is EVERYTHING:
            assert text.startswith("everything"), caller
            continue
        documented = {by_name[name] for name in named}
        if borrowed := re.match(r"what `(\w+)` may, plus", text):
            inherited = ROLES[borrowed.group(1)]
            assert inherited is not EVERYTHING
            documented |= inherited
        assert documented == ROLES[caller], (
            caller,
            sorted(documented - (ROLES[caller] or set())),
            sorted((ROLES[caller] or set()) - documented),
        )


def test_the_reliability_report_counts_what_these_tests_try() -> None:
    """docs/RELIABILITY.md states how many calls were tried: the counts of these tables and of
    the served methods, which grow as roles and RPCs do."""
    report = (REPO_ROOT / "docs" / "RELIABILITY.md").read_text()
    refused = sum(len(pairs) for pairs in REFUSED.values())
    allowed = sum(len(pairs) for pairs in ALLOWED.values())
    methods = len(_method_paths_served())
    assert f"| {refused} calls: each role on every service" in report
    assert f"the allowed calls ({allowed}: each role" in report
    assert report.count(f"| {methods} methods \u00d7 4") == 2  # times 4 headers
    assert f"each of the {methods} methods" in report


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


async def test_a_manual_grant_smuggled_into_payments_batch_is_refused_and_grants_nothing(
    stack: Stack,
) -> None:
    """The batch form is checked item by item: the paid grant beside it stands, the manual one
    is refused with PERMISSION_DENIED and leaves no grant, for either user."""
    buyer, stranger = str(uuid.uuid4()), str(uuid.uuid4())
    batch = entitlements_pb2.GrantEntitlementsRequest(
        grants=[_stripe_grant(buyer), _manual_grant(buyer), _manual_grant(stranger)]
    )
    async with grpc.aio.insecure_channel(stack.addrs["entitlements"]) as channel:
        stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        reply = await stub.GrantEntitlements(
            batch,
            metadata=(("authorization", f"Bearer {CALLER_TOKENS['payments']}"),),
            timeout=10,
        )
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert [result.code for result in reply.results] == [0, denied, denied]
    [grant] = (await _entitlements_of(stack, buyer)).grants
    assert (grant.source.provider, grant.granted_by) == ("stripe", "payments")
    assert not (await _entitlements_of(stack, stranger)).grants


async def test_the_bot_links_an_account_and_finds_the_subscriptions_it_may_cancel(
    stack: Stack,
) -> None:
    """The bot's own writes, with the bot's token: they do what they say, not just pass the
    door."""
    async with grpc.aio.insecure_channel(stack.addrs["accounts"]) as channel:
        metadata = (("authorization", f"Bearer {CALLER_TOKENS['bot']}"),)
        resolve = channel.unary_unary(
            ACCOUNTS + "ResolveUser",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=accounts_pb2.ResolveUserResponse.FromString,
        )
        resolved = await resolve(_resolve(create=True), metadata=metadata, timeout=10)
        link = channel.unary_unary(
            ACCOUNTS + "LinkAccount",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=accounts_pb2.LinkAccountResponse.FromString,
        )
        linked = await link(_link_account(resolved.user.user_id), metadata=metadata, timeout=10)
    assert linked.created and linked.account.user_id == resolved.user.user_id

    user_id = resolved.user.user_id
    listing = payments_pb2.ListSubscriptionsRequest(user_id=user_id, page_size=10)
    assert await call(stack, "bot", PAYMENTS + "ListSubscriptions", listing) == (grpc.StatusCode.OK)
    assert await call(stack, "bot", PAYMENTS + "GetSubscription", _get_subscription()) == (
        grpc.StatusCode.NOT_FOUND
    )
    cancel = _cancel_subscription()
    cancel.user_id = user_id
    assert await call(stack, "bot", PAYMENTS + "CancelSubscription", cancel) == (
        grpc.StatusCode.NOT_FOUND
    )
    invoice = payments_pb2.CreateInvoiceLinkRequest(user_id=user_id, sku="vip_30d")
    assert await call(stack, "bot", PAYMENTS + "CreateInvoiceLink", invoice) == grpc.StatusCode.OK


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


def _paylayer(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paylayer.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_digests_a_token_from_stdin_into_an_entry_servers_accept() -> None:
    token = secrets.token_urlsafe(32)
    done = _paylayer("tokens", "digest", "bot", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    entry = done.stdout.strip()
    assert token not in entry and entry.startswith("bot:sha256=")
    assert CallerTokens.parse(entry).caller_of(f"Bearer {token}") == "bot"
    assert CallerTokens.parse(entry).caller_of(f"Bearer {token}x") is None


@pytest.mark.parametrize("stdin", ["", "\n", "two words", "a,b"])
def test_the_cli_refuses_to_digest_what_cannot_be_a_token(stdin: str) -> None:
    done = _paylayer("tokens", "digest", "bot", stdin=stdin)
    assert done.returncode == 2 and not done.stdout and "token" in done.stderr


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
