"""Snapshot history for charts: at most one point a minute per account, pruned after 90 days.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "accounts"


def upgrade() -> None:
    op.create_table(
        "snapshot_history",
        sa.Column("login", sa.BigInteger(), nullable=False),
        sa.Column("server_key", sa.Text(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("balance", sa.Double(), nullable=False),
        sa.Column("equity", sa.Double(), nullable=False),
        sa.Column("drawdown", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("login", "server_key", "minute", name="pk_snapshot_history"),
        sa.ForeignKeyConstraint(
            ["login", "server_key"],
            ["accounts.accounts.login", "accounts.accounts.server_key"],
            name="fk_snapshot_history_account",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_snapshot_history_minute", "snapshot_history", ["minute"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_snapshot_history_minute", "snapshot_history", schema=SCHEMA)
    op.drop_table("snapshot_history", schema=SCHEMA)
