"""Bad input, fuzzed: webhooks never answer 500 or crash, and bad gRPC arguments are the
caller's error (INVALID_ARGUMENT), never ours: a bad string (a NUL or another control
character, or longer than 255 characters) is refused alike by every service."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer import validation
from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.ops.factories import sign_stripe, stripe_event, telegram_update
from payments_service import stripe_events, telegram_updates
from payments_service.intents import Unprocessable
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2
from protos.payments.v1 import payments_pb2
from tests.payments.helpers import check, new_buyer, post_stripe, user_of_telegram, wait_settled
from tests.stack import Stack

pytestmark = pytest.mark.faults

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "750"))
# What an HTTP client can put in a header at all (no CR or LF); the rest is fair game.
header_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=80
)
TRIED: dict[str, int] = {}
# The HTTP fuzzing runs twice: on Hypothesis's fixed examples (the same every run, so a change
# fails or passes on its own merits) and on a fresh seed, printed so a failure can be replayed
# with FUZZ_SEED=<seed>.
FRESH_SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
# In every failure a fresh seed can cause, so CI's log says how to replay it.
REPLAY = f"replay with FUZZ_SEED={FRESH_SEED}"
FIXED_RUN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
FRESH_RUN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
    print_blob=True,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
# Real shapes with their leaves replaced: reaches far deeper than random JSON alone.
STRIPE_TYPES = [
    "charge.succeeded",
    "charge.refunded",
    "charge.failed",
    "charge.dispute.created",
    "payment_intent.succeeded",
    "checkout.session.completed",
    "invoice.paid",
    "customer.subscription.deleted",
]


def mutate(value: Any, data: st.DataObject) -> Any:
    if isinstance(value, dict):
        return {
            k: mutate(v, data) if data.draw(st.booleans()) else data.draw(json_values)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mutate(v, data) for v in value]
    return data.draw(json_values) if data.draw(st.integers(0, 3)) == 0 else value


@pytest.fixture(scope="module")
def catalogue(stack: Stack) -> Catalogue:
    return load_catalogue(stack.settings.catalogue_path)


class Gateway:
    """A keep-alive HTTP connection, as a provider's sender would hold."""

    def __init__(self, stack: Stack) -> None:
        host, port = stack.addrs["gateway"].split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        self.connection.request("POST", path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status


# --- the routing rules, in-process: every input is an intent or a reasoned failure -----------


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_stripe_event_is_an_intent_or_a_reasoned_failure(
    catalogue: Catalogue, data: st.DataObject
) -> None:
    event = mutate(
        stripe_event(
            data.draw(st.sampled_from(STRIPE_TYPES)),
            catalogue,
            sku="premium_30d",
            telegram_user_id=1,
        ),
        data,
    )
    TRIED["stripe_rules"] = TRIED.get("stripe_rules", 0) + 1
    try:
        stripe_events.interpret(event, catalogue)
    except Unprocessable:
        pass


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_telegram_update_is_an_intent_or_a_reasoned_failure(
    catalogue: Catalogue, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["pre-checkout", "payment", "refund", "subscription"]))
    update = mutate(telegram_update(kind, catalogue, telegram_user_id=5, sku="vip_30d"), data)
    TRIED["telegram_rules"] = TRIED.get("telegram_rules", 0) + 1
    if isinstance(update, dict) and isinstance(update.get("pre_checkout_query"), dict):
        telegram_updates.pre_checkout(catalogue, update["pre_checkout_query"])
    try:
        telegram_updates.interpret(update if isinstance(update, dict) else {}, catalogue)
    except Unprocessable:
        pass
    # A refund reads the stored update back: whatever it holds, a purchase or None.
    purchase = telegram_updates.stars_purchase(json.dumps(update).encode())
    assert purchase is None or isinstance(purchase.telegram_user_id, int)


def test_a_stored_update_that_names_no_buyer_cannot_be_refunded_by_us(
    catalogue: Catalogue,
) -> None:
    paid = telegram_update("payment", catalogue, telegram_user_id=5, sku="vip_30d")
    purchase = telegram_updates.stars_purchase(json.dumps(paid).encode())
    assert purchase is not None and purchase.telegram_user_id == 5
    assert purchase.invoice_payload.startswith("vip_30d")
    for stored in (b"", b"[]", b"\xff", b'{"message": {"from": {"id": "5"}}}', b'{"message": 7}'):
        assert telegram_updates.stars_purchase(stored) is None


# --- over HTTP, through the real gateway and payments ----------------------------------------


@FIXED_RUN
@given(data=st.data())
def test_stripe_route_never_answers_5xx(
    stack: Stack, catalogue: Catalogue, data: st.DataObject
) -> None:
    stripe_route(stack, catalogue, data)


@FRESH_RUN
@seed(FRESH_SEED)
@given(data=st.data())
def test_stripe_route_never_answers_5xx_on_a_fresh_seed(
    stack: Stack, catalogue: Catalogue, data: st.DataObject
) -> None:
    stripe_route(stack, catalogue, data, replay=REPLAY)


def stripe_route(
    stack: Stack, catalogue: Catalogue, data: st.DataObject, replay: str = "fixed examples"
) -> None:
    gateway = Gateway(stack)
    secret = stack.settings.stripe_webhook_secrets[0]
    shape = data.draw(st.sampled_from(["raw", "signed_json", "signed_event", "bad_header"]))
    if shape == "raw":
        body, header = data.draw(st.binary(max_size=300)), data.draw(header_text)
    elif shape == "bad_header":
        body = json.dumps(stripe_event("charge.succeeded", catalogue)).encode()
        header = data.draw(
            st.sampled_from(["t=", "v1=", "t=1,v1=", ",,,", "t=99999999999999999999,v1=ab"])
        ) + data.draw(header_text)
    else:
        value = (
            mutate(
                stripe_event(
                    data.draw(st.sampled_from(STRIPE_TYPES)),
                    catalogue,
                    sku="premium_30d",
                    telegram_user_id=7,
                ),
                data,
            )
            if shape == "signed_event"
            else data.draw(json_values)
        )
        body = json.dumps(value).encode()
        header = sign_stripe(body.decode(), secret)
    headers = {
        "Content-Type": data.draw(
            st.sampled_from(["application/json", "text/plain", "", "x/\u00e9"])
        )
    }
    if header:
        headers["Stripe-Signature"] = header.encode("latin-1", "replace").decode("latin-1")
    TRIED["stripe_http"] = TRIED.get("stripe_http", 0) + 1
    status = gateway.post("/api/v1/stripe/webhook", body, headers)
    assert status in (200, 400, 413), (shape, status, replay)


@FIXED_RUN
@given(data=st.data())
def test_telegram_route_never_answers_5xx(
    stack: Stack, catalogue: Catalogue, data: st.DataObject
) -> None:
    telegram_route(stack, catalogue, data)


@FRESH_RUN
@seed(FRESH_SEED)
@given(data=st.data())
def test_telegram_route_never_answers_5xx_on_a_fresh_seed(
    stack: Stack, catalogue: Catalogue, data: st.DataObject
) -> None:
    telegram_route(stack, catalogue, data, replay=REPLAY)


def telegram_route(
    stack: Stack, catalogue: Catalogue, data: st.DataObject, replay: str = "fixed examples"
) -> None:
    gateway = Gateway(stack)
    shape = data.draw(st.sampled_from(["raw", "json", "update"]))
    if shape == "raw":
        body = data.draw(st.binary(max_size=300))
    elif shape == "json":
        body = json.dumps(data.draw(json_values)).encode()
    else:
        kind = data.draw(st.sampled_from(["pre-checkout", "payment", "refund", "subscription"]))
        body = json.dumps(
            mutate(telegram_update(kind, catalogue, telegram_user_id=9, sku="premium_30d"), data)
        ).encode()
    token = data.draw(st.sampled_from([stack.settings.telegram_webhook_secret] * 4 + ["", "nope"]))
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": token}
    TRIED["telegram_http"] = TRIED.get("telegram_http", 0) + 1
    status = gateway.post("/api/v1/telegram/webhook", body, headers)
    assert status in (200, 400, 401, 413), (shape, status, replay)


def test_pathological_bodies_are_refused_cleanly(stack: Stack) -> None:
    gateway = Gateway(stack)
    secret = stack.settings.stripe_webhook_secrets[0]
    deep = b"[" * 200_000 + b"]" * 200_000  # deeper than any JSON parser recurses
    assert gateway.post(
        "/api/v1/stripe/webhook", deep, {"Stripe-Signature": sign_stripe(deep.decode(), secret)}
    ) in (400, 413)
    deep = b"[" * 100_000
    headers = {"X-Telegram-Bot-Api-Secret-Token": stack.settings.telegram_webhook_secret}
    assert gateway.post("/api/v1/telegram/webhook", deep, headers) == 400
    assert gateway.post("/api/v1/telegram/webhook", b"\xff" * 2_000_000, headers) == 413


async def test_after_the_fuzzing_everything_settles_cleanly_and_a_real_purchase_applies(
    stack: Stack, catalogue: Catalogue, engine: AsyncEngine
) -> None:
    """Status codes are not enough: every event the fuzzing got accepted must settle (none
    retried forever, no worker dead), no process may have logged a traceback, and a real
    purchase must still apply."""
    if not (TRIED.get("stripe_http") and TRIED.get("telegram_http")):
        pytest.skip("runs after the HTTP fuzzing of this module, to follow it through")
    deadline = time.monotonic() + 120  # a poison event is failed within about a minute
    pending = -1
    while pending:
        async with engine.connect() as connection:
            pending = int(
                await connection.scalar(
                    text("SELECT count(*) FROM payments.inbox WHERE status = 'pending'")
                )
                or 0
            )
        assert time.monotonic() < deadline, (
            f"{pending} events still pending after the fuzzing ({REPLAY})"
        )
        await asyncio.sleep(0.5)
    assert all(process.poll() is None for process in stack.processes.values()), REPLAY
    await stack.up(within=10)
    tracebacks = [
        path.name
        for path in stack.log_dir.glob("*.log")
        if "Traceback" in path.read_text(errors="replace")
    ]
    assert not tracebacks, f"tracebacks logged in {tracebacks} ({REPLAY})"

    buyer = new_buyer()
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
    )
    async with aiohttp.ClientSession() as http_session:
        assert (await post_stripe(http_session, stack, event))[0] == 200
    assert await wait_settled(engine, "stripe", [event["id"]]) == {event["id"]: "processed"}
    assert (await check(stack, await user_of_telegram(stack, buyer), "premium")).active
    print(f"\nbad inputs tried: {TRIED}; fresh seed {FRESH_SEED} (replay: FUZZ_SEED={FRESH_SEED})")


# --- gRPC: wrong types, empty ids, huge strings (each string field: further below) ------------

HUGE = "x" * 100_000

BAD_REQUESTS: list[tuple[str, str, Message]] = [
    ("payments", "ReplayEvent", payments_pb2.ReplayEventRequest()),
    ("payments", "ListEvents", payments_pb2.ListEventsRequest(page_token=HUGE)),
    ("payments", "CreateInvoiceLink", payments_pb2.CreateInvoiceLinkRequest(sku="vip_30d")),
    ("payments", "RefundPayment", payments_pb2.RefundPaymentRequest(provider="telegram")),
    ("payments", "HandleStripeEvent", payments_pb2.HandleStripeEventRequest(payload=b"{}")),
    ("payments", "HandleTelegramUpdate", payments_pb2.HandleTelegramUpdateRequest(payload=b"[]")),
    (
        "entitlements",
        "CheckEntitlement",
        entitlements_pb2.CheckEntitlementRequest(entitlement="premium"),
    ),
    ("entitlements", "ListEntitlements", entitlements_pb2.ListEntitlementsRequest()),
    ("entitlements", "GrantEntitlement", entitlements_pb2.GrantEntitlementRequest()),
    ("entitlements", "RevokeEntitlement", entitlements_pb2.RevokeEntitlementRequest()),
    ("accounts", "ResolveUser", accounts_pb2.ResolveUserRequest()),
    ("accounts", "LinkIdentity", accounts_pb2.LinkIdentityRequest()),
    ("accounts", "LinkAccount", accounts_pb2.LinkAccountRequest(login=1, server="s")),
    ("accounts", "UnlinkAccount", accounts_pb2.UnlinkAccountRequest()),
    ("accounts", "ListAccounts", accounts_pb2.ListAccountsRequest(user_id=HUGE)),
    (
        "accounts",
        "ReportAccountSnapshot",
        accounts_pb2.ReportAccountSnapshotRequest(login=1, server="s", balance=float("nan")),
    ),
]
PACKAGES = {
    "payments": "paylayer.payments.v1.PaymentsService",
    "entitlements": "paylayer.entitlements.v1.EntitlementsService",
    "accounts": "paylayer.accounts.v1.AccountsService",
}


@pytest.mark.parametrize(
    ("service", "method", "request_message"),
    BAD_REQUESTS,
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_grpc_arguments_are_invalid_argument(
    stack: Stack, service: str, method: str, request_message: Message
) -> None:
    await expect_invalid(stack, service, method, request_message.SerializeToString())


@pytest.mark.parametrize("service", sorted(PACKAGES))
async def test_wrong_wire_types_are_invalid_argument_for_every_method(
    stack: Stack, service: str
) -> None:
    from tests.faults.test_intruders import methods_of

    for method, _ in methods_of(service):
        # Field 1 sent as a 64-bit fixed where every method's field 1 is a string, int or message.
        await expect_invalid(
            stack, service, method, b"\x09" + b"\xff" * 8 + b"\x0a\xff\xff\xff\xff\x0f"
        )


async def expect_invalid(stack: Stack, service: str, method: str, payload: bytes) -> None:
    metadata = (("authorization", f"Bearer {stack.settings.internal_token}"),)
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        path = f"/{PACKAGES[service]}/{method}"
        streaming = method == "WatchEntitlements"
        rpc = channel.unary_stream(path) if streaming else channel.unary_unary(path)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            call = rpc(payload, metadata=metadata, timeout=5)
            if streaming:
                async for _ in call:
                    pass
            else:
                await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, raised.value.details())


@pytest.mark.parametrize("event_id", ["\x1f", "evt_\x00", "evt_\u00e9", "e" * 300])
def test_a_signed_event_with_an_unusable_id_is_refused_not_an_error(
    stack: Stack, event_id: str
) -> None:
    """Found by the fuzzer: an id with a control character once made the gateway answer 500."""
    gateway = Gateway(stack)
    body = json.dumps(
        {"id": event_id, "object": "event", "type": "charge.succeeded", "data": {"object": {}}}
    )
    signature = sign_stripe(body, stack.settings.stripe_webhook_secrets[0])
    assert (
        gateway.post("/api/v1/stripe/webhook", body.encode(), {"Stripe-Signature": signature})
        == 400
    )


# --- gRPC: every string field, fuzzed, against the one validation rule -----------------------

STRING_EXAMPLES = max(EXAMPLES // 2, 50)
# The caller's errors; anything else (INTERNAL, UNKNOWN, UNAVAILABLE ...) would be ours.
CALLERS_FAULT = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
MT5_LOGIN = 900_000_000 + uuid.uuid4().int % 1_000_000


@dataclass(frozen=True)
class Field:
    """One string field of one method, in a request that is otherwise well formed."""

    service: str
    method: str
    make: Callable[[str], Message]  # the request around `user_id` (a real user's id)
    path: str  # dotted, e.g. "source.reference"
    limited: bool = True  # at most 255 characters, no control character

    def __repr__(self) -> str:
        return f"{self.service}.{self.method}.{self.path}"


def _grant(user_id: str) -> Message:
    return entitlements_pb2.GrantEntitlementRequest(
        user_id="fuzz-" + user_id,
        entitlement="premium",
        source=entitlements_pb2.Source(provider="manual", reference=uuid.uuid4().hex),
        reason="fuzz",
        duration_seconds=60,
    )


def _revoke(user_id: str) -> Message:
    return entitlements_pb2.RevokeEntitlementRequest(
        source=entitlements_pb2.Source(provider="manual", reference=uuid.uuid4().hex),
        reason="fuzz",
    )


def _link(user_id: str) -> Message:
    return accounts_pb2.LinkAccountRequest(
        user_id=user_id,
        login=MT5_LOGIN,
        server="Fuzz-Live",
        account_type=accounts_pb2.ACCOUNT_TYPE_DEMO,
    )


def _snapshot(user_id: str) -> Message:
    request = accounts_pb2.ReportAccountSnapshotRequest(
        login=MT5_LOGIN, server="Fuzz-Live", balance=1, equity=1, currency="USD"
    )
    request.time.GetCurrentTime()
    return request


FIELDS = [
    Field("payments", "ListEvents", lambda _: payments_pb2.ListEventsRequest(), "event_type"),
    Field(
        "payments",
        "ReplayEvent",
        lambda _: payments_pb2.ReplayEventRequest(provider="stripe", event_id="evt_x"),
        "event_id",
    ),
    Field("payments", "ListPayments", lambda _: payments_pb2.ListPaymentsRequest(), "user_id"),
    Field(
        "payments",
        "GetSubscription",
        lambda _: payments_pb2.GetSubscriptionRequest(provider="stripe", subscription_id="s"),
        "subscription_id",
    ),
    Field(
        "payments",
        "ListSubscriptions",
        lambda _: payments_pb2.ListSubscriptionsRequest(),
        "user_id",
    ),
    Field(
        "payments",
        "ReplayEvents",
        lambda _: payments_pb2.ReplayEventsRequest(status=payments_pb2.EVENT_STATUS_IGNORED),
        "event_type",
    ),
    Field(
        "payments",
        "CreateInvoiceLink",
        lambda u: payments_pb2.CreateInvoiceLinkRequest(user_id=u, sku="nope"),
        "user_id",
    ),
    Field(
        "entitlements",
        "CheckEntitlement",
        lambda u: entitlements_pb2.CheckEntitlementRequest(user_id=u, entitlement="premium"),
        "user_id",
    ),
    Field(
        "entitlements",
        "ListEntitlements",
        lambda u: entitlements_pb2.ListEntitlementsRequest(user_id=u),
        "user_id",
    ),
    *(
        Field("entitlements", "GrantEntitlement", _grant, path)
        for path in ("user_id", "source.provider", "source.reference", "event_id", "granted_by")
    ),
    Field("entitlements", "GrantEntitlement", _grant, "reason", limited=False),
    *(
        Field("entitlements", "RevokeEntitlement", _revoke, path)
        for path in ("source.provider", "source.reference", "event_id", "revoked_by")
    ),
    Field(
        "accounts",
        "ResolveUser",
        lambda _: accounts_pb2.ResolveUserRequest(stripe_customer_id="cus_x"),
        "stripe_customer_id",
    ),
    Field(
        "accounts",
        "ResolveUser",
        lambda _: accounts_pb2.ResolveUserRequest(email="a@b.c"),
        "email",
    ),
    Field(
        "accounts",
        "LinkIdentity",
        lambda u: accounts_pb2.LinkIdentityRequest(user_id=u, email="fuzz@example.com"),
        "email",
    ),
    *(Field("accounts", "LinkAccount", _link, path) for path in ("server", "broker", "label")),
    Field(
        "accounts",
        "UnlinkAccount",
        lambda u: accounts_pb2.UnlinkAccountRequest(user_id=u, login=MT5_LOGIN, server="s"),
        "server",
    ),
    Field(
        "accounts",
        "GetAccount",
        lambda _: accounts_pb2.GetAccountRequest(login=MT5_LOGIN, server="s"),
        "server",
    ),
    *(
        Field("accounts", "ReportAccountSnapshot", _snapshot, path)
        for path in ("server", "currency")
    ),
]

# Anything protobuf can carry (no lone surrogates), with the bad kinds drawn often.
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
controls = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f", "\n", "\t"])
strings = st.one_of(
    any_text,
    st.builds(lambda a, c, b: a + c + b, any_text, controls, any_text),
    st.integers(250, 2000).map(lambda n: "x" * n),
    st.integers(250, 600).map(lambda n: "\u00e9" * n),
)


def is_bad(value: str, field: Field) -> bool:
    control = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}
    if not field.limited:
        control -= {"\t", "\n", "\r"}
    most = validation.MAX_TEXT if field.limited else validation.MAX_FREE_TEXT
    return len(value) > most or any(c in control for c in value)


@pytest.fixture(scope="module")
def channels(stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: grpc.insecure_channel(stack.addrs[name]) for name in PACKAGES}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def user_id(stack: Stack, channels: dict[str, grpc.Channel]) -> str:
    request = accounts_pb2.ResolveUserRequest(
        telegram_user_id=1 + uuid.uuid4().int % 2**40, create=True
    )
    response = call(stack, channels, "accounts", "ResolveUser", request)
    return accounts_pb2.ResolveUserResponse.FromString(response).user.user_id


def call(
    stack: Stack, channels: dict[str, grpc.Channel], service: str, method: str, request: Message
) -> bytes:
    rpc = channels[service].unary_unary(f"/{PACKAGES[service]}/{method}")
    metadata = (("authorization", f"Bearer {stack.settings.internal_token}"),)
    answer: bytes = rpc(request.SerializeToString(), metadata=metadata, timeout=10)
    return answer


def set_field(message: Message, path: str, value: str) -> None:
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    setattr(message, name, value)


@settings(
    max_examples=STRING_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
@given(field=st.sampled_from(FIELDS), value=strings)
def test_any_string_is_invalid_argument_or_answered_never_internal(
    stack: Stack, channels: dict[str, grpc.Channel], user_id: str, field: Field, value: str
) -> None:
    request = field.make(user_id)
    set_field(request, field.path, value)
    try:
        call(stack, channels, field.service, field.method, request)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
    if is_bad(value, field):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, value[:40], code, details)
    else:
        assert code in CALLERS_FAULT, (field, value[:40], code, details)


@pytest.mark.parametrize("field", [f for f in FIELDS if f.limited], ids=lambda f: repr(f))
@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "x" * 256], ids=["nul", "escape", "256"])
def test_the_same_bad_string_is_invalid_argument_in_every_service(
    stack: Stack, channels: dict[str, grpc.Channel], user_id: str, field: Field, value: str
) -> None:
    """The one rule, field by field: one character over the limit, a NUL, an escape."""
    request = field.make(user_id)
    set_field(request, field.path, value)
    with pytest.raises(grpc.RpcError) as raised:
        call(stack, channels, field.service, field.method, request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
