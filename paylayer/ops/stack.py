"""The whole stack as real processes, started as `paylayer dev` starts them, on free ports
(the tests and the benchmarks run it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paylayer.ops import processes
from paylayer.ops.health import all_up, check_all
from paylayer.ops.processes import free_port
from paylayer.settings import Settings


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    log_dir: Path
    instances: dict[str, processes.Instance]
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    # Settings one service gets on top of `env` (its own DATABASE_URL, say).
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def addrs(self) -> dict[str, str]:
        """Per service, the address (or comma-separated replica addresses) clients use."""
        return {service: self.env[f"{service.upper()}_ADDR"] for service in processes.MODULES}

    @property
    def metrics_addrs(self) -> dict[str, str]:
        return {
            name: instance.metrics_addr
            for name, instance in self.instances.items()
            if instance.metrics_addr
        }

    @property
    def gateway_url(self) -> str:
        return f"http://{self.instances['gateway'].listen_addr}"

    def start(self, name: str) -> None:
        instance = self.instances[name]
        env = {**self.env, **self.service_env.get(instance.service, {})}
        self.processes[name] = processes.start(
            instance, env, processes.log_file(self.log_dir, instance)
        )

    def start_all(self) -> None:
        for name in self.instances:
            self.start(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout)

    def stop_all(self) -> None:
        processes.stop_all(self.processes, self.settings.shutdown_grace_seconds)

    def wait_until_up(self, timeout: float = 60) -> float:
        return asyncio.run(self.up(within=timeout))

    async def up(self, within: float = 60) -> float:
        """Seconds until every process reports healthy (and every gateway ready)."""
        started = time.monotonic()
        while True:
            statuses = await check_all(self.settings, self.env["GATEWAY_ADDR"])
            if all_up(statuses):
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise TimeoutError(f"stack not up: {statuses}\n{self.logs()}")
            await asyncio.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


def make_stack(
    settings: Settings,
    log_dir: Path,
    replicas: int = 1,
    extra_env: dict[str, str] | None = None,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Stack:
    instances = processes.plan(
        replicas,
        lambda service, index: f"127.0.0.1:{free_port()}",
        lambda service, index: f"127.0.0.1:{free_port()}",
    )
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "INTERNAL_TOKEN": settings.internal_token,
        "CALLER_TOKENS": settings.caller_tokens,
        "STRIPE_WEBHOOK_SECRETS": ",".join(settings.stripe_webhook_secrets),
        "TELEGRAM_WEBHOOK_SECRET": settings.telegram_webhook_secret,
        "TELEGRAM_BOT_TOKEN": settings.telegram_bot_token,
        "TELEGRAM_API_BASE": settings.telegram_api_base,
        "CATALOGUE_PATH": str(settings.catalogue_path),
        "SHUTDOWN_GRACE_SECONDS": str(settings.shutdown_grace_seconds),
        **processes.client_env(instances),
        **(extra_env or {}),
    }
    return Stack(
        settings=Settings.from_env(env),
        env=env,
        log_dir=log_dir,
        instances={instance.name: instance for instance in instances},
        service_env=service_env or {},
    )
