"""The application layer of the entitlements service: one method per operation, each owning
its unit of work. It calls the rules and the store and knows nothing of gRPC messages."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from entitlements_service import rules
from entitlements_service.cache import CheckCache
from entitlements_service.metrics import GRANTS, REVOKES
from entitlements_service.rules import Answer, Grant, Revocation, RevokeOutcome, Window
from entitlements_service.store import UnitOfWork
from entitlements_service.wire import GrantOrder
from paylayer import validation
from paylayer.callers import GRANTS_LIMITED_TO
from paylayer.errors import DomainError, InvalidArgument, PermissionDenied
from paylayer.logs import request_id_var

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Granted:
    grant: Grant  # the grant that stands for the source (the first one given)
    created: bool
    window: Window | None = None


@dataclass(frozen=True)
class Holdings:
    """What a user holds: each entitlement's answer, and their grants in purchase order."""

    answers: list[tuple[str, Answer]]
    grants: list[tuple[Grant, Window | None]]


class Entitlements:
    def __init__(
        self,
        begin: Callable[[], UnitOfWork],
        cache: CheckCache,
        granting_tiers: Mapping[str, frozenset[str]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._begin = begin
        self._cache = cache
        # entitlement -> the tiers whose grants answer it (vip answers premium)
        self._granting_tiers = granting_tiers
        self._clock = clock

    def require_known(self, entitlement: str) -> None:
        if entitlement not in self._granting_tiers:
            known = ", ".join(sorted(self._granting_tiers))
            shown = entitlement[: validation.MAX_TEXT]
            raise InvalidArgument(f"unknown entitlement {shown!r} (known: {known})")

    async def holdings(self, user_id: str, *, include_revoked: bool) -> Holdings:
        async with self._begin() as uow:
            grants = await uow.grants.grants_of_user(user_id, include_revoked=include_revoked)
        answers, listed = rules.list_answers(grants, self._granting_tiers, self._clock())
        return Holdings(answers=answers, grants=listed)

    async def audit_of_user(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        async with self._begin() as uow:
            return await uow.grants.audit_of_user(user_id, limit)

    async def grant(self, order: GrantOrder, caller: str) -> Granted:
        new = self._new_grant(order, caller)
        async with self._begin() as uow:
            standing, created = await uow.grants.grant(new, on_behalf_of=order.on_behalf_of)
            await uow.commit()
        self._granted(new, standing, created)
        # Read-your-writes on this replica; the others hear the NOTIFY.
        self._cache.invalidate(standing.user_id)
        async with self._begin() as uow:
            grants = await uow.grants.grants_of_user(standing.user_id, include_revoked=False)
        return Granted(standing, created, rules.window_of(grants, standing))

    async def grant_many(
        self, orders: Sequence[GrantOrder | DomainError], caller: str
    ) -> list[Granted | DomainError]:
        """Each order granted or refused on its own; the valid ones in one transaction."""
        results: list[Granted | DomainError | None] = [None] * len(orders)
        valid: list[tuple[int, Grant]] = []
        for index, order in enumerate(orders):
            try:
                if isinstance(order, DomainError):
                    raise order
                valid.append((index, self._new_grant(order, caller)))
            except DomainError as error:
                results[index] = error
        async with self._begin() as uow:
            outcomes = await uow.grants.grant_many([new for _, new in valid])
            await uow.commit()
        for (index, new), (standing, created) in zip(valid, outcomes, strict=True):
            self._cache.invalidate(standing.user_id)
            # Each grant logged under its own event's request id, as a single grant is.
            token = request_id_var.set(new.event_id or request_id_var.get())
            self._granted(new, standing, created, batch=len(orders))
            request_id_var.reset(token)
            results[index] = Granted(standing, created)
        return [result for result in results if result is not None]

    async def revoke(self, revocation: Revocation) -> RevokeOutcome:
        _check_source_allowed(revocation.revoked_by, revocation.source.provider)
        async with self._begin() as uow:
            outcome = await uow.grants.revoke(revocation)
            await uow.commit()
        source = revocation.source
        REVOKES.labels(source.provider, "tombstone" if outcome.tombstone else "revoked").inc()
        log.info(
            "revoke %s/%s (%s)",
            source.provider,
            source.reference,
            "tombstone: not granted yet" if outcome.tombstone else "revoked",
        )
        if outcome.grant is not None:
            self._cache.invalidate(outcome.grant.user_id)
        return outcome

    def _new_grant(self, order: GrantOrder, caller: str) -> Grant:
        _check_source_allowed(caller, order.source.provider)
        self.require_known(order.entitlement)
        purchased_at = order.purchased_at or self._clock()
        problem = rules.grant_problem(
            paid_through_provider=order.source.provider in validation.PAYMENT_PROVIDERS,
            event_id=order.event_id,
            reason=order.reason,
            purchased_at=purchased_at,
            term=order.term,
        )
        if problem:
            raise InvalidArgument(problem)
        return Grant(
            grant_id=str(uuid.uuid4()),
            user_id=order.user_id,
            entitlement=order.entitlement,
            source=order.source,
            event_id=order.event_id,
            purchased_at=purchased_at,
            duration=order.term.duration,
            until=order.term.until,
            lifetime=order.term.lifetime,
            reason=order.reason,
            # Who it was is taken from the credential, never from the request.
            granted_by=caller,
        )

    @staticmethod
    def _granted(new: Grant, standing: Grant, created: bool, *, batch: int = 0) -> None:
        GRANTS.labels(new.source.provider, "created" if created else "duplicate").inc()
        log.info(
            "grant %s %s/%s to %s (%s%s)",
            standing.entitlement,
            new.source.provider,
            new.source.reference,
            standing.user_id,
            "created" if created else "already granted",
            f", in a batch of {batch}" if batch else "",
        )


def _check_source_allowed(caller: str, provider: str) -> None:
    allowed = GRANTS_LIMITED_TO.get(caller)
    if allowed is not None and provider not in allowed:
        raise PermissionDenied(
            f"{caller} may grant and revoke only {', '.join(sorted(allowed))} sources"
        )
