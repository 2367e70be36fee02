"""Who put an event back in the queue: the caller name of the last replay.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column("inbox", sa.Column("replayed_by", sa.Text(), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("inbox", "replayed_by", schema=SCHEMA)
