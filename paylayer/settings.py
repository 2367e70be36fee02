"""Settings read from the environment, the one place their names and defaults live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shipped inside the package, so an installed wheel finds it as a checkout does.
DEFAULT_CATALOGUE_PATH = Path(__file__).resolve().parent / "catalogue.yaml"
DEFAULT_MESSAGES_PATH = Path(__file__).resolve().parent / "messages.yaml"

DEFAULT_PAYMENTS_WORKERS = 2

DEFAULT_ADDRS = {
    "gateway": "127.0.0.1:8080",
    "payments": "127.0.0.1:50051",
    "entitlements": "127.0.0.1:50052",
    "accounts": "127.0.0.1:50053",
    "console": "127.0.0.1:8081",
}


# Each process serves Prometheus metrics on a port of its own, never on a public one: the
# gateway's webhook port answers 404 to /metrics.
DEFAULT_METRICS_ADDRS = {
    "gateway": "127.0.0.1:9050",
    "payments": "127.0.0.1:9051",
    "entitlements": "127.0.0.1:9052",
    "accounts": "127.0.0.1:9053",
    "console": "127.0.0.1:9054",  # unused: the console serves no metrics yet
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


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ConfigError(f"{name} must be a whole number, not {value[:20]!r}")
    return int(value)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    count = _whole_number(env, name, default)
    if count < 1:
        raise ConfigError(f"{name} must be at least 1")
    return count


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {value[:20]!r}") from None
    if not seconds >= 0:  # also refuses NaN
        raise ConfigError(f"{name} must not be negative")
    return seconds


def _period(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds between two rounds of a loop: never 0 (a busy loop), at most a day."""
    seconds = _seconds(env, name, default)
    if not 0 < seconds <= 86_400:
        raise ConfigError(f"{name} must be more than 0 and at most a day")
    return seconds


def _deadline(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds a call may take: never 0 (every call would fail at once)."""
    seconds = _seconds(env, name, default)
    if seconds == 0:
        raise ConfigError(f"{name} must be more than 0")
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


def _setting(env: str, default: Any, doc: str) -> Any:
    """A field read from the environment variable `env`; `doc` is its one line in the README."""
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every environment variable Paylayer reads, with its default; the README's table lists
    the same names (a test keeps the two equal)."""

    database_url: str = _setting("DATABASE_URL", "", "PostgreSQL; unset in dev: embedded")
    stripe_webhook_secrets: tuple[str, ...] = _setting(
        "STRIPE_WEBHOOK_SECRETS", (), "whsec_… values, comma-separated; each is tried (rotation)"
    )
    stripe_api_key: str = _setting("STRIPE_API_KEY", "", "Stripe's API: checkout, refunds, …")
    stripe_livemode: bool = _setting(
        "STRIPE_LIVEMODE", False, "whether this deployment takes live Stripe events or test ones"
    )
    stripe_api_base: str = _setting(
        "STRIPE_API_BASE", "https://api.stripe.com", "Stripe's API; tests point it elsewhere"
    )
    checkout_success_url: str = _setting(
        "CHECKOUT_SUCCESS_URL", "", "where Checkout sends a buyer who paid"
    )
    checkout_cancel_url: str = _setting(
        "CHECKOUT_CANCEL_URL", "", "where Checkout sends a buyer who gave up"
    )
    telegram_webhook_secret: str = _setting(
        "TELEGRAM_WEBHOOK_SECRET", "", "compared with X-Telegram-Bot-Api-Secret-Token"
    )
    telegram_bot_token: str = _setting("TELEGRAM_BOT_TOKEN", "", "the Bot API token")
    telegram_api_base: str = _setting(
        "TELEGRAM_API_BASE", "https://api.telegram.org", "the Bot API; tests point it elsewhere"
    )
    bot_updates_url: str = _setting(
        "BOT_UPDATES_URL", "", "the product bot behind the gateway: non-payment updates go there"
    )
    bot_updates_secret: str = _setting("BOT_UPDATES_SECRET", "", "the bot's webhook secret")
    internal_token: str = _setting(
        "INTERNAL_TOKEN", "", "the token this process presents on internal gRPC calls"
    )
    caller_tokens: str = _setting(
        "CALLER_TOKENS", "", "`name:token` or `name:sha256=<hex>` pairs: who may call this server"
    )
    grpc_tls_cert: str = _setting("GRPC_TLS_CERT", "", "PEM file; set: internal gRPC uses TLS")
    grpc_tls_key: str = _setting("GRPC_TLS_KEY", "", "PEM file, the key of GRPC_TLS_CERT")
    grpc_tls_ca: str = _setting("GRPC_TLS_CA", "", "PEM file, the CA peers are checked against")
    payments_addr: str = _setting(
        "PAYMENTS_ADDR", DEFAULT_ADDRS["payments"], "payments' address(es), comma-separated"
    )
    entitlements_addr: str = _setting(
        "ENTITLEMENTS_ADDR",
        DEFAULT_ADDRS["entitlements"],
        "entitlements' address(es), comma-separated",
    )
    accounts_addr: str = _setting(
        "ACCOUNTS_ADDR", DEFAULT_ADDRS["accounts"], "accounts' address(es), comma-separated"
    )
    gateway_addr: str = _setting(
        "GATEWAY_ADDR", DEFAULT_ADDRS["gateway"], "where `paylayer health` finds the gateway(s)"
    )
    catalogue_path: Path = _setting(  # noqa: RUF009 (a field, not a shared default)
        "CATALOGUE_PATH", DEFAULT_CATALOGUE_PATH, "skus, prices and tiers (YAML)"
    )
    messages_path: Path = _setting(  # noqa: RUF009 (a field, not a shared default)
        "MESSAGES_PATH", DEFAULT_MESSAGES_PATH, "texts of receipts, notices and reminders (YAML)"
    )
    listen_addr: str = _setting(
        "LISTEN_ADDR", "", "where this process listens; unset: its service's default address"
    )
    metrics_addr: str = _setting(
        "METRICS_ADDR", "", "where /metrics is served; unset: its service's default"
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "the least level logged")
    database_pool_size: int = _setting(
        "DATABASE_POOL_SIZE", 0, "the most connections the pool opens; 0: the service's default"
    )
    shutdown_grace_seconds: float = _setting(
        "SHUTDOWN_GRACE_SECONDS", 10.0, "how long in-flight work may finish after SIGTERM"
    )
    gateway_payments_deadline_seconds: float = _setting(
        "GATEWAY_PAYMENTS_DEADLINE_SECONDS",
        1.8,
        "how long the gateway waits on payments before it answers a webhook 503",
    )
    inbox_retention_days: int = _setting(
        "INBOX_RETENTION_DAYS", 90, "processed and ignored events older leave the inbox (0: kept)"
    )
    payments_workers: int = _setting(
        "PAYMENTS_WORKERS", DEFAULT_PAYMENTS_WORKERS, "inbox workers, each applying a batch at once"
    )
    payments_outbox_lease_seconds: float = _setting(
        "PAYMENTS_OUTBOX_LEASE_SECONDS",
        60.0,
        "how long a claimed message is held before its send counts as unknown",
    )
    channels_reconcile_seconds: float = _setting(
        "CHANNELS_RECONCILE_SECONDS", 30.0, "between two channel passes (members vs entitled)"
    )
    snapshot_history_days: int = _setting(
        "SNAPSHOT_HISTORY_DAYS", 90, "accounts' snapshot history (a point a minute) kept (0: ever)"
    )
    console_addr: str = _setting(
        "CONSOLE_ADDR", DEFAULT_ADDRS["console"], "the operator console; never a public address"
    )
    console_session_key: str = _setting(
        "CONSOLE_SESSION_KEY",
        "",
        "encrypts console sessions; replicas share it; unset: made at start",
    )
    trigger_disabled: bool = _setting(
        "PAYLAYER_TRIGGER_DISABLED", False, "set (the production image): `paylayer trigger` refuses"
    )
    otel_exporter_otlp_endpoint: str = _setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "where spans go; unset: tracing is off"
    )

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
            gateway_addr=env.get("GATEWAY_ADDR", DEFAULT_ADDRS["gateway"]),
            catalogue_path=Path(env.get("CATALOGUE_PATH") or DEFAULT_CATALOGUE_PATH),
            messages_path=Path(env.get("MESSAGES_PATH") or DEFAULT_MESSAGES_PATH),
            listen_addr=env.get("LISTEN_ADDR", ""),
            metrics_addr=env.get("METRICS_ADDR", ""),
            log_level=env.get("LOG_LEVEL", "INFO"),
            database_pool_size=_whole_number(env, "DATABASE_POOL_SIZE", 0),
            shutdown_grace_seconds=_seconds(env, "SHUTDOWN_GRACE_SECONDS", 10.0),
            gateway_payments_deadline_seconds=_deadline(
                env, "GATEWAY_PAYMENTS_DEADLINE_SECONDS", 1.8
            ),
            inbox_retention_days=_whole_number(env, "INBOX_RETENTION_DAYS", 90),
            payments_workers=_positive(env, "PAYMENTS_WORKERS", DEFAULT_PAYMENTS_WORKERS),
            payments_outbox_lease_seconds=_period(env, "PAYMENTS_OUTBOX_LEASE_SECONDS", 60.0),
            channels_reconcile_seconds=_period(env, "CHANNELS_RECONCILE_SECONDS", 30.0),
            snapshot_history_days=_whole_number(env, "SNAPSHOT_HISTORY_DAYS", 90),
            console_addr=env.get("CONSOLE_ADDR", "").strip() or DEFAULT_ADDRS["console"],
            console_session_key=env.get("CONSOLE_SESSION_KEY", ""),
            trigger_disabled=bool(env.get("PAYLAYER_TRIGGER_DISABLED", "").strip()),
            otel_exporter_otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        )

    @classmethod
    def variables(cls) -> set[str]:
        """Every environment variable a Settings field is read from."""
        return {f.metadata["env"] for f in fields(cls)}

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
            self.console_session_key,
            self.internal_token,
            *caller_token_values(self.caller_tokens),
            *database_passwords(self.database_url),
        ]
        return [v for v in values if v]
