"""Run one of our gRPC services in-process, on a free port, for the length of a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from paylayer.grpc_client import open_channel
from paylayer.grpc_server import GrpcService


@asynccontextmanager
async def serving(service: GrpcService) -> AsyncIterator[str]:
    """Start the real server on port 0; yield its address; stop it gracefully afterwards."""
    port = await service.start("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await service.stop()


@asynccontextmanager
async def channel_to(addr: str, token: str) -> AsyncIterator[grpc.aio.Channel]:
    channel = open_channel(addr, token)
    try:
        yield channel
    finally:
        await channel.close()
