"""One transaction of the payments schema, owned by the processor: the ledger and the outbox
bound to its connection, so what users are told commits with the effect it tells of.

    async with UnitOfWork(engine) as uow:
        await uow.ledger.lock_payment(provider, payment_key)
        ...
        await uow.commit()
"""

from __future__ import annotations

from paylayer import unit_of_work
from payments_service.outbox import Outbox
from payments_service.store import Ledger


class UnitOfWork(unit_of_work.UnitOfWork):
    """One transaction on the payments schema (see paylayer.unit_of_work)."""

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.connection)

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.connection)
