"""`paylayer accounts ...` run as a user would, against the real service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from paylayer.settings import Settings
from tests.accounts.conftest import mt5_login, telegram_id

PAYLAYER = str(Path(sys.executable).parent / "paylayer")


async def paylayer(accounts_addr: str, token: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PAYLAYER,
        "accounts",
        *args,
        env={**os.environ, "ACCOUNTS_ADDR": accounts_addr, "INTERNAL_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_resolve_link_list_show_and_unlink_from_the_command_line(
    accounts_addr: str, settings: Settings
) -> None:
    token = settings.internal_token
    telegram = str(telegram_id())
    login = str(mt5_login())

    code, out, _ = await paylayer(
        accounts_addr, token, "resolve", "--telegram", telegram, "--create", "--json"
    )
    assert code == 0
    user_id = json.loads(out)["user"]["user_id"]

    code, out, _ = await paylayer(
        accounts_addr, token, "link", user_id, login, "Broker-Live", "--label", "swing"
    )
    assert code == 0 and "linked" in out

    code, out, _ = await paylayer(accounts_addr, token, "list", user_id)
    assert code == 0
    assert "1 linked, cap 1" in out and login in out and "active" in out

    code, out, _ = await paylayer(accounts_addr, token, "show", login, "Broker-Live", "--json")
    assert code == 0
    assert json.loads(out)["account"]["label"] == "swing"

    code, out, _ = await paylayer(accounts_addr, token, "unlink", user_id, login, "Broker-Live")
    assert code == 0
    code, out, _ = await paylayer(accounts_addr, token, "list", user_id)
    assert "0 linked" in out and "(none)" in out


async def test_errors_are_one_line_not_a_traceback(accounts_addr: str, settings: Settings) -> None:
    token = settings.internal_token
    code, _, err = await paylayer(accounts_addr, token, "resolve", "--telegram", str(telegram_id()))
    assert code == 2
    assert err.strip().startswith("paylayer: NOT_FOUND")
    assert "Traceback" not in err

    code, _, err = await paylayer(accounts_addr, token, "resolve")
    assert code == 2 and "exactly one" in err
