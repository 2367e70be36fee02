"""The services as the signed-in operator sees them: stubs that present the operator's token."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from paylayer.grpc_client import open_channel
from paylayer.settings import Settings
from paylayer.tls import GrpcTls
from protos.accounts.v1 import accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2_grpc

# Operators hold few tokens (two during a rotation); a handful of channel sets is plenty.
MAX_TOKENS = 8


@dataclass(frozen=True)
class Stubs:
    payments: payments_pb2_grpc.PaymentsServiceStub
    entitlements: entitlements_pb2_grpc.EntitlementsServiceStub
    accounts: accounts_pb2_grpc.AccountsServiceStub
    channels: tuple[grpc.aio.Channel, ...]


class Services:
    """Channels per operator token, opened on first use. The console holds no credential of
    its own: every call is made with the token the operator signed in with."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tls = GrpcTls.from_settings(settings)
        self._by_token: OrderedDict[str, Stubs] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def for_token(self, token: str) -> Stubs:
        stubs = self._by_token.get(token)
        if stubs is not None:
            self._by_token.move_to_end(token)
            return stubs
        channels = tuple(
            open_channel(addr, token, tls=self._tls)
            for addr in (
                self._settings.payments_addr,
                self._settings.entitlements_addr,
                self._settings.accounts_addr,
            )
        )
        stubs = Stubs(
            payments=payments_pb2_grpc.PaymentsServiceStub(channels[0]),
            entitlements=entitlements_pb2_grpc.EntitlementsServiceStub(channels[1]),
            accounts=accounts_pb2_grpc.AccountsServiceStub(channels[2]),
            channels=channels,
        )
        self._by_token[token] = stubs
        while len(self._by_token) > MAX_TOKENS:
            _, evicted = self._by_token.popitem(last=False)
            for channel in evicted.channels:
                # Closed with a grace, so a call still running on it can finish.
                task = asyncio.get_running_loop().create_task(channel.close(grace=5))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return stubs

    async def close(self) -> None:
        for stubs in self._by_token.values():
            for channel in stubs.channels:
                await channel.close()
        self._by_token.clear()
