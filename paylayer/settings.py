"""Settings read from the environment, the one place their names and defaults live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_ADDRS = {
    "gateway": "127.0.0.1:8080",
    "payments": "127.0.0.1:50051",
    "entitlements": "127.0.0.1:50052",
    "accounts": "127.0.0.1:50053",
}


# Each gRPC process serves Prometheus metrics on a port of its own (the gateway on /metrics).
DEFAULT_METRICS_ADDRS = {
    "payments": "127.0.0.1:9051",
    "entitlements": "127.0.0.1:9052",
    "accounts": "127.0.0.1:9053",
}


class ConfigError(Exception):
    """A setting is missing or malformed; the process must not start."""


def _stripe_livemode(env: Mapping[str, str]) -> bool:
    """`STRIPE_LIVEMODE`, else live exactly when the API key is a live one."""
    given = env.get("STRIPE_LIVEMODE", "").strip().lower()
    if given in ("true", "1", "yes"):
        return True
    if given in ("false", "0", "no"):
        return False
    if given:
        raise ConfigError(f"STRIPE_LIVEMODE must be true or false, not {given[:20]!r}")
    return env.get("STRIPE_API_KEY", "").startswith(("sk_live_", "rk_live_"))


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    stripe_webhook_secrets: tuple[str, ...] = ()
    stripe_api_key: str = ""
    # Whether this deployment takes live Stripe events (true) or test ones (false).
    stripe_livemode: bool = False
    # Stripe's API (checkout, portal, cancels, refunds, reconcile); tests point it elsewhere.
    stripe_api_base: str = "https://api.stripe.com"
    checkout_success_url: str = ""
    checkout_cancel_url: str = ""
    telegram_webhook_secret: str = ""
    telegram_bot_token: str = ""
    telegram_api_base: str = "https://api.telegram.org"
    internal_token: str = ""
    payments_addr: str = DEFAULT_ADDRS["payments"]
    entitlements_addr: str = DEFAULT_ADDRS["entitlements"]
    accounts_addr: str = DEFAULT_ADDRS["accounts"]
    catalogue_path: Path = field(default=REPO_ROOT / "catalogue.yaml")
    # Where this process listens; unset means the default address of its own service.
    listen_addr: str = ""
    metrics_addr: str = ""
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secrets = tuple(
            s.strip() for s in env.get("STRIPE_WEBHOOK_SECRETS", "").split(",") if s.strip()
        )
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            stripe_webhook_secrets=secrets,
            stripe_api_key=env.get("STRIPE_API_KEY", ""),
            stripe_livemode=_stripe_livemode(env),
            stripe_api_base=env.get("STRIPE_API_BASE", cls.stripe_api_base).rstrip("/"),
            checkout_success_url=env.get("CHECKOUT_SUCCESS_URL", ""),
            checkout_cancel_url=env.get("CHECKOUT_CANCEL_URL", ""),
            telegram_webhook_secret=env.get("TELEGRAM_WEBHOOK_SECRET", ""),
            telegram_bot_token=env.get("TELEGRAM_BOT_TOKEN", ""),
            telegram_api_base=env.get("TELEGRAM_API_BASE", cls.telegram_api_base).rstrip("/"),
            internal_token=env.get("INTERNAL_TOKEN", ""),
            payments_addr=env.get("PAYMENTS_ADDR", DEFAULT_ADDRS["payments"]),
            entitlements_addr=env.get("ENTITLEMENTS_ADDR", DEFAULT_ADDRS["entitlements"]),
            accounts_addr=env.get("ACCOUNTS_ADDR", DEFAULT_ADDRS["accounts"]),
            catalogue_path=Path(env.get("CATALOGUE_PATH", str(REPO_ROOT / "catalogue.yaml"))),
            listen_addr=env.get("LISTEN_ADDR", ""),
            metrics_addr=env.get("METRICS_ADDR", ""),
            log_level=env.get("LOG_LEVEL", "INFO"),
            shutdown_grace_seconds=float(env.get("SHUTDOWN_GRACE_SECONDS", "10")),
        )

    def require(self, *names: str) -> None:
        """Refuse to start when a setting the process depends on is empty."""
        missing = [name for name in names if not getattr(self, name.lower())]
        if missing:
            raise ConfigError(f"missing required settings: {', '.join(missing)}")

    def listen_address(self, service: str) -> str:
        return self.listen_addr or DEFAULT_ADDRS[service]

    def metrics_address(self, service: str) -> str:
        return self.metrics_addr or DEFAULT_METRICS_ADDRS[service]

    def secrets(self) -> list[str]:
        """Every secret value, so that logs can be checked never to carry one."""
        values = [
            *self.stripe_webhook_secrets,
            self.stripe_api_key,
            self.telegram_webhook_secret,
            self.telegram_bot_token,
            self.internal_token,
        ]
        return [v for v in values if v]
