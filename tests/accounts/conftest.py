"""The accounts service and the real entitlements service it asks, both in-process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from accounts_service.server import build as build_accounts
from entitlements_service.server import build as build_entitlements
from paylayer.settings import Settings
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.grpc_helpers import channel_to, serving


# Package-scoped, not session-scoped: an in-process server's LISTEN connection is read only
# while the test loop runs. Kept past its tests, it stops being read between synchronous tests,
# its backend blocks writing the heartbeats other replicas send, and any DROP DATABASE on the
# server (which waits for every backend to answer a signal) hangs.
@pytest.fixture(scope="package")
async def entitlements_addr(settings: Settings) -> AsyncIterator[str]:
    async with serving(build_entitlements(settings)) as addr:
        yield addr


@pytest.fixture(scope="package")
async def accounts_addr(settings: Settings, entitlements_addr: str) -> AsyncIterator[str]:
    async with serving(
        build_accounts(replace(settings, entitlements_addr=entitlements_addr))
    ) as addr:
        yield addr


@pytest.fixture(scope="package")
async def accounts(
    accounts_addr: str, settings: Settings
) -> AsyncIterator[accounts_pb2_grpc.AccountsServiceStub]:
    async with channel_to(accounts_addr, settings.internal_token) as channel:
        yield accounts_pb2_grpc.AccountsServiceStub(channel)


@pytest.fixture(scope="package")
async def entitlements(
    entitlements_addr: str, settings: Settings
) -> AsyncIterator[entitlements_pb2_grpc.EntitlementsServiceStub]:
    async with channel_to(entitlements_addr, settings.internal_token) as channel:
        yield entitlements_pb2_grpc.EntitlementsServiceStub(channel)


# Snapshots in tests are dated from here on, safely in the past.
START = datetime.now(UTC) - timedelta(hours=1)


def report(
    login: int, server: str, at: datetime, equity: float, balance: float = 1000.0
) -> accounts_pb2.ReportAccountSnapshotRequest:
    time = Timestamp()
    time.FromDatetime(at)
    return accounts_pb2.ReportAccountSnapshotRequest(
        login=login,
        server=server,
        balance=balance,
        equity=equity,
        margin=100.0,
        free_margin=equity - 100.0,
        margin_level=equity / 100.0 * 100,
        currency="usd",
        leverage=500,
        time=time,
    )


def telegram_id() -> int:
    """A Telegram user id no other test uses (the database lives for the whole session)."""
    return secrets.randbelow(10**12) + 1


def mt5_login() -> int:
    return secrets.randbelow(10**9) + 1


async def new_user(accounts: accounts_pb2_grpc.AccountsServiceStub) -> str:
    response = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_id(), create=True)
    )
    return response.user.user_id


def account_request(
    user_id: str, login: int | None = None, server: str = "Broker-Demo"
) -> accounts_pb2.LinkAccountRequest:
    return accounts_pb2.LinkAccountRequest(
        user_id=user_id,
        login=login if login is not None else mt5_login(),
        server=server,
        account_type=accounts_pb2.ACCOUNT_TYPE_DEMO,
        broker="Broker Ltd",
        label="main",
    )


async def grant(
    entitlements: entitlements_pb2_grpc.EntitlementsServiceStub, user_id: str, tier: str
) -> entitlements_pb2.Source:
    """Give the user a tier for a day, as a manual grant would; return its source to revoke."""
    source = entitlements_pb2.Source(provider="manual", reference=f"test-{secrets.token_hex(8)}")
    await entitlements.GrantEntitlement(
        entitlements_pb2.GrantEntitlementRequest(
            user_id=user_id,
            entitlement=tier,
            source=source,
            duration_seconds=24 * 3600,
            reason="accounts tests",
            granted_by="tests",
        )
    )
    return source


async def revoke(
    entitlements: entitlements_pb2_grpc.EntitlementsServiceStub, source: entitlements_pb2.Source
) -> None:
    await entitlements.RevokeEntitlement(
        entitlements_pb2.RevokeEntitlementRequest(
            source=source, reason="accounts tests", revoked_by="tests"
        )
    )
