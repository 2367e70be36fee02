"""A unit of work: one transaction on one connection, owned by a use case.

    async with SomeUnitOfWork(engine) as uow:
        ... uow.<store>.<statement>() ...
        await uow.commit()

Leaving the block without `commit` rolls everything back. Each service subclasses it to hand
out its store bound to the connection, so that stores hold SQL and never open transactions.
"""

from __future__ import annotations

from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# What a use case reads in one statement needs no BEGIN/COMMIT round trips.
AUTOCOMMIT = "AUTOCOMMIT"


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, *, single_statement: bool = False) -> None:
        """`single_statement`: each statement commits by itself (a lookup, an idempotent insert),
        saving the round trips of a transaction; `commit` is then a no-op."""
        self._engine = (
            engine.execution_options(isolation_level=AUTOCOMMIT) if single_statement else engine
        )
        self._single_statement = single_statement
        self._connection: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None, "use the unit of work inside `async with`"
        return self._connection

    async def __aenter__(self) -> Self:
        self._connection = await self._engine.connect()
        if not self._single_statement:
            try:
                await self._connection.begin()
            except BaseException:
                await self._connection.close()
                raise
        return self

    async def commit(self) -> None:
        if not self._single_statement:
            await self.connection.commit()

    async def __aexit__(self, *exc_info: object) -> None:
        connection, self._connection = self.connection, None
        try:
            if connection.in_transaction():
                await connection.rollback()
        finally:
            await connection.close()
