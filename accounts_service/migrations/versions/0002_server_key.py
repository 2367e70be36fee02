"""MT5 server names compared as MT5 compares them: one account per (login, server key).

`server_key` is the name with case and surrounding spaces ignored; `server` keeps the spelling
the user gave, for display. Should two spellings of one account already be linked, this
migration stops on the unique constraint: an operator must decide which link stands.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "accounts"


def upgrade() -> None:
    op.add_column("accounts", sa.Column("server_key", sa.Text(), nullable=True), schema=SCHEMA)
    op.execute(f"UPDATE {SCHEMA}.accounts SET server_key = lower(btrim(server, E' \\t\\r\\n'))")
    op.alter_column("accounts", "server_key", nullable=False, schema=SCHEMA)
    op.create_unique_constraint(
        "uq_accounts_login_server_key", "accounts", ["login", "server_key"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_constraint("uq_accounts_login_server_key", "accounts", schema=SCHEMA)
    op.drop_column("accounts", "server_key", schema=SCHEMA)
