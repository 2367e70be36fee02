"""`paylayer accounts ...`: find users, link and unlink MT5 accounts, show their state."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from paylayer.cli.common import (
    UserError,
    add_json_flag,
    message_dict,
    print_json,
    print_table,
    run_rpc,
)
from paylayer.settings import Settings
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc

ACCOUNT_TYPES = {
    "demo": accounts_pb2.ACCOUNT_TYPE_DEMO,
    "real": accounts_pb2.ACCOUNT_TYPE_REAL,
    "contest": accounts_pb2.ACCOUNT_TYPE_CONTEST,
}
ACCOUNT_COLUMNS = ("login", "server", "type", "label", "status", "equity", "drawdown", "max_dd")


def _accounts_addr(settings: Settings) -> str:
    return settings.accounts_addr


def _stub(channel: grpc.aio.Channel) -> accounts_pb2_grpc.AccountsServiceStub:
    return accounts_pb2_grpc.AccountsServiceStub(channel)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _account_row(account: accounts_pb2.Account) -> dict[str, Any]:
    has_snapshot = account.HasField("snapshot_time")
    return {
        "login": account.login,
        "server": account.server,
        "type": accounts_pb2.AccountType.Name(account.account_type)
        .removeprefix("ACCOUNT_TYPE_")
        .lower(),
        "label": account.label,
        "status": "suspended" if account.suspended else "active",
        "equity": f"{account.equity:.2f} {account.currency}".strip() if has_snapshot else "-",
        "drawdown": _percent(account.drawdown) if has_snapshot else "-",
        "max_dd": _percent(account.max_drawdown) if has_snapshot else "-",
    }


def _print_user(user: accounts_pb2.User, created: bool) -> None:
    print(f"user      {user.user_id}{'  (created)' if created else ''}")
    print(f"telegram  {user.telegram_user_id or '-'}")
    print(f"stripe    {user.stripe_customer_id or '-'}")
    print(f"email     {user.email or '-'}")


def resolve(args: argparse.Namespace) -> int:
    request = accounts_pb2.ResolveUserRequest(create=args.create)
    if args.user_id:
        request.user_id = args.user_id
    elif args.telegram is not None:
        request.telegram_user_id = args.telegram
    elif args.customer:
        request.stripe_customer_id = args.customer
    else:
        request.email = args.email

    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).ResolveUser(request)
        if args.json:
            print_json(message_dict(response))
        else:
            _print_user(response.user, response.created)
        return 0

    return run_rpc(_accounts_addr, call)


def link(args: argparse.Namespace) -> int:
    request = accounts_pb2.LinkAccountRequest(
        user_id=args.user_id,
        login=args.login,
        server=args.server,
        account_type=ACCOUNT_TYPES[args.type],
        broker=args.broker,
        label=args.label,
    )

    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).LinkAccount(request)
        if args.json:
            print_json(message_dict(response))
        else:
            outcome = "linked" if response.created else "already linked"
            state = (
                " (suspended: over the cap of the user's tier)"
                if response.account.suspended
                else ""
            )
            print(f"{outcome}: {args.login}@{args.server} to {args.user_id}{state}")
        return 0

    return run_rpc(_accounts_addr, call)


def unlink(args: argparse.Namespace) -> int:
    request = accounts_pb2.UnlinkAccountRequest(
        user_id=args.user_id, login=args.login, server=args.server
    )

    async def call(channel: grpc.aio.Channel) -> int:
        await _stub(channel).UnlinkAccount(request)
        print(f"unlinked: {args.login}@{args.server} from {args.user_id}")
        return 0

    return run_rpc(_accounts_addr, call)


def list_accounts(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).ListAccounts(
            accounts_pb2.ListAccountsRequest(user_id=args.user_id)
        )
        if args.json:
            print_json(message_dict(response))
        else:
            print(f"{len(response.accounts)} linked, cap {response.cap}")
            print_table([_account_row(a) for a in response.accounts], ACCOUNT_COLUMNS)
        return 0

    return run_rpc(_accounts_addr, call)


def show(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).GetAccount(
            accounts_pb2.GetAccountRequest(login=args.login, server=args.server)
        )
        if args.json:
            print_json(message_dict(response))
            return 0
        account = response.account
        for name, value in _account_row(account).items():
            print(f"{name:<9} {value}")
        print(f"{'user':<9} {account.user_id}")
        if account.HasField("snapshot_time"):
            print(f"{'balance':<9} {account.balance:.2f} {account.currency}")
            print(f"{'peak':<9} {account.peak_equity:.2f} {account.currency}")
            print(f"{'as of':<9} {account.snapshot_time.ToJsonString()}")
        return 0

    return run_rpc(_accounts_addr, call)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _add_account_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("login", type=_positive_int, help="MT5 login")
    parser.add_argument("server", help="MT5 server, e.g. Broker-Live")


def _check_resolve(args: argparse.Namespace) -> int:
    given = [args.user_id, args.telegram, args.customer, args.email]
    if sum(value is not None for value in given) != 1:
        raise UserError("give exactly one of --user-id, --telegram, --customer, --email")
    return resolve(args)


def register(commands: argparse._SubParsersAction) -> None:
    accounts_parser = commands.add_parser("accounts", help="users and their MT5 accounts")
    actions = accounts_parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    resolve_parser = actions.add_parser("resolve", help="find a user by any one identity")
    resolve_parser.add_argument("--user-id")
    resolve_parser.add_argument("--telegram", type=_positive_int, help="Telegram user id")
    resolve_parser.add_argument("--customer", help="Stripe customer id (cus_...)")
    resolve_parser.add_argument("--email")
    resolve_parser.add_argument("--create", action="store_true", help="create when nobody has it")
    add_json_flag(resolve_parser)
    resolve_parser.set_defaults(run=_check_resolve)

    link_parser = actions.add_parser("link", help="link an MT5 account to a user")
    link_parser.add_argument("user_id")
    _add_account_arguments(link_parser)
    link_parser.add_argument("--type", choices=sorted(ACCOUNT_TYPES), default="real")
    link_parser.add_argument("--broker", default="")
    link_parser.add_argument("--label", default="")
    add_json_flag(link_parser)
    link_parser.set_defaults(run=link)

    unlink_parser = actions.add_parser("unlink", help="unlink an MT5 account from its user")
    unlink_parser.add_argument("user_id")
    _add_account_arguments(unlink_parser)
    unlink_parser.set_defaults(run=unlink)

    list_parser = actions.add_parser("list", help="a user's MT5 accounts, oldest first")
    list_parser.add_argument("user_id")
    add_json_flag(list_parser)
    list_parser.set_defaults(run=list_accounts)

    show_parser = actions.add_parser("show", help="one MT5 account with balance and drawdown")
    _add_account_arguments(show_parser)
    add_json_flag(show_parser)
    show_parser.set_defaults(run=show)
