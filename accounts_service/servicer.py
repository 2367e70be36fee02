"""gRPC adapter of the accounts service: proto in, domain call, proto out."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime
from typing import cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from accounts_service import rules
from accounts_service.store import IDENTITY_LABELS, AccountsStore, IdentityKind
from accounts_service.tiers import TierCaps
from paylayer.callers import MAY_CREATE_USERS, caller_var
from paylayer.errors import DomainError, InvalidArgument, NotFound, PermissionDenied
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc

MAX_TEXT_LENGTH = 255
MAX_EMAIL_LENGTH = 254  # the longest address SMTP can carry
MAX_BATCH = 500
DEFAULT_HISTORY_POINTS = 1440  # a day of minutes
MAX_HISTORY_POINTS = 10_000

_ACCOUNT_TYPE_NAMES = {
    accounts_pb2.ACCOUNT_TYPE_DEMO: "demo",
    accounts_pb2.ACCOUNT_TYPE_REAL: "real",
    accounts_pb2.ACCOUNT_TYPE_CONTEST: "contest",
}
_ACCOUNT_TYPE_VALUES = {name: value for value, name in _ACCOUNT_TYPE_NAMES.items()}

log = logging.getLogger(__name__)


# --- validation: every bad argument is InvalidArgument, before any query ----------------------


def _user_id(value: str) -> str:
    """Internal ids are UUIDs; the canonical spelling, so one user never has two."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument("user_id must be a UUID") from None


def _text(name: str, value: str, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidArgument(f"{name} is longer than {MAX_TEXT_LENGTH} characters")
    return value


def _login(value: int) -> int:
    if value <= 0:
        raise InvalidArgument("login must be a positive MT5 login")
    return value


def _identity(kind: str, value: str | int) -> str | int:
    """Check one identity and give the form it is stored in."""
    if kind == "telegram_user_id":
        assert isinstance(value, int)
        if value <= 0:
            raise InvalidArgument("telegram_user_id must be positive")
        return value
    assert isinstance(value, str)
    if kind == "stripe_customer_id":
        customer = _text("stripe_customer_id", value, required=True)
        if not customer.startswith("cus_"):
            raise InvalidArgument("stripe_customer_id must be a Stripe customer id (cus_...)")
        return customer
    if kind == "email":
        # Addresses are compared case-insensitively in practice; store one spelling.
        email = value.strip().lower()
        local, at, domain = email.partition("@")
        if not (local and at and domain) or len(email) > MAX_EMAIL_LENGTH or " " in email:
            raise InvalidArgument("email is not an email address")
        return email
    return _user_id(value)


def _which_identity(
    request: accounts_pb2.ResolveUserRequest | accounts_pb2.LinkIdentityRequest,
) -> tuple[IdentityKind, str | int]:
    kind = request.WhichOneof("identity")
    if kind is None:
        raise InvalidArgument("give one identity: user_id, telegram_user_id, stripe_customer_id …")
    # The oneof's field names are the identity columns, by design of the proto.
    return cast(IdentityKind, kind), _identity(kind, getattr(request, kind))


def _snapshot(request: accounts_pb2.ReportAccountSnapshotRequest) -> rules.Snapshot:
    if not request.HasField("time"):
        raise InvalidArgument("time is required: snapshots are ordered by it")
    snapshot = rules.Snapshot(
        time=request.time.ToDatetime(tzinfo=UTC),
        balance=request.balance,
        equity=request.equity,
        margin=request.margin,
        free_margin=request.free_margin,
        margin_level=request.margin_level,
        currency=_text("currency", request.currency, required=False).upper(),
        leverage=request.leverage,
    )
    problem = rules.snapshot_problem(snapshot, datetime.now(UTC))
    if problem:
        raise InvalidArgument(problem)
    return snapshot


# --- domain to proto ---------------------------------------------------------------------------


def _timestamp(moment: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def _user_message(user: rules.User) -> accounts_pb2.User:
    return accounts_pb2.User(
        user_id=user.user_id,
        telegram_user_id=user.telegram_user_id or 0,
        stripe_customer_id=user.stripe_customer_id or "",
        email=user.email or "",
        created_at=_timestamp(user.created_at),
    )


def _account_message(account: rules.LinkedAccount, *, suspended: bool) -> accounts_pb2.Account:
    message = accounts_pb2.Account(
        login=account.login,
        server=account.server,
        user_id=account.user_id,
        account_type=_ACCOUNT_TYPE_VALUES[account.account_type],
        broker=account.broker,
        label=account.label,
        suspended=suspended,
        linked_at=_timestamp(account.linked_at),
        peak_equity=account.drawdown.peak_equity or 0.0,
        drawdown=account.drawdown.drawdown,
        max_drawdown=account.drawdown.max_drawdown,
    )
    snapshot = account.snapshot
    if snapshot is not None:
        message.balance = snapshot.balance
        message.equity = snapshot.equity
        message.margin = snapshot.margin
        message.free_margin = snapshot.free_margin
        message.margin_level = snapshot.margin_level
        message.currency = snapshot.currency
        message.leverage = snapshot.leverage
        message.snapshot_time.CopyFrom(_timestamp(snapshot.time))
    return message


class AccountsServicer(accounts_pb2_grpc.AccountsServiceServicer):
    def __init__(self, store: AccountsStore, tiers: TierCaps) -> None:
        self._store = store
        self._tiers = tiers

    async def ResolveUser(
        self, request: accounts_pb2.ResolveUserRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ResolveUserResponse:
        if request.create and caller_var.get() not in MAY_CREATE_USERS:
            raise PermissionDenied("this caller may resolve users but not create them")
        kind, value = _which_identity(request)
        user = await self._store.find_user(kind, value)
        if user is not None:
            return accounts_pb2.ResolveUserResponse(user=_user_message(user), created=False)
        # Internal ids are minted here only, so an unknown one is never created on request.
        if not request.create or kind == "user_id":
            raise NotFound(f"no user with this {IDENTITY_LABELS[kind]}")
        user, created = await self._store.create_user(kind, value)
        if created:
            log.info("created user %s for a new %s", user.user_id, kind)
        return accounts_pb2.ResolveUserResponse(user=_user_message(user), created=created)

    async def ResolveUsers(
        self, request: accounts_pb2.ResolveUsersRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ResolveUsersResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} requests in one call")
        results = [accounts_pb2.ResolveUserResult() for _ in request.requests]
        wanted: dict[tuple[IdentityKind, bool], list[tuple[int, str | int]]] = {}
        for index, item in enumerate(request.requests):
            try:
                kind, value = _which_identity(item)
                if item.create and caller_var.get() not in MAY_CREATE_USERS:
                    raise PermissionDenied("this caller may resolve users but not create them")
            except DomainError as error:
                results[index].code, results[index].message = error.code.value[0], error.message
                continue
            # Internal ids are minted here only, so an unknown one is never created on request.
            wanted.setdefault((kind, item.create and kind != "user_id"), []).append((index, value))
        for (kind, create), items in wanted.items():
            users = await self._store.resolve_many(
                kind, [value for _, value in items], create=create
            )
            for index, value in items:
                if value in users:
                    user, created = users[value]
                    results[index].user.CopyFrom(_user_message(user))
                    results[index].created = created
                    if created:
                        log.info("created user %s for a new %s", user.user_id, kind)
                else:
                    results[index].code = grpc.StatusCode.NOT_FOUND.value[0]
                    results[index].message = f"no user with this {IDENTITY_LABELS[kind]}"
        return accounts_pb2.ResolveUsersResponse(results=results)

    async def LinkIdentity(
        self, request: accounts_pb2.LinkIdentityRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.LinkIdentityResponse:
        user_id = _user_id(request.user_id)
        kind, value = _which_identity(request)
        assert kind != "user_id"  # not in LinkIdentityRequest's oneof
        user = await self._store.link_identity(user_id, kind, value)
        return accounts_pb2.LinkIdentityResponse(user=_user_message(user))

    async def LinkAccount(
        self, request: accounts_pb2.LinkAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.LinkAccountResponse:
        user_id = _user_id(request.user_id)
        login = _login(request.login)
        server = _text("server", request.server, required=True)
        account_type = _ACCOUNT_TYPE_NAMES.get(request.account_type)
        if account_type is None:
            raise InvalidArgument("account_type must be demo, real or contest")
        broker = _text("broker", request.broker, required=False)
        label = _text("label", request.label, required=False)
        await self._require_user(user_id)
        # Asked before the transaction: no row stays locked while another service answers.
        cap = await self._tiers.cap_for(user_id)
        account, older_links, created = await self._store.link_account(
            user_id=user_id,
            login=login,
            server=server,
            account_type=account_type,
            broker=broker,
            label=label,
            cap=cap,
        )
        # A relink of an account over the cap finds it where it was: possibly suspended.
        return accounts_pb2.LinkAccountResponse(
            account=_account_message(account, suspended=rules.is_suspended(older_links, cap)),
            created=created,
        )

    async def UnlinkAccount(
        self, request: accounts_pb2.UnlinkAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.UnlinkAccountResponse:
        await self._store.unlink_account(
            user_id=_user_id(request.user_id),
            login=_login(request.login),
            server=_text("server", request.server, required=True),
        )
        return accounts_pb2.UnlinkAccountResponse()

    async def ListAccounts(
        self, request: accounts_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ListAccountsResponse:
        user_id = _user_id(request.user_id)
        await self._require_user(user_id)
        cap = await self._tiers.cap_for(user_id)
        linked = await self._store.list_accounts(user_id)
        flags = rules.suspended_flags(len(linked), cap)
        return accounts_pb2.ListAccountsResponse(
            accounts=[
                _account_message(account, suspended=suspended)
                for account, suspended in zip(linked, flags, strict=True)
            ],
            cap=cap,
        )

    async def ReportAccountSnapshot(
        self, request: accounts_pb2.ReportAccountSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ReportAccountSnapshotResponse:
        login = _login(request.login)
        server = _text("server", request.server, required=True)
        snapshot = _snapshot(request)
        owner, _ = await self._store.get_account(login, server)
        # Asked first, so that when entitlements is down nothing is stored and a retry applies.
        cap = await self._tiers.cap_for(owner.user_id)
        account, older_links, applied = await self._store.report_snapshot(login, server, snapshot)
        return accounts_pb2.ReportAccountSnapshotResponse(
            account=_account_message(account, suspended=rules.is_suspended(older_links, cap)),
            applied=applied,
        )

    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.GetAccountResponse:
        account, older_links = await self._store.get_account(
            _login(request.login), _text("server", request.server, required=True)
        )
        cap = await self._tiers.cap_for(account.user_id)
        return accounts_pb2.GetAccountResponse(
            account=_account_message(account, suspended=rules.is_suspended(older_links, cap))
        )

    async def ListAccountSnapshots(
        self, request: accounts_pb2.ListAccountSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ListAccountSnapshotsResponse:
        login = _login(request.login)
        server = _text("server", request.server, required=True)
        if not 0 <= request.limit <= MAX_HISTORY_POINTS:
            raise InvalidArgument(f"limit must be between 0 and {MAX_HISTORY_POINTS}")
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        until = request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None
        if since and until and since >= until:
            raise InvalidArgument("since must be before until")
        if request.max_points < 0:
            raise InvalidArgument("max_points must not be negative")
        bucket_seconds = 0
        if request.max_points:
            if since is None:
                raise InvalidArgument("max_points needs since: the span to divide")
            span = ((until or datetime.now(UTC)) - since).total_seconds()
            # Whole minutes: history has at most one point a minute.
            bucket_seconds = max(1, math.ceil(span / request.max_points / 60)) * 60
        await self._store.get_account(login, server)  # NOT_FOUND when not linked
        points = await self._store.snapshot_history(
            login,
            server,
            since=since,
            until=until,
            limit=request.limit or DEFAULT_HISTORY_POINTS,
            bucket_seconds=bucket_seconds,
        )
        return accounts_pb2.ListAccountSnapshotsResponse(
            points=[
                accounts_pb2.AccountSnapshotPoint(
                    # Built directly: FromDatetime costs more than the rest for 10,000 points.
                    time=Timestamp(
                        seconds=int(point.time.timestamp()), nanos=point.time.microsecond * 1000
                    ),
                    balance=point.balance,
                    equity=point.equity,
                    drawdown=point.drawdown,
                )
                for point in points
            ]
        )

    async def _require_user(self, user_id: str) -> None:
        if await self._store.find_user("user_id", user_id) is None:
            raise NotFound(f"no user {user_id}")
