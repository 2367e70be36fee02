"""Subscriptions: status, current period and cancel, merged from events in any order.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "subscriptions",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("current_period_start", moment),
        sa.Column("current_period_end", moment),
        sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("canceled_at", moment),
        sa.Column("ended_at", moment),
        sa.Column("observed_at", moment, nullable=False),
        sa.Column(
            "stated",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("created_at", moment, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", moment, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("provider", "subscription_id", name="subscriptions_pkey"),
        schema=SCHEMA,
    )
    op.create_index(
        "subscriptions_user_idx", "subscriptions", ["user_id", "created_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("subscriptions_user_idx", table_name="subscriptions", schema=SCHEMA)
    op.drop_table("subscriptions", schema=SCHEMA)
