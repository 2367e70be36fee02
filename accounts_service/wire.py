"""Every proto <-> domain conversion of the accounts service, with each field checked."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from accounts_service import rules
from accounts_service.store import IdentityKind
from accounts_service.use_cases import AccountView, Link, Lookup
from paylayer import validation
from paylayer.errors import InvalidArgument
from protos.accounts.v1 import accounts_pb2

MAX_EMAIL_LENGTH = 254  # the longest address SMTP can carry

_ACCOUNT_TYPE_NAMES = {
    accounts_pb2.ACCOUNT_TYPE_DEMO: "demo",
    accounts_pb2.ACCOUNT_TYPE_REAL: "real",
    accounts_pb2.ACCOUNT_TYPE_CONTEST: "contest",
}
_ACCOUNT_TYPE_VALUES = {name: value for value, name in _ACCOUNT_TYPE_NAMES.items()}


# --- requests to domain values: every bad argument is InvalidArgument, before any query ------


def user_id(value: str) -> str:
    return validation.uuid_text("user_id", value)


def text(name: str, value: str, *, required: bool) -> str:
    """Stored stripped: a label or a server name typed with a stray space is the same one."""
    stripped = validation.text(name, value).strip()
    if required and not stripped:
        raise InvalidArgument(f"{name} is required")
    return stripped


def login(value: int) -> int:
    return validation.positive("login", value)


def server(value: str) -> str:
    return text("server", value, required=True)


def _identity(kind: str, value: str | int) -> str | int:
    """Check one identity and give the form it is stored in."""
    if kind == "telegram_user_id":
        assert isinstance(value, int)
        return validation.positive("telegram_user_id", value)
    assert isinstance(value, str)
    if kind == "stripe_customer_id":
        customer = text("stripe_customer_id", value, required=True)
        if not customer.startswith("cus_"):
            raise InvalidArgument("stripe_customer_id must be a Stripe customer id (cus_...)")
        return customer
    if kind == "email":
        # Addresses are compared case-insensitively in practice; store one spelling.
        email = validation.text("email", value).strip().lower()
        local, at, domain = email.partition("@")
        if not (local and at and domain) or len(email) > MAX_EMAIL_LENGTH or " " in email:
            raise InvalidArgument("email is not an email address")
        return email
    return user_id(value)


def lookup(
    request: accounts_pb2.ResolveUserRequest | accounts_pb2.LinkIdentityRequest,
) -> Lookup:
    kind = request.WhichOneof("identity")
    if kind is None:
        raise InvalidArgument("give one identity: user_id, telegram_user_id, stripe_customer_id …")
    # The oneof's field names are the identity columns, by design of the proto.
    return Lookup(
        kind=cast(IdentityKind, kind),
        value=_identity(kind, getattr(request, kind)),
        create=isinstance(request, accounts_pb2.ResolveUserRequest) and request.create,
    )


def link(request: accounts_pb2.LinkAccountRequest) -> Link:
    account_type = _ACCOUNT_TYPE_NAMES.get(request.account_type)
    checked_user_id, checked_login, checked_server = (
        user_id(request.user_id),
        login(request.login),
        server(request.server),
    )
    if account_type is None:
        raise InvalidArgument("account_type must be demo, real or contest")
    return Link(
        user_id=checked_user_id,
        login=checked_login,
        server=checked_server,
        account_type=account_type,
        broker=text("broker", request.broker, required=False),
        label=text("label", request.label, required=False),
    )


def snapshot(request: accounts_pb2.ReportAccountSnapshotRequest, now: datetime) -> rules.Snapshot:
    if not request.HasField("time"):
        raise InvalidArgument("time is required: snapshots are ordered by it")
    taken = rules.Snapshot(
        time=validation.moment("time", request.time),
        balance=validation.amount("balance", request.balance),
        equity=validation.amount("equity", request.equity),
        margin=validation.amount("margin", request.margin),
        # Equity minus margin: below zero when the margin is more than the equity.
        free_margin=validation.amount("free_margin", request.free_margin, may_be_negative=True),
        margin_level=validation.amount("margin_level", request.margin_level),
        currency=text("currency", request.currency, required=False).upper(),
        leverage=request.leverage,
    )
    problem = rules.snapshot_problem(taken, now)
    if problem:
        raise InvalidArgument(problem)
    return taken


# --- domain values to messages -----------------------------------------------------------------


def to_proto_time(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def user_message(user: rules.User) -> accounts_pb2.User:
    return accounts_pb2.User(
        user_id=user.user_id,
        telegram_user_id=user.telegram_user_id or 0,
        stripe_customer_id=user.stripe_customer_id or "",
        email=user.email or "",
        created_at=to_proto_time(user.created_at),
    )


def account_message(view: AccountView) -> accounts_pb2.Account:
    account = view.account
    message = accounts_pb2.Account(
        login=account.login,
        server=account.server,
        user_id=account.user_id,
        account_type=_ACCOUNT_TYPE_VALUES[account.account_type],
        broker=account.broker,
        label=account.label,
        suspended=view.suspended,
        linked_at=to_proto_time(account.linked_at),
        peak_equity=account.drawdown.peak_equity or 0.0,
        drawdown=account.drawdown.drawdown,
        max_drawdown=account.drawdown.max_drawdown,
    )
    taken = account.snapshot
    if taken is not None:
        message.balance = taken.balance
        message.equity = taken.equity
        message.margin = taken.margin
        message.free_margin = taken.free_margin
        message.margin_level = taken.margin_level
        message.currency = taken.currency
        message.leverage = taken.leverage
        message.snapshot_time.CopyFrom(to_proto_time(taken.time))
    return message


def history_point(point: rules.HistoryPoint) -> accounts_pb2.AccountSnapshotPoint:
    return accounts_pb2.AccountSnapshotPoint(
        # Built directly: FromDatetime costs more than the rest for 10,000 points.
        time=Timestamp(seconds=int(point.time.timestamp()), nanos=point.time.microsecond * 1000),
        balance=point.balance,
        equity=point.equity,
        drawdown=point.drawdown,
    )
