"""Strangers leave nothing behind: 20,000 unauthenticated calls, each to a made-up 4 KB method
name, raise no gRPC server's memory by more than 5 MB."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from paylayer.ops.services import GRPC_SERVICES
from tests.stack import Stack

pytestmark = pytest.mark.faults

CALLS = 20_000
# The warm-up is the same traffic under one fixed method name: the allocator and gRPC's call
# arenas reach their working size, but a cache of strangers' names gains one entry only. Warmed
# up with unique names instead, a cache capped below the warm-up's count would be full before
# the measure and show no growth in it.
WARM_UP_CALLS = 2 * CALLS
NAME_BYTES = 4096
CONCURRENCY = 64
MAX_GROWTH_MB = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def made_up_method() -> str:
    # Unique every time, as an attacker would make them; printable, a valid :path.
    return f"/intruder.v1.Made/{secrets.token_hex(NAME_BYTES // 2)}"


WARM_UP_METHOD = made_up_method()


def the_warm_up_method() -> str:
    return WARM_UP_METHOD


async def strangers(
    addr: str, calls: int, method: Callable[[], str] = made_up_method
) -> dict[str, int]:
    codes: dict[str, int] = {}
    queue = iter(range(calls))
    async with grpc.aio.insecure_channel(addr) as channel:

        async def sender() -> None:
            for _ in queue:
                rpc = channel.unary_unary(method())
                try:
                    await rpc(b"", timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return codes


@pytest.mark.parametrize("service", GRPC_SERVICES)
async def test_unauthenticated_calls_to_made_up_methods_leave_no_memory_behind(
    fault_stack: Stack, service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = fault_stack.processes[service].pid
    addr = fault_stack.instances[service].listen_addr
    warm_up = await strangers(addr, WARM_UP_CALLS, the_warm_up_method)
    assert warm_up == {"UNAUTHENTICATED": WARM_UP_CALLS}
    before = rss_mb(pid)
    codes = await strangers(addr, CALLS)
    after = rss_mb(pid)
    figures = {
        "service": service,
        "warm_up_calls_one_name": WARM_UP_CALLS,
        "calls_unique_names": CALLS,
        "method_name_bytes": len(made_up_method()),
        "codes": codes,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb": round(after - before, 2),
    }
    with capsys.disabled():  # the figures are the point: shown on a pass too
        print("\nstrangers-memory " + json.dumps(figures))
    assert codes == {"UNAUTHENTICATED": CALLS}
    assert after - before <= MAX_GROWTH_MB, figures
