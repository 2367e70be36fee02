"""`python -m console`: serve the operator console until SIGTERM."""

from __future__ import annotations

import logging
import sys

import uvloop
from aiohttp import web

from console import metrics
from console.app import init_app
from paylayer.callers import CallerTokens, CallerTokensError
from paylayer.logs import configure_logging
from paylayer.metrics import serve_metrics
from paylayer.parent import die_with_parent
from paylayer.settings import ConfigError, Settings


def main() -> None:
    die_with_parent()
    try:
        settings = Settings.from_env()
        # Sign-in checks tokens against the operator's in these: with none, nobody could.
        # INTERNAL_TOKEN alone is single-token mode, as on the services: it is the operator's.
        if not settings.internal_token:
            settings.require("CALLER_TOKENS")
        CallerTokens.from_settings(settings.caller_tokens, settings.internal_token)
    except (ConfigError, CallerTokensError) as error:
        print(f"console: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("console", settings.log_level, settings.secrets())
    if not settings.console_session_key:
        logging.getLogger("console").warning(
            "CONSOLE_SESSION_KEY is unset: sessions end when this process does, and replicas "
            "cannot share them"
        )
    serve_metrics(settings.metrics_address("console"), metrics.REGISTRY)
    # `paylayer dev` and the tests hand each process LISTEN_ADDR; alone, CONSOLE_ADDR decides.
    host, port = (settings.listen_addr or settings.console_addr).rsplit(":", 1)
    web.run_app(
        init_app(settings),
        host=host,
        port=int(port),
        print=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
