"""The ledger's stories told to the real store on PostgreSQL: whatever order grants, revokes and
their repeats arrive in, one by one or in batches, the grants that stand, the ones created and
the tombstones are the model's (tests/entitlements/ledger_model.py), and so is every answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service import rules
from entitlements_service.rules import Grant, Revocation, Source
from entitlements_service.store import UnitOfWork
from tests.entitlements.ledger_model import (
    TIERS_ANSWERING,
    Paid,
    SourceState,
    Story,
    at,
    grants_of,
    record_grant,
    record_revoke,
    stories,
)

Key = tuple[str, str, object, object, object, bool, bool]


def comparable(grants: Iterable[Grant], prefix: str = "") -> set[Key]:
    """What a grant is, without the ids the store mints or the prefix that keeps runs apart."""
    return {
        (
            grant.source.reference.removeprefix(prefix),
            grant.entitlement,
            grant.purchased_at,
            grant.duration,
            grant.until,
            grant.lifetime,
            grant.revoked,
        )
        for grant in grants
    }


def answers(grants: list[Grant], hours: Iterable[int]) -> list[tuple[bool, object, bool]]:
    found = []
    for _, tiers in sorted(TIERS_ANSWERING.items()):
        windows = rules.windows_for_check(rules.stack_by_entitlement(grants), tiers)
        for hour in hours:
            answer = rules.answer(windows, at(hour))
            found.append((answer.active, answer.expires_at, answer.lifetime))
    return found


def batches(events: list[tuple[str, object]], batched: bool) -> list[list[tuple[str, object]]]:
    """Runs of grants go together when `batched`, as payments sends a burst; revokes alone."""
    grouped: list[list[tuple[str, object]]] = []
    for event in events:
        if batched and event[0] == "grant" and grouped and grouped[-1][0][0] == "grant":
            grouped[-1].append(event)
        else:
            grouped.append([event])
    return grouped


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    story=stories(),
    order=st.randoms(use_true_random=False),
    batched=st.booleans(),
    rivals=st.lists(st.integers(0, 6), max_size=2),
    hours=st.lists(st.integers(0, 400), min_size=1, max_size=4),
)
async def test_the_store_settles_any_story_as_the_model_does(
    engine: AsyncEngine,
    story: Story,
    order: object,
    batched: bool,
    rivals: list[int],
    hours: list[int],
) -> None:
    user_id = "store-" + uuid.uuid4().hex
    prefix = uuid.uuid4().hex[:12] + "-"  # the database lives for the session
    events = list(story.events)
    # A second, different grant for a paid source (a provider's correction, a bug upstream):
    # whichever arrives first stands.
    for index in rivals:
        if story.paid:
            paid = story.paid[index % len(story.paid)]
            events.append(("grant", replace(paid, purchased=paid.purchased + 1)))
    order.shuffle(events)  # type: ignore[attr-defined]
    ledger: dict[Source, SourceState] = {}
    for group in batches(events, batched):
        if group[0][0] == "grant":
            paid = [what for _, what in group if isinstance(what, Paid)]
            expected = []
            for one in paid:
                ledger, created = record_grant(ledger, one.grant())
                expected.append(created)
            mine = [
                one.grant(user_id=user_id, grant_id=str(uuid.uuid4()), prefix=prefix)
                for one in paid
            ]
            async with UnitOfWork(engine) as uow:
                if len(mine) == 1:
                    outcomes = [await uow.grants.grant(mine[0])]
                else:
                    outcomes = await uow.grants.grant_many(mine)
                await uow.commit()
            assert [created for _, created in outcomes] == expected
            for one, (standing, _) in zip(paid, outcomes, strict=True):
                state = ledger[Source("stripe", one.reference)]
                assert standing.revoked == state.revoked
        else:
            reference = str(group[0][1])
            ledger = record_revoke(ledger, Source("stripe", reference))
            async with UnitOfWork(engine) as uow:
                outcome = await uow.grants.revoke(
                    Revocation(
                        source=Source("stripe", prefix + reference),
                        event_id="evt_refund_" + reference,
                        reason="refund",
                        revoked_by="tests",
                    )
                )
                await uow.commit()
            assert outcome.tombstone == (ledger[Source("stripe", reference)].grant is None)

    model = grants_of(ledger)
    async with UnitOfWork(engine) as uow:
        stored = await uow.grants.grants_of_user(user_id, include_revoked=True)
        standing = await uow.grants.grants_of_user(user_id, include_revoked=False)
    assert comparable(stored, prefix) == comparable(model)
    assert comparable(standing, prefix) == comparable(g for g in model if not g.revoked)
    assert answers(standing, hours) == answers(model, hours)
