"""Settings read from the environment, the one place their names and defaults live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_ADDRS = {
    "gateway": "127.0.0.1:8080",
    "payments": "127.0.0.1:50051",
    "entitlements": "127.0.0.1:50052",
    "accounts": "127.0.0.1:50053",
}


# Each process serves Prometheus metrics on a port of its own, never on a public one: the
# gateway's webhook port answers 404 to /metrics.
DEFAULT_METRICS_ADDRS = {
    "gateway": "127.0.0.1:9050",
    "payments": "127.0.0.1:9051",
    "entitlements": "127.0.0.1:9052",
    "accounts": "127.0.0.1:9053",
}


def caller_token_values(caller_tokens: str) -> list[str]:
    """The plain tokens of CALLER_TOKENS (digests are not secrets)."""
    values = []
    for entry in caller_tokens.split(","):
        token = entry.partition(":")[2].strip()
        if token and not token.startswith("sha256="):
            values.append(token)
    return values


def database_passwords(database_url: str) -> list[str]:
    """The password in a DATABASE_URL, if any, so that logs can mask it."""
    try:
        password = urlsplit(database_url).password
    except ValueError:
        return []
    return [password] if password else []


class ConfigError(Exception):
    """A setting is missing or malformed; the process must not start."""


def _count(name: str, value: str) -> int:
    try:
        count = int(value or "0")
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if count < 0:
        raise ConfigError(f"{name} must not be negative")
    return count


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ConfigError(f"{name} must be a whole number, not {value[:20]!r}")
    return int(value)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {value[:20]!r}") from None
    if not 0 < seconds <= 86_400:
        raise ConfigError(f"{name} must be more than 0 and at most a day")
    return seconds


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
    # The product's bot behind the gateway: where non-payment updates go, and its secret.
    bot_updates_url: str = ""
    bot_updates_secret: str = ""
    internal_token: str = ""
    # `name:token` pairs (or `name:sha256=<hex>`): who may call this process's gRPC server.
    caller_tokens: str = ""
    # TLS for every internal gRPC hop: file paths; unset means plaintext.
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_tls_ca: str = ""
    payments_addr: str = DEFAULT_ADDRS["payments"]
    entitlements_addr: str = DEFAULT_ADDRS["entitlements"]
    accounts_addr: str = DEFAULT_ADDRS["accounts"]
    catalogue_path: Path = field(default=REPO_ROOT / "catalogue.yaml")
    # Where this process listens; unset means the default address of its own service.
    listen_addr: str = ""
    metrics_addr: str = ""
    log_level: str = "INFO"
    # The most database connections this process's pool opens; 0: the service's own default.
    database_pool_size: int = 0
    shutdown_grace_seconds: float = 10.0
    # Processed and ignored events older than this leave the inbox (0: kept for ever).
    inbox_retention_days: int = 90
    # Seconds between two passes of the channel reconcile (members vs who is entitled).
    channels_reconcile_seconds: float = 30.0

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
            bot_updates_url=env.get("BOT_UPDATES_URL", "").strip(),
            bot_updates_secret=env.get("BOT_UPDATES_SECRET", ""),
            internal_token=env.get("INTERNAL_TOKEN", ""),
            caller_tokens=env.get("CALLER_TOKENS", ""),
            grpc_tls_cert=env.get("GRPC_TLS_CERT", ""),
            grpc_tls_key=env.get("GRPC_TLS_KEY", ""),
            grpc_tls_ca=env.get("GRPC_TLS_CA", ""),
            payments_addr=env.get("PAYMENTS_ADDR", DEFAULT_ADDRS["payments"]),
            entitlements_addr=env.get("ENTITLEMENTS_ADDR", DEFAULT_ADDRS["entitlements"]),
            accounts_addr=env.get("ACCOUNTS_ADDR", DEFAULT_ADDRS["accounts"]),
            catalogue_path=Path(env.get("CATALOGUE_PATH", str(REPO_ROOT / "catalogue.yaml"))),
            listen_addr=env.get("LISTEN_ADDR", ""),
            metrics_addr=env.get("METRICS_ADDR", ""),
            log_level=env.get("LOG_LEVEL", "INFO"),
            database_pool_size=_count("DATABASE_POOL_SIZE", env.get("DATABASE_POOL_SIZE", "0")),
            shutdown_grace_seconds=float(env.get("SHUTDOWN_GRACE_SECONDS", "10")),
            inbox_retention_days=_whole_number(env, "INBOX_RETENTION_DAYS", 90),
            channels_reconcile_seconds=_seconds(env, "CHANNELS_RECONCILE_SECONDS", 30.0),
        )

    def require(self, *names: str) -> None:
        """Refuse to start when a setting the process depends on is empty."""
        missing = [name for name in names if not getattr(self, name.lower())]
        if missing:
            raise ConfigError(f"missing required settings: {', '.join(missing)}")

    def check_bot_updates(self) -> None:
        """A bot URL needs its secret: the bot must be able to tell us from anyone else."""
        if not self.bot_updates_url:
            return
        if urlsplit(self.bot_updates_url).scheme not in ("http", "https"):
            raise ConfigError("BOT_UPDATES_URL must be an http:// or https:// URL")
        if not self.bot_updates_secret:
            raise ConfigError("BOT_UPDATES_URL is set but BOT_UPDATES_SECRET is not")

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
            self.bot_updates_secret,
            self.internal_token,
            *caller_token_values(self.caller_tokens),
            *database_passwords(self.database_url),
        ]
        return [v for v in values if v]
