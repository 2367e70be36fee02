"""Every string field of the three services, fuzzed against the running stack: a bad value
(a NUL or another control character, or longer than 255 characters) is INVALID_ARGUMENT
whatever the service, and no value at all is ever INTERNAL or UNKNOWN."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paylayer import validation
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2
from protos.payments.v1 import payments_pb2
from tests.stack import Stack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
PACKAGES = {
    "payments": "paylayer.payments.v1.PaymentsService",
    "entitlements": "paylayer.entitlements.v1.EntitlementsService",
    "accounts": "paylayer.accounts.v1.AccountsService",
}
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
    max_examples=EXAMPLES,
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
