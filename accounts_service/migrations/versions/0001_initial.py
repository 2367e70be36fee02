"""Users with their identities, and linked MT5 accounts with their latest snapshot.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "accounts"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger(), nullable=True),
        sa.Column("stripe_customer_id", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_users"),
        sa.UniqueConstraint("telegram_user_id", name="uq_users_telegram_user_id"),
        sa.UniqueConstraint("stripe_customer_id", name="uq_users_stripe_customer_id"),
        sa.UniqueConstraint("email", name="uq_users_email"),
        schema=SCHEMA,
    )
    op.create_table(
        "accounts",
        sa.Column("login", sa.BigInteger(), nullable=False),
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("account_type", sa.Text(), nullable=False),
        sa.Column("broker", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("label", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.Column("balance", sa.Double(), nullable=True),
        sa.Column("equity", sa.Double(), nullable=True),
        sa.Column("margin", sa.Double(), nullable=True),
        sa.Column("free_margin", sa.Double(), nullable=True),
        sa.Column("margin_level", sa.Double(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("leverage", sa.Integer(), nullable=True),
        sa.Column("snapshot_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("peak_equity", sa.Double(), nullable=True),
        sa.Column("drawdown", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_drawdown", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("login", "server", name="pk_accounts"),
        sa.ForeignKeyConstraint(
            ["user_id"], [f"{SCHEMA}.users.user_id"], name="fk_accounts_user_id_users"
        ),
        sa.CheckConstraint(
            "account_type IN ('demo', 'real', 'contest')", name="ck_accounts_account_type"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_accounts_user_id_linked_at",
        "accounts",
        ["user_id", "linked_at"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_user_id_linked_at", table_name="accounts", schema=SCHEMA)
    op.drop_table("accounts", schema=SCHEMA)
    op.drop_table("users", schema=SCHEMA)
