"""`paylayer dev`, `migrate` and `health`: run the stack on this machine and check it."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paylayer.cli.common import UserError, settings
from paylayer.devsecrets import DEV_DIR, ensure_dev_secrets, remember
from paylayer.migrations import SERVICES, upgrade
from paylayer.settings import DEFAULT_ADDRS, Settings

# Started in this order; the gateway last, as it needs payments to be ready.
PROCESSES = (
    ("accounts", "accounts_service"),
    ("entitlements", "entitlements_service"),
    ("payments", "payments_service"),
    ("gateway", "gateway"),
)
SERVICE_NAMES = [name for name, _ in PROCESSES]
START_TIMEOUT_SECONDS = 60.0


def register(commands: argparse._SubParsersAction) -> None:
    dev_parser = commands.add_parser(
        "dev", help="start PostgreSQL if needed, migrate, run everything"
    )
    dev_parser.set_defaults(run=dev)

    migrate_parser = commands.add_parser("migrate", help="bring every schema to the newest version")
    migrate_parser.add_argument("services", nargs="*", choices=[[], *SERVICES], metavar="SERVICE")
    migrate_parser.set_defaults(run=migrate)

    health_parser = commands.add_parser("health", help="check every service's health")
    health_parser.add_argument(
        "services", nargs="*", choices=[[], *SERVICE_NAMES], metavar="SERVICE", help="default: all"
    )
    health_parser.set_defaults(run=health)


def migrate(args: argparse.Namespace) -> int:
    config = settings()
    if not config.database_url:
        raise UserError("DATABASE_URL is not set (run `paylayer dev` for a local database)")
    for service in args.services or SERVICES:
        upgrade(service, config.database_url)
        print(f"{service}: migrated")
    return 0


async def _grpc_status(addr: str) -> str:
    channel = grpc.aio.insecure_channel(addr)
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


async def check_all(
    config: Settings, gateway_addr: str, only: list[str] | None = None
) -> dict[str, str]:
    probes = {
        "accounts": lambda: _grpc_status(config.accounts_addr),
        "entitlements": lambda: _grpc_status(config.entitlements_addr),
        "payments": lambda: _grpc_status(config.payments_addr),
        "gateway": lambda: _http_status(gateway_addr),
    }
    names = only or list(probes)
    statuses = await asyncio.gather(*(probes[name]() for name in names))
    return dict(zip(names, statuses, strict=True))


def _all_up(statuses: dict[str, str]) -> bool:
    return all(s in ("SERVING", "READY") for s in statuses.values())


def health(args: argparse.Namespace) -> int:
    config = settings()
    gateway_addr = os.environ.get("GATEWAY_ADDR", DEFAULT_ADDRS["gateway"])
    statuses = asyncio.run(check_all(config, gateway_addr, args.services))
    for name, status in statuses.items():
        print(f"{name:<13} {status}")
    return 0 if _all_up(statuses) else 1


def _die_with_parent() -> None:
    """Children get SIGTERM if `paylayer dev` itself dies, so none is ever orphaned (Linux)."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _start(env: dict[str, str]) -> dict[str, subprocess.Popen[Any]]:
    children = {}
    for name, module in PROCESSES:
        child_env = {**env, "LISTEN_ADDR": env.get(f"{name.upper()}_ADDR", DEFAULT_ADDRS[name])}
        children[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            env=child_env,
            # Own session: Ctrl-C reaches only `paylayer dev`, which stops the children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return children


def _stop(children: dict[str, subprocess.Popen[Any]], grace: float) -> None:
    # The gateway first, so no new webhook arrives at a service that is going away.
    for name in reversed(list(children)):
        if children[name].poll() is None:
            children[name].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def dev(args: argparse.Namespace) -> int:
    started = time.monotonic()
    env = dict(os.environ)
    generated = ensure_dev_secrets(env)
    env.update(generated)
    database_server = None
    if not env.get("DATABASE_URL"):
        from paylayer.embedded_pg import ensure_database, start_embedded

        print(f"starting embedded PostgreSQL in {DEV_DIR / 'pgdata'}", flush=True)
        database_server, admin_url = start_embedded(DEV_DIR / "pgdata")
        env["DATABASE_URL"] = ensure_database(admin_url, "paylayer")
        remember("DATABASE_URL", env["DATABASE_URL"])
    for service in SERVICES:
        upgrade(service, env["DATABASE_URL"])
    config = Settings.from_env(env)

    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children = _start(env)
    gateway_addr = env.get("GATEWAY_ADDR", DEFAULT_ADDRS["gateway"])
    code = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        statuses = asyncio.run(check_all(config, gateway_addr))
        while not _all_up(statuses) and not stop_requested:
            if time.monotonic() > deadline:
                raise UserError(f"services did not come up within 60 s: {statuses}")
            if any(child.poll() is not None for child in children.values()):
                raise UserError("a service exited while starting; see its log above")
            time.sleep(0.2)
            statuses = asyncio.run(check_all(config, gateway_addr))
        if not stop_requested:
            _print_banner(config, gateway_addr, generated, time.monotonic() - started)
        while not stop_requested:
            exited = [name for name, child in children.items() if child.poll() is not None]
            if exited:
                print(
                    f"paylayer dev: {', '.join(exited)} exited; stopping the rest", file=sys.stderr
                )
                code = 1
                break
            time.sleep(0.2)
    finally:
        print("stopping…", flush=True)
        _stop(children, config.shutdown_grace_seconds)
        if database_server is not None:
            database_server.cleanup()
        print("stopped", flush=True)
    return code


def _print_banner(
    config: Settings, gateway_addr: str, generated: dict[str, str], took: float
) -> None:
    print(f"\nPaylayer is up ({took:.1f} s):", flush=True)
    print(f"  gateway       http://{gateway_addr}  (webhooks under /api/v1/)")
    print(f"  payments      {config.payments_addr}")
    print(f"  entitlements  {config.entitlements_addr}")
    print(f"  accounts      {config.accounts_addr}")
    if generated:
        print(f"\nDevelopment secrets (generated, kept in {DEV_DIR / 'dev.env'}):")
        for name, value in generated.items():
            print(f"  {name}={value}")
    print("\nCtrl-C stops everything.", flush=True)
