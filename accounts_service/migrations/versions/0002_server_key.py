"""MT5 server names compared as MT5 compares them: one account per (login, server key).

`server_key` is the name with case and surrounding spaces ignored; `server` keeps the spelling
the user gave, for display. Should two spellings of one account already be linked, this
migration stops on the unique constraint: an operator must decide which link stands.

The keys are computed by the code's own `rules.server_key`, not by SQL: PostgreSQL's `btrim`
and `lower` disagree with Python's on Unicode spaces and, under a C collation, on non-ASCII
letters, and a key stored one way and looked up the other would let an account be linked twice.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from accounts_service.rules import server_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "accounts"


def upgrade() -> None:
    op.add_column("accounts", sa.Column("server_key", sa.Text(), nullable=True), schema=SCHEMA)
    accounts = sa.table("accounts", sa.column("server"), sa.column("server_key"), schema=SCHEMA)
    bind = op.get_bind()
    spellings = bind.execute(sa.select(accounts.c.server).distinct()).scalars().all()
    if spellings:
        bind.execute(
            accounts.update()
            .where(accounts.c.server == sa.bindparam("spelling"))
            .values(server_key=sa.bindparam("key")),
            [{"spelling": spelling, "key": server_key(spelling)} for spelling in spellings],
        )
    op.alter_column("accounts", "server_key", nullable=False, schema=SCHEMA)
    op.create_unique_constraint(
        "uq_accounts_login_server_key", "accounts", ["login", "server_key"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_constraint("uq_accounts_login_server_key", "accounts", schema=SCHEMA)
    op.drop_column("accounts", "server_key", schema=SCHEMA)
