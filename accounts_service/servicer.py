"""gRPC adapter of the accounts service: proto in (wire), use case call, proto out."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import cast

import grpc

from accounts_service import wire
from accounts_service.store import LinkableKind
from accounts_service.use_cases import Accounts, Lookup, Resolved
from paylayer import validation
from paylayer.callers import caller_var
from paylayer.errors import DomainError, InvalidArgument
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc

MAX_BATCH = 500
DEFAULT_HISTORY_POINTS = 1440  # a day of minutes
MAX_HISTORY_POINTS = 10_000


class AccountsServicer(accounts_pb2_grpc.AccountsServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def ResolveUser(
        self, request: accounts_pb2.ResolveUserRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ResolveUserResponse:
        resolved = await self._accounts.resolve_user(wire.lookup(request), caller_var.get())
        return accounts_pb2.ResolveUserResponse(
            user=wire.user_message(resolved.user), created=resolved.created
        )

    async def ResolveUsers(
        self, request: accounts_pb2.ResolveUsersRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ResolveUsersResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} requests in one call")
        lookups: list[Lookup | DomainError] = []
        for item in request.requests:
            try:
                lookups.append(wire.lookup(item))
            except DomainError as error:
                lookups.append(error)
        results = []
        for outcome in await self._accounts.resolve_users(lookups, caller_var.get()):
            result = accounts_pb2.ResolveUserResult()
            if isinstance(outcome, Resolved):
                result.user.CopyFrom(wire.user_message(outcome.user))
                result.created = outcome.created
            else:
                result.code, result.message = outcome.code.value[0], outcome.message
            results.append(result)
        return accounts_pb2.ResolveUsersResponse(results=results)

    async def LinkIdentity(
        self, request: accounts_pb2.LinkIdentityRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.LinkIdentityResponse:
        user_id = wire.user_id(request.user_id)
        lookup = wire.lookup(request)
        assert lookup.kind != "user_id"  # not in LinkIdentityRequest's oneof
        user = await self._accounts.link_identity(
            user_id, cast(LinkableKind, lookup.kind), lookup.value
        )
        return accounts_pb2.LinkIdentityResponse(user=wire.user_message(user))

    async def LinkAccount(
        self, request: accounts_pb2.LinkAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.LinkAccountResponse:
        view, created = await self._accounts.link_account(wire.link(request))
        return accounts_pb2.LinkAccountResponse(account=wire.account_message(view), created=created)

    async def UnlinkAccount(
        self, request: accounts_pb2.UnlinkAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.UnlinkAccountResponse:
        await self._accounts.unlink_account(
            user_id=wire.user_id(request.user_id),
            login=wire.login(request.login),
            server=wire.server(request.server),
        )
        return accounts_pb2.UnlinkAccountResponse()

    async def ListAccounts(
        self, request: accounts_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ListAccountsResponse:
        views, cap = await self._accounts.list_accounts(wire.user_id(request.user_id))
        return accounts_pb2.ListAccountsResponse(
            accounts=[wire.account_message(view) for view in views], cap=cap
        )

    async def ReportAccountSnapshot(
        self, request: accounts_pb2.ReportAccountSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ReportAccountSnapshotResponse:
        login, server = wire.login(request.login), wire.server(request.server)
        snapshot = wire.snapshot(request, datetime.now(UTC))
        view, applied = await self._accounts.report_snapshot(login, server, snapshot)
        return accounts_pb2.ReportAccountSnapshotResponse(
            account=wire.account_message(view), applied=applied
        )

    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.GetAccountResponse:
        view = await self._accounts.get_account(
            wire.login(request.login), wire.server(request.server)
        )
        return accounts_pb2.GetAccountResponse(account=wire.account_message(view))

    async def ListAccountSnapshots(
        self, request: accounts_pb2.ListAccountSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ListAccountSnapshotsResponse:
        if not 0 <= request.limit <= MAX_HISTORY_POINTS:
            raise InvalidArgument(f"limit must be between 0 and {MAX_HISTORY_POINTS}")
        since = validation.moment("since", request.since) if request.HasField("since") else None
        until = validation.moment("until", request.until) if request.HasField("until") else None
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
        points = await self._accounts.snapshot_history(
            wire.login(request.login),
            wire.server(request.server),
            since=since,
            until=until,
            limit=request.limit or DEFAULT_HISTORY_POINTS,
            bucket_seconds=bucket_seconds,
        )
        return accounts_pb2.ListAccountSnapshotsResponse(
            points=[wire.history_point(point) for point in points]
        )
