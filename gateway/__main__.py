"""`python -m gateway`: serve the webhooks until SIGTERM."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from gateway import metrics
from gateway.app import init_app
from paylayer.logs import configure_logging
from paylayer.metrics import serve_metrics
from paylayer.parent import die_with_parent
from paylayer.settings import ConfigError, Settings
from paylayer.tracing import setup_tracing


def main() -> None:
    die_with_parent()
    try:
        settings = Settings.from_env()
        settings.require("STRIPE_WEBHOOK_SECRETS", "TELEGRAM_WEBHOOK_SECRET", "INTERNAL_TOKEN")
        settings.check_bot_updates()
    except ConfigError as error:
        print(f"gateway: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("gateway", settings.log_level, settings.secrets())
    setup_tracing("gateway", settings.otel_exporter_otlp_endpoint)
    # Off the public port: the webhook listener faces the Internet, the scraper does not.
    serve_metrics(settings.metrics_address("gateway"), metrics.REGISTRY)
    host, port = settings.listen_address("gateway").rsplit(":", 1)
    # aiohttp stops on SIGTERM and SIGINT, letting in-flight requests finish first.
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
