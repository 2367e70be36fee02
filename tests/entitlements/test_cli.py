"""`paylayer entitlements ...` as an operator types it, against the real service."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from paylayer.settings import Settings
from tests.entitlements.conftest import new_user


async def paylayer(addr: str, settings: Settings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from paylayer.cli import main; main()",
        *args,
        env={**os.environ, "ENTITLEMENTS_ADDR": addr, "INTERNAL_TOKEN": settings.internal_token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_an_operator_grants_checks_lists_and_revokes_by_hand(
    entitlements_addr: str, settings: Settings
) -> None:
    user = new_user()
    code, output = await paylayer(entitlements_addr, settings, "entitlements", "check", user, "vip")
    assert code == 1 and "inactive" in output

    code, output = await paylayer(
        entitlements_addr,
        settings,
        *("entitlements", "grant", user, "vip", "--days", "7", "--reference", f"gift-{user}"),
        *("--reason", "beta tester", "--by", "support:carol"),
    )
    assert code == 0 and "granted" in output

    code, output = await paylayer(entitlements_addr, settings, "entitlements", "check", user)
    assert code == 0 and "active until" in output and f"manual:gift-{user}" in output

    code, output = await paylayer(
        entitlements_addr, settings, "entitlements", "list", user, "--json"
    )
    listed = json.loads(output)
    assert {s["entitlement"] for s in listed["entitlements"] if s.get("active")} == {
        "premium",
        "vip",
    }
    # granted_by is the caller the token belongs to: the CLI holds the operator's.
    assert listed["grants"][0]["granted_by"] == "operator"

    code, output = await paylayer(
        entitlements_addr,
        settings,
        *("entitlements", "revoke", "manual", f"gift-{user}", "--reason", "ended early"),
    )
    assert code == 0 and "revoked" in output
    code, output = await paylayer(entitlements_addr, settings, "entitlements", "check", user)
    assert code == 1


async def test_a_grant_without_a_reason_is_refused_before_any_call(
    entitlements_addr: str, settings: Settings
) -> None:
    code, output = await paylayer(
        entitlements_addr, settings, "entitlements", "grant", new_user(), "vip", "--days", "7"
    )
    assert code == 2 and "--reason" in output
