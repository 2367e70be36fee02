"""Messages to users: a durable outbox (receipts, notices, reminders) and what is known of each
Telegram user (language, whether they blocked the bot).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    moment = sa.DateTime(timezone=True)
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger),
        sa.Column("language", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "params", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("entitlement", sa.Text),
        sa.Column("ends_at", moment),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("due_at", moment, nullable=False, server_default=sa.func.now()),
        sa.Column("claimed_until", moment),
        sa.Column("claimed_by", sa.Text),
        sa.Column("telegram_message_id", sa.BigInteger),
        sa.Column("created_at", moment, nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", moment),
        sa.UniqueConstraint("dedupe_key", name="messages_dedupe_key_key"),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'unreachable',"
            " 'superseded', 'no_chat')",
            name="messages_status_check",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "messages_due_idx",
        "messages",
        ["due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.create_index("messages_user_idx", "messages", ["user_id", "id"], schema=SCHEMA)
    op.create_index(
        "messages_reminders_idx",
        "messages",
        ["user_id", "entitlement"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending' AND entitlement IS NOT NULL"),
    )
    op.create_table(
        "telegram_users",
        sa.Column("telegram_user_id", sa.BigInteger, primary_key=True),
        sa.Column("language_code", sa.Text, nullable=False, server_default=""),
        # Set when Telegram answered 403 (the user blocked the bot): nothing more is sent.
        sa.Column("unreachable_at", moment),
        sa.Column("updated_at", moment, nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("telegram_users", schema=SCHEMA)
    op.drop_table("messages", schema=SCHEMA)
