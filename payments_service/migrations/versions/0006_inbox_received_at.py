"""Inbox by received time: the console's outcomes per hour and its date filter read a range.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.create_index("inbox_received_at_idx", "inbox", ["received_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("inbox_received_at_idx", "inbox", schema=SCHEMA)
