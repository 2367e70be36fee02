"""Is the stack up: every gRPC service's health, every gateway's and the console's /readyz."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paylayer.settings import Settings
from paylayer.tls import GrpcTls


async def _grpc_status(addr: str, tls: GrpcTls | None) -> str:
    channel = (
        grpc.aio.insecure_channel(addr)
        if tls is None
        else grpc.aio.secure_channel(addr, tls.channel_credentials())
    )
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    finally:
        await channel.close()


async def _http_status(addr: str) -> str:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://{addr}/readyz") as response,
        ):
            return "READY" if response.status == 200 else f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError):
        return "UNREACHABLE"


async def _every(probe: Callable[[str], Awaitable[str]], addrs: str) -> str:
    """One status for all replicas: the first that is not healthy, else the healthy one."""
    statuses = await asyncio.gather(*(probe(addr) for addr in addrs.split(",")))
    unhealthy = [s for s in statuses if s not in ("SERVING", "READY")]
    return unhealthy[0] if unhealthy else statuses[0]


async def check_all(
    config: Settings, gateway_addr: str, only: list[str] | None = None
) -> dict[str, str]:
    tls = GrpcTls.from_settings(config)

    async def grpc_status(addr: str) -> str:
        return await _grpc_status(addr, tls)

    probes = {
        "accounts": lambda: _every(grpc_status, config.accounts_addr),
        "entitlements": lambda: _every(grpc_status, config.entitlements_addr),
        "payments": lambda: _every(grpc_status, config.payments_addr),
        "gateway": lambda: _every(_http_status, gateway_addr),
        "console": lambda: _every(_http_status, config.console_addr),
    }
    names = only or list(probes)
    statuses = await asyncio.gather(*(probes[name]() for name in names))
    return dict(zip(names, statuses, strict=True))


def all_up(statuses: dict[str, str]) -> bool:
    return all(s in ("SERVING", "READY") for s in statuses.values())
