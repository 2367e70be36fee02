"""The inbox and the payments ledger.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payment_key", sa.Text),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("provider", "event_id", name="inbox_provider_event_id_key"),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'ignored', 'failed')", name="inbox_status_check"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "inbox_pending_due_idx",
        "inbox",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("inbox_status_type_idx", "inbox", ["status", "event_type", "id"], schema=SCHEMA)
    op.create_table(
        "payments",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("payment_key", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("sku", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("currency", sa.Text, nullable=False, server_default=""),
        sa.Column("amount_refunded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("subscription_id", sa.Text),
        sa.Column("subscription_state", sa.Text, nullable=False, server_default=""),
        sa.Column("purchased_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("provider", "payment_key", name="payments_pkey"),
        schema=SCHEMA,
    )
    op.create_index("payments_user_idx", "payments", ["user_id", "created_at"], schema=SCHEMA)
    op.create_index("payments_subscription_idx", "payments", ["subscription_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("payments", schema=SCHEMA)
    op.drop_table("inbox", schema=SCHEMA)
