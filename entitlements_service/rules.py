"""The entitlement rules as pure functions: stacking grants into windows, tiers, the answer.

Nothing here knows of gRPC, SQL or the clock: `now` is always passed in.

Stacking, per entitlement, over its unrevoked grants in purchase order (ties broken by source,
so the order grants arrive in never matters):

- a duration grant starts at the later of its purchase and the end of the chain so far, and
  pushes the chain end by its duration;
- an until grant (a subscription period paid up to a fixed date) covers from the later of its
  purchase and the chain end up to its `until`, and moves the chain end to `until` if later: a
  renewal paid early extends to the new date, it never doubles;
- a lifetime grant covers from its purchase on, forever, and stays out of the chain, so that
  revoking it leaves every other grant its time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Source:
    """Where a grant comes from (a payment, a manual decision): unique across all grants."""

    provider: str
    reference: str


@dataclass(frozen=True, slots=True)
class Grant:
    """One stored grant. Exactly one of `duration`, `until`, `lifetime` gives its term."""

    grant_id: str
    user_id: str
    entitlement: str
    source: Source
    event_id: str
    purchased_at: datetime
    duration: timedelta | None = None
    until: datetime | None = None
    lifetime: bool = False
    revoked: bool = False
    reason: str = ""
    granted_by: str = ""

    @property
    def purchase_order(self) -> tuple[datetime, str, str]:
        return (self.purchased_at, self.source.provider, self.source.reference)


@dataclass(frozen=True, slots=True)
class Window:
    """The time a grant covers once stacked: [starts_at, ends_at), ends_at None for ever."""

    grant: Grant
    starts_at: datetime
    ends_at: datetime | None

    @property
    def empty(self) -> bool:
        return self.ends_at is not None and self.ends_at <= self.starts_at

    def covers_after(self, moment: datetime) -> bool:
        return self.ends_at is None or self.ends_at > moment


@dataclass(frozen=True, slots=True)
class Answer:
    """A check's answer at one moment, and until when it holds without any new grant or revoke."""

    active: bool
    expires_at: datetime | None  # None when inactive or lifetime
    lifetime: bool
    explain: tuple[Window, ...]  # the windows that make the answer
    recheck_at: datetime | None  # the answer can change by itself then; None: never


@dataclass(frozen=True, slots=True)
class Revocation:
    source: Source
    event_id: str
    reason: str
    revoked_by: str  # the caller, from its credential
    on_behalf_of: str = ""  # whom the caller says it acts for (a person at the console)


@dataclass(frozen=True, slots=True)
class RevokeOutcome:
    grant: Grant | None  # None: nothing was granted yet, a tombstone stands instead
    tombstone: bool
    changed: bool


INACTIVE_FOR_EVER = Answer(
    active=False, expires_at=None, lifetime=False, explain=(), recheck_at=None
)


def stack(grants: Iterable[Grant]) -> list[Window]:
    """The windows of the unrevoked grants of one entitlement, in purchase order."""
    windows: list[Window] = []
    chain_end: datetime | None = None
    for grant in sorted((g for g in grants if not g.revoked), key=lambda g: g.purchase_order):
        if grant.lifetime:
            windows.append(Window(grant, grant.purchased_at, None))
            continue
        starts_at = grant.purchased_at if chain_end is None else max(grant.purchased_at, chain_end)
        if grant.duration is not None:
            ends_at = starts_at + grant.duration
        elif grant.until is not None:
            # Paid time already covers up to `until`: this grant adds nothing, but stays listed.
            ends_at = max(grant.until, starts_at)
        else:
            raise ValueError(f"grant {grant.grant_id} has no term")
        windows.append(Window(grant, starts_at, ends_at))
        chain_end = ends_at if chain_end is None else max(chain_end, ends_at)
    return windows


def stack_by_entitlement(grants: Iterable[Grant]) -> dict[str, list[Window]]:
    by_entitlement: dict[str, list[Grant]] = {}
    for grant in grants:
        by_entitlement.setdefault(grant.entitlement, []).append(grant)
    return {name: stack(of_one) for name, of_one in by_entitlement.items()}


def answer(windows: Sequence[Window], now: datetime) -> Answer:
    """Is `now` covered by these windows (of every tier that grants the entitlement), and until?

    `expires_at` is the end of the continuous span of cover that holds `now`, however many
    windows (of however many tiers) it takes.
    """
    windows = [w for w in windows if not w.empty]
    spans = _merged_spans(windows)
    for span_start, span_end in spans:
        if span_start > now:
            return replace(INACTIVE_FOR_EVER, recheck_at=span_start)
        if span_end is None or span_end > now:
            explain = tuple(
                w
                for w in windows
                if w.covers_after(now)
                and w.starts_at >= span_start
                and (span_end is None or w.starts_at < span_end)
            )
            return Answer(
                active=True,
                expires_at=span_end,
                lifetime=span_end is None,
                explain=explain,
                recheck_at=span_end,
            )
    return INACTIVE_FOR_EVER


def _merged_spans(
    windows: Iterable[Window],
) -> list[tuple[datetime, datetime | None]]:
    """Continuous spans of cover: windows that overlap or touch merge into one."""
    spans: list[tuple[datetime, datetime | None]] = []
    for window in sorted(windows, key=lambda w: w.starts_at):
        if spans:
            last_start, last_end = spans[-1]
            if last_end is None:
                break
            if window.starts_at <= last_end:
                new_end = None if window.ends_at is None else max(last_end, window.ends_at)
                spans[-1] = (last_start, new_end)
                continue
        spans.append((window.starts_at, window.ends_at))
    return spans


def windows_for_check(
    windows_by_entitlement: Mapping[str, Sequence[Window]], granting_tiers: Iterable[str]
) -> list[Window]:
    """Every window of every tier that answers a check (vip windows answer a premium check)."""
    found: list[Window] = []
    for tier in granting_tiers:
        found.extend(windows_by_entitlement.get(tier, ()))
    return found


# --- grant policy: what a new grant must say, whoever asks for it ------------------------------

# Far enough for any real term, near enough that datetime arithmetic cannot overflow.
MAX_DURATION = timedelta(days=365 * 100)


@dataclass(frozen=True, slots=True)
class Term:
    """How long a grant covers: exactly one of the three, or none (then the grant is refused)."""

    duration: timedelta | None = None
    until: datetime | None = None
    lifetime: bool = False


def grant_problem(
    *, paid_through_provider: bool, event_id: str, reason: str, purchased_at: datetime, term: Term
) -> str | None:
    """Why a grant cannot be made, or None. A paid grant names the payment's event; any other
    (manual, promotional, ...) is a person's decision and must say why."""
    if paid_through_provider:
        if not event_id:
            return "event_id is required for a grant paid through a provider"
    elif not reason:
        return "a manual grant needs a reason"
    given = sum((term.duration is not None, term.until is not None, term.lifetime))
    if given != 1:
        return "give a term: duration_seconds, until or lifetime"
    if term.duration is not None and not timedelta(0) < term.duration <= MAX_DURATION:
        return "duration_seconds must be positive (at most 100 years)"
    if term.until is not None and term.until <= purchased_at:
        return "until must be after purchased_at"
    return None


def windows_by_grant(windows_by_entitlement: Mapping[str, Sequence[Window]]) -> dict[str, Window]:
    """Each stacked grant's window, by grant id (revoked grants have none)."""
    return {
        window.grant.grant_id: window
        for windows in windows_by_entitlement.values()
        for window in windows
    }


def list_answers(
    grants: Iterable[Grant], granting_tiers: Mapping[str, Iterable[str]], now: datetime
) -> tuple[list[tuple[str, Answer]], list[tuple[Grant, Window | None]]]:
    """What a user holds: every entitlement's answer (by name), and every grant in purchase
    order with the window stacking gives it."""
    grants = list(grants)
    windows_by_entitlement = stack_by_entitlement(grants)
    window_of = windows_by_grant(windows_by_entitlement)
    statuses = [
        (name, answer(windows_for_check(windows_by_entitlement, granting_tiers[name]), now))
        for name in sorted(granting_tiers)
    ]
    listed = [
        (grant, window_of.get(grant.grant_id))
        for grant in sorted(grants, key=lambda g: g.purchase_order)
    ]
    return statuses, listed


def window_of(grants: Iterable[Grant], grant: Grant) -> Window | None:
    """The window `grant` gets among the user's other grants of its entitlement."""
    if grant.revoked:
        return None
    for window in stack(g for g in grants if g.entitlement == grant.entitlement):
        if window.grant.grant_id == grant.grant_id:
            return window
    return None
