"""The four processes, started as `paylayer dev` starts them: health, reflection, auth, probes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from paylayer.grpc_client import open_channel
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2
from tests.stack import Stack, free_port

FIXED_NAMES = {
    "payments": "paylayer.payments.v1.PaymentsService",
    "entitlements": "paylayer.entitlements.v1.EntitlementsService",
    "accounts": "paylayer.accounts.v1.AccountsService",
}

# One cheap call per service, to see the auth interceptor answer before any handler runs.
PROBES = {
    "payments": (
        "/paylayer.payments.v1.PaymentsService/ListEvents",
        payments_pb2.ListEventsRequest(),
    ),
    "entitlements": (
        "/paylayer.entitlements.v1.EntitlementsService/CheckEntitlement",
        entitlements_pb2.CheckEntitlementRequest(user_id="u", entitlement="premium"),
    ),
    "accounts": (
        "/paylayer.accounts.v1.AccountsService/GetAccount",
        accounts_pb2.GetAccountRequest(login=1, server="s"),
    ),
}


@pytest.mark.parametrize("service", sorted(FIXED_NAMES))
async def test_health_is_serving_for_the_process_and_its_service(
    stack: Stack, service: str
) -> None:
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", FIXED_NAMES[service]):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", sorted(FIXED_NAMES))
async def test_reflection_lists_the_fixed_service_name(stack: Stack, service: str) -> None:
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=2)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert FIXED_NAMES[service] in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("service", sorted(FIXED_NAMES))
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic abc"])
async def test_calls_without_the_internal_token_are_unauthenticated(
    stack: Stack, service: str, authorization: str | None
) -> None:
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        method, request = PROBES[service]
        metadata = (("authorization", authorization),) if authorization else ()
        rpc = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rpc(request, metadata=metadata, timeout=2)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_gateway_probes_and_metrics(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.gateway_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{stack.gateway_url}/readyz") as response:
            assert response.status == 200
        # Not on the public port: what the layer counts is nobody's business outside.
        async with http.get(f"{stack.gateway_url}/metrics") as response:
            assert response.status == 404
        async with http.get(f"http://{stack.metrics_addrs['gateway']}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    assert 'paylayer_gateway_http_requests_total{code="200",route="/readyz"}' in text


# What each process needs before it may start, as `python -m <module>` checks it.
REQUIRED_SETTINGS = {
    "payments_service": ("DATABASE_URL", "INTERNAL_TOKEN"),
    "accounts_service": ("DATABASE_URL", "INTERNAL_TOKEN"),
    "entitlements_service": ("DATABASE_URL", "INTERNAL_TOKEN"),
    "gateway": ("STRIPE_WEBHOOK_SECRETS", "TELEGRAM_WEBHOOK_SECRET", "INTERNAL_TOKEN"),
}
PRESENT = {
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "INTERNAL_TOKEN": "token-" + "x" * 20,
    "STRIPE_WEBHOOK_SECRETS": "whsec_test",
    "TELEGRAM_WEBHOOK_SECRET": "telegram-secret",
}


@pytest.mark.parametrize(
    ("module", "missing"),
    [(module, name) for module, names in REQUIRED_SETTINGS.items() for name in names],
)
def test_a_service_missing_any_one_secret_refuses_to_start_and_names_it(
    module: str, missing: str
) -> None:
    """Every other required setting is present: the one left out alone stops the start."""
    env = {k: v for k, v in os.environ.items() if k not in (*PRESENT, "CALLER_TOKENS")}
    env |= {name: PRESENT[name] for name in REQUIRED_SETTINGS[module] if name != missing}
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr[-500:]
    assert "missing required settings" in result.stderr
    assert missing in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_turns_health_not_serving_then_exits_cleanly(stack: Stack) -> None:
    """A second payments process: on SIGTERM it must drain, not vanish mid-call."""
    addr = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "payments_service",
        env={
            **stack.env,
            "LISTEN_ADDR": addr,
            "METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "SHUTDOWN_GRACE_SECONDS": "3",
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen = []
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30, wait_for_ready=True
            )
            async for reply in watch:
                seen.append(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    process.send_signal(signal.SIGTERM)
                elif health_pb2.HealthCheckResponse.SERVING in seen:
                    break
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
    assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert process.stderr is not None
    assert b"payments stopped" in await process.stderr.read()


async def test_streams_opened_through_the_kit_carry_the_token(stack: Stack) -> None:
    """grpc.aio files a client interceptor under one call kind; streams need their own."""
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        watch = entitlements_pb2_grpc.EntitlementsServiceStub(channel).WatchEntitlements(
            entitlements_pb2.WatchEntitlementsRequest(user_id="nobody"), timeout=1.5
        )
        try:
            async for _ in watch:
                break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
