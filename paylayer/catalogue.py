"""The catalogue file: skus with their prices and terms, and the tier hierarchy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Sku:
    name: str
    grants: str
    duration: timedelta | None  # None: lifetime
    stripe_amount: int | None
    stripe_currency: str | None
    stars: int | None
    recurring: bool = False

    @property
    def lifetime(self) -> bool:
        return self.duration is None


@dataclass(frozen=True)
class Catalogue:
    skus: dict[str, Sku]
    # tier -> the tiers it includes, itself among them, transitively
    tier_closure: dict[str, frozenset[str]]
    max_accounts_by_tier: dict[str, int]
    max_accounts_without_tier: int

    def granting_tiers(self, entitlement: str) -> frozenset[str]:
        """The tiers whose grants answer a check for `entitlement` (itself included)."""
        return frozenset(
            tier for tier, included in self.tier_closure.items() if entitlement in included
        ) | {entitlement}

    def max_accounts(self, active_tiers: set[str]) -> int:
        caps = [self.max_accounts_by_tier.get(t, 0) for t in active_tiers]
        return max([self.max_accounts_without_tier, *caps])

    def sku_for_stripe_price(self, amount: int, currency: str) -> Sku | None:
        matches = [
            sku
            for sku in self.skus.values()
            if sku.stripe_amount == amount
            and (sku.stripe_currency or "").lower() == currency.lower()
        ]
        return matches[0] if len(matches) == 1 else None


def _closure(direct: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    def reach(tier: str, seen: frozenset[str]) -> frozenset[str]:
        if tier in seen:
            raise ValueError(f"tier cycle through {tier}")
        found = {tier}
        for included in direct.get(tier, []):
            found |= reach(included, seen | {tier})
        return frozenset(found)

    return {tier: reach(tier, frozenset()) for tier in direct}


def load_catalogue(path: Path) -> Catalogue:
    raw = yaml.safe_load(path.read_text())
    tiers = raw.get("tiers", {})
    skus: dict[str, Sku] = {}
    for name, spec in raw.get("skus", {}).items():
        stripe = spec.get("stripe") or {}
        lifetime = bool(spec.get("lifetime"))
        if not lifetime and not spec.get("days"):
            raise ValueError(f"sku {name}: give days or lifetime: true")
        skus[name] = Sku(
            name=name,
            grants=spec["grants"],
            duration=None if lifetime else timedelta(days=int(spec["days"])),
            stripe_amount=stripe.get("amount"),
            stripe_currency=stripe.get("currency"),
            stars=spec.get("stars"),
            recurring=bool(spec.get("recurring", False)),
        )
    return Catalogue(
        skus=skus,
        tier_closure=_closure({t: list(v.get("includes", [])) for t, v in tiers.items()}),
        max_accounts_by_tier={t: int(v.get("max_accounts", 0)) for t, v in tiers.items()},
        max_accounts_without_tier=int(raw.get("max_accounts_without_tier", 1)),
    )
