"""Which payment paid which invoice, so a refund of the payment reaches the invoice's grant.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column("payments", sa.Column("invoice_id", sa.Text), schema=SCHEMA)
    op.create_table(
        "invoice_payments",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("payment_key", sa.Text, nullable=False),
        sa.Column("invoice_id", sa.Text, nullable=False),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("provider", "payment_key", name="invoice_payments_pkey"),
        schema=SCHEMA,
    )
    op.create_index(
        "invoice_payments_invoice_idx",
        "invoice_payments",
        ["provider", "invoice_id"],
        schema=SCHEMA,
    )
    # The failed-events gauge counts these often; the partial index keeps that cheap.
    op.create_index(
        "inbox_failed_idx",
        "inbox",
        ["id"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("inbox_failed_idx", table_name="inbox", schema=SCHEMA)
    op.drop_index("invoice_payments_invoice_idx", table_name="invoice_payments", schema=SCHEMA)
    op.drop_table("invoice_payments", schema=SCHEMA)
    op.drop_column("payments", "invoice_id", schema=SCHEMA)
