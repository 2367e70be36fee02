"""`paylayer dev`, `migrate` and `health`: run the stack on this machine and check it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

from paylayer.cli.bot_webhook import describe_webhook, webhook_state
from paylayer.cli.common import UserError, add_json_flag, print_json, settings
from paylayer.devsecrets import DEV_DIR, ensure_dev_secrets, remember
from paylayer.ops import processes
from paylayer.ops.health import all_up, check_all
from paylayer.ops.migrations import SERVICES, upgrade
from paylayer.settings import DEFAULT_ADDRS, DEFAULT_METRICS_ADDRS, Settings

SERVICE_NAMES = list(processes.MODULES)
START_TIMEOUT_SECONDS = 60.0


def register(commands: argparse._SubParsersAction) -> None:
    dev_parser = commands.add_parser(
        "dev", help="start PostgreSQL if needed, migrate, run everything"
    )
    dev_parser.add_argument(
        "--replicas", type=int, default=1, help="processes per service; ports step by 100"
    )
    dev_parser.set_defaults(run=dev)

    migrate_parser = commands.add_parser("migrate", help="bring every schema to the newest version")
    migrate_parser.add_argument("services", nargs="*", choices=[[], *SERVICES], metavar="SERVICE")
    migrate_parser.set_defaults(run=migrate)

    health_parser = commands.add_parser("health", help="check every service's health")
    health_parser.add_argument(
        "services", nargs="*", choices=[[], *SERVICE_NAMES], metavar="SERVICE", help="default: all"
    )
    add_json_flag(health_parser)
    health_parser.set_defaults(run=health)


def migrate(args: argparse.Namespace) -> int:
    config = settings()
    if not config.database_url:
        raise UserError("DATABASE_URL is not set (run `paylayer dev` for a local database)")
    for service in args.services or SERVICES:
        upgrade(service, config.database_url)
        print(f"{service}: migrated")
    return 0


def health(args: argparse.Namespace) -> int:
    config = settings()
    statuses = asyncio.run(check_all(config, config.gateway_addr, args.services))
    # Only in the full check: a per-service check (compose's health checks) must not ask
    # Telegram every few seconds. Shown, never counted: Telegram's view is not our health.
    webhook = (
        asyncio.run(webhook_state(config))
        if config.telegram_bot_token and not args.services
        else None
    )
    if args.json:
        print_json(statuses if webhook is None else {**statuses, "telegram_webhook": webhook})
    else:
        for name, status in statuses.items():
            print(f"{name:<13} {status}")
        if webhook is not None:
            print(f"{'webhook':<13} {describe_webhook(webhook)}")
    return 0 if all_up(statuses) else 1


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

    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: the terminal closed
        signal.signal(signum, request_stop)
    if args.replicas < 1:
        raise UserError("--replicas must be at least 1")
    instances = processes.plan(
        args.replicas,
        lambda service, i: processes.shifted(
            env.get(f"{service.upper()}_ADDR") or DEFAULT_ADDRS[service], i
        ),
        lambda service, i: processes.shifted(DEFAULT_METRICS_ADDRS[service], i),
    )
    env.update(processes.client_env(instances))
    config = Settings.from_env(env)
    gateway_addr = config.gateway_addr
    children = {i.name: processes.start(i, env) for i in instances}
    code = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        statuses = asyncio.run(check_all(config, gateway_addr))
        while not all_up(statuses) and not stop_requested:
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
        processes.stop_all(children, config.shutdown_grace_seconds)
        if database_server is not None:
            database_server.cleanup()
        print("stopped", flush=True)
    return code


def _print_banner(
    config: Settings, gateway_addr: str, generated: dict[str, str], took: float
) -> None:
    print(f"\nPaylayer is up ({took:.1f} s):", flush=True)
    gateways = ", ".join(f"http://{addr}" for addr in gateway_addr.split(","))
    print(f"  gateway       {gateways}  (webhooks under /api/v1/)")
    print(f"  payments      {config.payments_addr}")
    print(f"  entitlements  {config.entitlements_addr}")
    print(f"  accounts      {config.accounts_addr}")
    consoles = ", ".join(f"http://{addr}" for addr in config.console_addr.split(","))
    print(f"  console       {consoles}  (sign in with the operator token below)")
    if generated:
        print(f"\nDevelopment secrets (generated, kept in {DEV_DIR / 'dev.env'}):")
        for name, value in generated.items():
            print(f"  {name}={value}")
    print("\nCtrl-C stops everything.", flush=True)
