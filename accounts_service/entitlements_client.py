"""Asks the entitlements service which tiers a user holds, to know how many accounts they get."""

from __future__ import annotations

import asyncio

import grpc

from accounts_service.rules import account_cap
from paylayer.catalogue import Catalogue
from paylayer.errors import Unavailable
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

# Linking waits on this answer; better a quick UNAVAILABLE the caller can retry than a hang.
CHECK_DEADLINE_SECONDS = 2.0


class TierCaps:
    def __init__(self, channel: grpc.aio.Channel, catalogue: Catalogue) -> None:
        self._entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        self._catalogue = catalogue
        # Only tiers that raise the cap are worth a call.
        self._tiers = sorted(
            tier
            for tier, cap in catalogue.max_accounts_by_tier.items()
            if cap > catalogue.max_accounts_without_tier
        )

    async def cap_for(self, user_id: str) -> int:
        """The user's cap now. Unknown is never taken as "no tier": that would hide accounts
        and refuse links on a network blip, so the caller gets Unavailable instead."""
        try:
            answers = await asyncio.gather(
                *(
                    self._entitlements.CheckEntitlement(
                        entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=tier),
                        timeout=CHECK_DEADLINE_SECONDS,
                    )
                    for tier in self._tiers
                )
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable(
                f"cannot ask entitlements for the tier of {user_id}: {error.code().name}"
            ) from error
        active = {tier for tier, answer in zip(self._tiers, answers, strict=True) if answer.active}
        return account_cap(self._catalogue, active)
