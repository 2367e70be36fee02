"""The oracle for the grants ledger: one source's life in plain Python, and the stories told
to it and to the real store alike.

The store does each step in one SQL statement (INSERT ... ON CONFLICT); this model says what
those statements must add up to, whatever order a grant and its revoke arrive in:
- the first grant of a source wins, a repeat changes nothing;
- a revoke before any grant leaves a tombstone, and the grant that comes later is kept, revoked;
- a revoke of a revoked source changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from entitlements_service.rules import Grant, Source

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
TIERS_ANSWERING = {"premium": ("premium", "vip"), "vip": ("vip",)}


def at(hour: int) -> datetime:
    return EPOCH + hour * HOUR


@dataclass(frozen=True, slots=True)
class SourceState:
    grant: Grant | None  # None: a tombstone, revoked before any grant was seen
    revoked: bool


def record_grant(
    ledger: Mapping[Source, SourceState], grant: Grant
) -> tuple[dict[Source, SourceState], bool]:
    """Grant once per source. Returns the new ledger and whether the grant was created."""
    state = ledger.get(grant.source)
    if state is None:
        return {**ledger, grant.source: SourceState(grant, revoked=False)}, True
    if state.grant is None:
        kept = replace(grant, revoked=True)
        return {**ledger, grant.source: SourceState(kept, revoked=True)}, False
    return dict(ledger), False


def record_revoke(
    ledger: Mapping[Source, SourceState], source: Source
) -> dict[Source, SourceState]:
    state = ledger.get(source)
    if state is None:
        return {**ledger, source: SourceState(None, revoked=True)}
    if state.revoked or state.grant is None:
        return dict(ledger)
    return {**ledger, source: SourceState(replace(state.grant, revoked=True), revoked=True)}


def grants_of(ledger: Mapping[Source, SourceState]) -> list[Grant]:
    return [state.grant for state in ledger.values() if state.grant is not None]


# --- the stories -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paid:
    """A grant in whole hours: exactly one of `hours`, `until`, `lifetime`."""

    reference: str
    entitlement: str
    purchased: int
    hours: int | None = None
    until: int | None = None
    lifetime: bool = False

    def grant(self, *, user_id: str = "u", grant_id: str | None = None, prefix: str = "") -> Grant:
        return Grant(
            grant_id=grant_id or self.reference,
            user_id=user_id,
            entitlement=self.entitlement,
            source=Source("stripe", prefix + self.reference),
            event_id="evt_" + self.reference,
            purchased_at=at(self.purchased),
            duration=None if self.hours is None else self.hours * HOUR,
            until=None if self.until is None else at(self.until),
            lifetime=self.lifetime,
        )


@st.composite
def purchases(draw: st.DrawFn) -> list[Paid]:
    count = draw(st.integers(0, 7))
    found = []
    for index in range(count):
        purchased = draw(st.integers(0, 120))
        entitlement = draw(st.sampled_from(["premium", "premium", "vip"]))
        kind = draw(st.sampled_from(["hours", "hours", "hours", "until", "lifetime"]))
        reference = f"pi_{index}"
        if kind == "hours":
            found.append(Paid(reference, entitlement, purchased, hours=draw(st.integers(1, 60))))
        elif kind == "until":
            until = purchased + draw(st.integers(1, 80))
            found.append(Paid(reference, entitlement, purchased, until=until))
        else:
            found.append(Paid(reference, entitlement, purchased, lifetime=True))
    return found


@dataclass(frozen=True)
class Story:
    paid: list[Paid]
    revoked: frozenset[str]  # references; some never paid (a refund for an unknown payment)
    events: list[tuple[str, object]]  # ("grant", Paid) or ("revoke", reference), with repeats


@st.composite
def stories(draw: st.DrawFn) -> Story:
    paid = draw(purchases())
    references = [p.reference for p in paid] + ["pi_never_paid"]
    revoked = frozenset(draw(st.lists(st.sampled_from(references), max_size=4)))
    events: list[tuple[str, object]] = [("grant", p) for p in paid]
    events += [("revoke", r) for r in sorted(revoked)]
    # Providers deliver at least once: some events arrive twice.
    events += draw(st.lists(st.sampled_from(events), max_size=3)) if events else []
    return Story(paid, revoked, events)


def settle(events: list[tuple[str, object]]) -> list[Grant]:
    """The grants a story leaves, by the model."""
    ledger: dict[Source, SourceState] = {}
    for kind, what in events:
        if kind == "grant":
            assert isinstance(what, Paid)
            ledger, _ = record_grant(ledger, what.grant())
        else:
            ledger = record_revoke(ledger, Source("stripe", str(what)))
    return grants_of(ledger)
