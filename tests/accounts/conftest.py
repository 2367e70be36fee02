"""The accounts service and the real entitlements service it asks, both in-process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from accounts_service.server import build as build_accounts
from entitlements_service.server import build as build_entitlements
from paylayer.settings import Settings
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2_grpc
from tests.grpc_helpers import channel_to, serving


@pytest.fixture(scope="session")
async def entitlements_addr(settings: Settings) -> AsyncIterator[str]:
    async with serving(build_entitlements(settings)) as addr:
        yield addr


@pytest.fixture(scope="session")
async def accounts_addr(settings: Settings, entitlements_addr: str) -> AsyncIterator[str]:
    async with serving(
        build_accounts(replace(settings, entitlements_addr=entitlements_addr))
    ) as addr:
        yield addr


@pytest.fixture(scope="session")
async def accounts(
    accounts_addr: str, settings: Settings
) -> AsyncIterator[accounts_pb2_grpc.AccountsServiceStub]:
    async with channel_to(accounts_addr, settings.internal_token) as channel:
        yield accounts_pb2_grpc.AccountsServiceStub(channel)


@pytest.fixture(scope="session")
async def entitlements(
    entitlements_addr: str, settings: Settings
) -> AsyncIterator[entitlements_pb2_grpc.EntitlementsServiceStub]:
    async with channel_to(entitlements_addr, settings.internal_token) as channel:
        yield entitlements_pb2_grpc.EntitlementsServiceStub(channel)


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
