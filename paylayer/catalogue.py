"""The catalogue file: skus with their prices and terms, and the tier hierarchy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Price:
    amount: int  # in the currency's smallest unit, as Stripe counts it
    currency: str  # lower case, as Stripe writes it


@dataclass(frozen=True)
class Sku:
    name: str
    grants: str
    duration: timedelta | None  # None: lifetime
    stripe_prices: tuple[Price, ...]
    stars: int | None
    recurring: bool = False
    # Whether a Checkout discount may account for part of the price.
    discounts: bool = False
    # A Stripe Price object to sell it by, instead of inline price data.
    stripe_price_id: str | None = None
    # A recurring sku: days of access kept past the period end while a renewal is past due.
    grace_days: int = 3

    @property
    def lifetime(self) -> bool:
        return self.duration is None

    def stripe_price(self, currency: str) -> Price | None:
        """The price of this sku in `currency`, if it is sold in it."""
        currency = currency.lower()
        return next((p for p in self.stripe_prices if p.currency == currency), None)


@dataclass(frozen=True)
class Catalogue:
    skus: dict[str, Sku]
    # tier -> the tiers it includes, itself among them, transitively
    tier_closure: dict[str, frozenset[str]]
    max_accounts_by_tier: dict[str, int]
    max_accounts_without_tier: int
    # tier -> the Telegram chats (channels, groups) its own entry lists; see `chats_of`
    chats_by_tier: dict[str, frozenset[int]] = field(default_factory=dict)

    def chats_of(self, tier: str) -> frozenset[int]:
        """The chats a holder of `tier` belongs in: its own and those of the tiers it includes."""
        chats: frozenset[int] = frozenset()
        for included in self.tier_closure.get(tier, frozenset({tier})):
            chats |= self.chats_by_tier.get(included, frozenset())
        return chats

    def tiers_giving_chat(self, chat_id: int) -> frozenset[str]:
        """The tiers that list this chat themselves: a check of any of them (which a tier
        including it passes too) says whether a user belongs in the chat."""
        return frozenset(tier for tier, chats in self.chats_by_tier.items() if chat_id in chats)

    @property
    def chats(self) -> frozenset[int]:
        """Every chat whose membership the layer keeps in step with access."""
        return frozenset().union(*self.chats_by_tier.values())

    def granting_tiers(self, entitlement: str) -> frozenset[str]:
        """The tiers whose grants answer a check for `entitlement` (itself included)."""
        return frozenset(
            tier for tier, included in self.tier_closure.items() if entitlement in included
        ) | {entitlement}

    def max_accounts(self, active_tiers: set[str]) -> int:
        caps = [self.max_accounts_by_tier.get(t, 0) for t in active_tiers]
        return max([self.max_accounts_without_tier, *caps])

    def sku_for_stripe_price(self, amount: int, currency: str) -> Sku | None:
        wanted = Price(amount, currency.lower())
        matches = [sku for sku in self.skus.values() if wanted in sku.stripe_prices]
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


def _stripe_prices(name: str, spec: object) -> tuple[Price, ...]:
    """`stripe:` as one `{amount, currency}` or a list of them, one per currency."""
    if not spec:
        return ()
    entries = spec if isinstance(spec, list) else [spec]
    prices = []
    for entry in entries:
        amount = entry.get("amount") if isinstance(entry, dict) else None
        currency = entry.get("currency") if isinstance(entry, dict) else None
        if not isinstance(amount, int) or amount <= 0 or not isinstance(currency, str):
            raise ValueError(f"sku {name}: a Stripe price needs a positive amount and a currency")
        prices.append(Price(amount, currency.lower()))
    if len({p.currency for p in prices}) != len(prices):
        raise ValueError(f"sku {name}: one Stripe price per currency")
    return tuple(prices)


# Telegram chat ids are 64-bit; channels and supergroups are negative (-100…), groups too.
_MAX_CHAT_ID = 2**63


def _chats(tier: str, spec: object) -> frozenset[int]:
    """`chats:` of a tier: a list of Telegram chat ids (numbers, as getChat reports them)."""
    if spec is None:
        return frozenset()
    if not isinstance(spec, list):
        raise ValueError(f"tier {tier}: chats must be a list of Telegram chat ids")
    chats = set()
    for chat in spec:
        if (
            not isinstance(chat, int)
            or isinstance(chat, bool)
            or chat == 0
            or not -_MAX_CHAT_ID < chat < _MAX_CHAT_ID
        ):
            raise ValueError(
                f"tier {tier}: chat {chat!r} is not a Telegram chat id (a number such as "
                "-1001234567890; a channel's @name will not do)"
            )
        chats.add(chat)
    return frozenset(chats)


def load_catalogue(path: Path) -> Catalogue:
    raw = yaml.safe_load(path.read_text())
    tiers = raw.get("tiers", {})
    if not isinstance(tiers, dict) or not all(
        isinstance(spec, dict) or spec is None for spec in tiers.values()
    ):
        raise ValueError("tiers must map each tier name to its settings")
    tiers = {name: spec or {} for name, spec in tiers.items()}
    skus: dict[str, Sku] = {}
    for name, spec in raw.get("skus", {}).items():
        lifetime = bool(spec.get("lifetime"))
        if not lifetime and not spec.get("days"):
            raise ValueError(f"sku {name}: give days or lifetime: true")
        interval = spec.get("interval")
        if interval not in (None, "month"):
            raise ValueError(f"sku {name}: interval must be month (the only period Stars has)")
        price_id = spec.get("stripe_price_id")
        if price_id is not None and not (isinstance(price_id, str) and price_id):
            raise ValueError(f"sku {name}: stripe_price_id must be a Stripe price id")
        grace_days = spec.get("grace_days", 3)
        if not isinstance(grace_days, int) or isinstance(grace_days, bool) or grace_days < 0:
            raise ValueError(f"sku {name}: grace_days must be a whole number of days")
        skus[name] = Sku(
            name=name,
            grants=spec["grants"],
            duration=None if lifetime else timedelta(days=int(spec["days"])),
            stripe_prices=_stripe_prices(name, spec.get("stripe")),
            stars=spec.get("stars"),
            recurring=interval == "month" or bool(spec.get("recurring", False)),
            discounts=spec.get("discounts") is True,
            stripe_price_id=price_id,
            grace_days=grace_days,
        )
    return Catalogue(
        skus=skus,
        tier_closure=_closure({t: list(v.get("includes", [])) for t, v in tiers.items()}),
        max_accounts_by_tier={t: int(v.get("max_accounts", 0)) for t, v in tiers.items()},
        max_accounts_without_tier=int(raw.get("max_accounts_without_tier", 1)),
        chats_by_tier={t: _chats(t, v.get("chats")) for t, v in tiers.items()},
    )
