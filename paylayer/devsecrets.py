"""Development secrets: generated once by `paylayer dev`, kept in the git-ignored `.paylayer/`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from paylayer.settings import REPO_ROOT

DEV_DIR = REPO_ROOT / ".paylayer"
DEV_ENV_FILE = DEV_DIR / "dev.env"

GENERATED = {
    "INTERNAL_TOKEN": lambda: "dev-" + secrets.token_urlsafe(24),
    "STRIPE_WEBHOOK_SECRETS": lambda: "whsec_" + secrets.token_hex(24),
    "TELEGRAM_WEBHOOK_SECRET": lambda: secrets.token_urlsafe(24),
    "TELEGRAM_BOT_TOKEN": lambda: f"{secrets.randbelow(10**9)}:DEV{secrets.token_urlsafe(24)}",
}


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
        if env.get(name):
            continue
        generated[name] = stored.get(name) or make()
    DEV_DIR.mkdir(exist_ok=True)
    keep = {**stored, **generated}
    DEV_ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in sorted(keep.items())))
    DEV_ENV_FILE.chmod(0o600)
    return generated


def remember(name: str, value: str) -> None:
    """Record a value (the embedded DATABASE_URL) so other CLI commands can find the stack."""
    stored = _read(DEV_ENV_FILE)
    stored[name] = value
    DEV_DIR.mkdir(exist_ok=True)
    DEV_ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in sorted(stored.items())))
    DEV_ENV_FILE.chmod(0o600)
