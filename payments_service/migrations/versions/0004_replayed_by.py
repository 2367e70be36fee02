"""Who put an event back in the queue: the caller name of the last replay.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column("inbox", sa.Column("replayed_by", sa.Text(), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("inbox", "replayed_by", schema=SCHEMA)
