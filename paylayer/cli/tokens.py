"""`paylayer tokens digest NAME`: the `sha256=` form of a caller's token, for servers'
CALLER_TOKENS, so that a server holds no secret it could leak."""

from __future__ import annotations

import argparse
import sys

from paylayer.callers import CALLER_NAMES, token_digest_hex
from paylayer.cli.common import UserError


def register(commands: argparse._SubParsersAction) -> None:
    tokens = commands.add_parser("tokens", help="caller tokens for CALLER_TOKENS").add_subparsers(
        dest="action", required=True
    )
    digest = tokens.add_parser(
        "digest",
        help="print NAME:sha256=<hex> for the token read from stdin (never from the command "
        "line, which shells and process lists keep)",
    )
    digest.add_argument("name", choices=CALLER_NAMES, help="the caller the token belongs to")
    digest.set_defaults(run=print_digest)


def print_digest(args: argparse.Namespace) -> int:
    # One token, on one line; the newline `echo` or a terminal adds is not part of it.
    token = sys.stdin.read().strip()
    if not token:
        raise UserError("no token on stdin")
    if any(character.isspace() or character == "," for character in token):
        raise UserError("a token has no spaces or commas (CALLER_TOKENS could not hold it)")
    print(f"{args.name}:{token_digest_hex(token)}")
    return 0
