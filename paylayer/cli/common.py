"""What every CLI command shares: settings, authenticated stubs, output, clean errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from paylayer.devsecrets import load_dev_env
from paylayer.grpc_client import open_channel
from paylayer.settings import Settings
from paylayer.tls import GrpcTls


class UserError(Exception):
    """A mistake the user can fix; printed as one line, never as a traceback."""


def settings() -> Settings:
    """Settings from the environment, completed by `paylayer dev`'s generated secrets."""
    return Settings.from_env(load_dev_env())


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run_rpc(
    addr_of: Callable[[Settings], str],
    call: Callable[[grpc.aio.Channel], Awaitable[int | None]],
) -> int:
    """Open a channel to one service, make the call, and turn RPC failures into one line."""
    config = settings()
    if not config.internal_token:
        raise UserError("INTERNAL_TOKEN is not set (and no `paylayer dev` secrets were found)")

    async def main() -> int:
        channel = open_channel(
            addr_of(config), config.internal_token, tls=GrpcTls.from_settings(config)
        )
        try:
            return (await call(channel)) or 0
        except grpc.aio.AioRpcError as error:
            raise UserError(f"{error.code().name}: {error.details()}") from None
        finally:
            await channel.close()

    return asyncio.run(main())


def message_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row_cells in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row_cells, widths, strict=True)))
