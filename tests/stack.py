"""The whole stack as real processes, started the way `paylayer dev` starts them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paylayer.cli.local import _all_up, check_all
from paylayer.settings import Settings

SERVICE_MODULES = {
    "accounts": "accounts_service",
    "entitlements": "entitlements_service",
    "payments": "payments_service",
    "gateway": "gateway",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    log_dir: Path
    addrs: dict[str, str]
    metrics_addrs: dict[str, str]
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.addrs['gateway']}"

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        env = {**self.env, "LISTEN_ADDR": self.addrs[name]}
        if name in self.metrics_addrs:
            env["METRICS_ADDR"] = self.metrics_addrs[name]
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[name]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout)

    def wait_until_up(self, timeout: float = 60) -> float:
        return asyncio.run(self.up(within=timeout))

    async def up(self, within: float = 60) -> float:
        """Seconds until every process reports healthy (and the gateway ready)."""
        started = time.monotonic()
        while True:
            statuses = await check_all(self.settings, self.addrs["gateway"])
            if _all_up(statuses):
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise TimeoutError(f"stack not up: {statuses}\n{self.logs()}")
            await asyncio.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


def make_stack(settings: Settings, log_dir: Path) -> Stack:
    addrs = {name: f"127.0.0.1:{free_port()}" for name in SERVICE_MODULES}
    metrics_addrs = {
        name: f"127.0.0.1:{free_port()}" for name in SERVICE_MODULES if name != "gateway"
    }
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "INTERNAL_TOKEN": settings.internal_token,
        "STRIPE_WEBHOOK_SECRETS": ",".join(settings.stripe_webhook_secrets),
        "TELEGRAM_WEBHOOK_SECRET": settings.telegram_webhook_secret,
        "TELEGRAM_BOT_TOKEN": settings.telegram_bot_token,
        "TELEGRAM_API_BASE": settings.telegram_api_base,
        "CATALOGUE_PATH": str(settings.catalogue_path),
        "PAYMENTS_ADDR": addrs["payments"],
        "ENTITLEMENTS_ADDR": addrs["entitlements"],
        "ACCOUNTS_ADDR": addrs["accounts"],
        "SHUTDOWN_GRACE_SECONDS": str(settings.shutdown_grace_seconds),
    }
    wired = Settings.from_env(env)
    return Stack(settings=wired, env=env, log_dir=log_dir, addrs=addrs, metrics_addrs=metrics_addrs)
