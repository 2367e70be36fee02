"""`paylayer`: run the stack (`dev`), migrate it, check it, and steer each service."""

from __future__ import annotations

import argparse
import sys

from paylayer.cli import (
    accounts,
    channels,
    common,
    entitlements,
    local,
    messages,
    payments,
    tokens,
    trigger,
)
from paylayer.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paylayer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (local, payments, messages, entitlements, accounts, trigger, channels, tokens):
        module.register(commands)
    payments.register_checkout(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (common.UserError, ConfigError) as error:
        print(f"paylayer: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code or 0)
