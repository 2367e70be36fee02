"""Inbox by received time: the console's outcomes per hour and its date filter read a range.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.create_index("inbox_received_at_idx", "inbox", ["received_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("inbox_received_at_idx", "inbox", schema=SCHEMA)
