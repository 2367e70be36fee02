"""Channel access: members per chat, join requests, invite links, and an audit of decisions.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "chat_members",
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("observed_at", moment, nullable=False),
        sa.Column("updated_at", moment, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_members_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "chat_join_requests",
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger, nullable=False),
        sa.Column("requested_at", moment, nullable=False),
        sa.Column("invite_link", sa.Text),
        sa.Column("decision", sa.Text, nullable=False, server_default="pending"),
        sa.Column("decided_at", moment),
        sa.PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_join_requests_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "chat_invite_links",
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("invite_link", sa.Text, nullable=False),
        sa.Column("created_at", moment, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("chat_id", "telegram_user_id", name="chat_invite_links_pkey"),
        sa.UniqueConstraint("invite_link", name="chat_invite_links_link_key"),
        schema=SCHEMA,
    )
    op.create_table(
        "chat_access_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", moment, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="chat_access_audit_pkey"),
        schema=SCHEMA,
    )
    op.create_index(
        "chat_access_audit_chat_idx", "chat_access_audit", ["chat_id", "id"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("chat_access_audit_chat_idx", table_name="chat_access_audit", schema=SCHEMA)
    for table in ("chat_access_audit", "chat_invite_links", "chat_join_requests", "chat_members"):
        op.drop_table(table, schema=SCHEMA)
