"""Development secrets: generated once by `paylayer dev`, kept in the git-ignored `.paylayer/`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from paylayer.callers import CALLER_NAMES, OPERATOR, CallerTokens
from paylayer.settings import REPO_ROOT, ConfigError

DEV_DIR = REPO_ROOT / ".paylayer"
DEV_ENV_FILE = DEV_DIR / "dev.env"

GENERATED = {
    "STRIPE_WEBHOOK_SECRETS": lambda: "whsec_" + secrets.token_hex(24),
    "TELEGRAM_WEBHOOK_SECRET": lambda: secrets.token_urlsafe(24),
    "TELEGRAM_BOT_TOKEN": lambda: f"{secrets.randbelow(10**9)}:DEV{secrets.token_urlsafe(24)}",
    "BOT_UPDATES_SECRET": lambda: secrets.token_urlsafe(24),
}
# Generated only when the setting they go with is given: no bot, no bot secret to print.
NEEDED_ONLY_WITH = {"BOT_UPDATES_SECRET": "BOT_UPDATES_URL"}


def _read(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def load_dev_env() -> dict[str, str]:
    """The environment, with `paylayer dev`'s values filling only what the environment lacks."""
    return {**_read(DEV_ENV_FILE), **os.environ}


def ensure_dev_secrets(env: dict[str, str]) -> dict[str, str]:
    """Fill every unset secret, reusing earlier generated values so restarts keep them.

    Returns the ones that were generated (not given by the user), to be printed.
    """
    stored = _read(DEV_ENV_FILE)
    generated = {}
    for name, make in GENERATED.items():
        needs = NEEDED_ONLY_WITH.get(name)
        if env.get(name) or (needs is not None and not env.get(needs)):
            continue
        generated[name] = stored.get(name) or make()
    caller_tokens, cli_token = complete_caller_tokens(
        env.get("CALLER_TOKENS") or stored.get("CALLER_TOKENS", ""), env.get("INTERNAL_TOKEN", "")
    )
    if caller_tokens != env.get("CALLER_TOKENS"):
        generated["CALLER_TOKENS"] = caller_tokens
    if cli_token != env.get("INTERNAL_TOKEN"):
        generated["INTERNAL_TOKEN"] = cli_token
    DEV_DIR.mkdir(exist_ok=True)
    keep = {**stored, **generated}
    DEV_ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in sorted(keep.items())))
    DEV_ENV_FILE.chmod(0o600)
    return generated


def complete_caller_tokens(caller_tokens: str, cli_token: str) -> tuple[str, str]:
    """Every caller name with a plain token of its own, and the CLI's token (the operator's).

    Names without one get a generated token; a CLI token given by the user must be one of the
    operator's, or becomes the operator's when CALLER_TOKENS names no operator.
    """
    entries = [e.strip() for e in caller_tokens.split(",") if e.strip()]
    try:
        known = CallerTokens.parse(",".join(entries))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cli_token:
        if OPERATOR not in known.by_digest.values():
            entries.append(f"{OPERATOR}:{cli_token}")
        elif not known.belongs_to(cli_token, OPERATOR):
            raise ConfigError("INTERNAL_TOKEN (the CLI's) must be one of the operator's tokens")
    with_plain_token = {
        name.strip()
        for name, _, token in (e.partition(":") for e in entries)
        if not token.strip().startswith("sha256=")
    }
    for name in CALLER_NAMES:
        if name not in with_plain_token:
            entries.append(f"{name}:dev-{name}-{secrets.token_urlsafe(18)}")
    if not cli_token:
        operator_tokens = [
            token.strip()
            for name, _, token in (e.partition(":") for e in entries)
            if name.strip() == OPERATOR and not token.strip().startswith("sha256=")
        ]
        cli_token = operator_tokens[-1]
    return ",".join(entries), cli_token


def remember(name: str, value: str) -> None:
    """Record a value (the embedded DATABASE_URL) so other CLI commands can find the stack."""
    stored = _read(DEV_ENV_FILE)
    stored[name] = value
    DEV_DIR.mkdir(exist_ok=True)
    DEV_ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in sorted(stored.items())))
    DEV_ENV_FILE.chmod(0o600)
