"""Inbox leases and a wake-up notice: workers claim batches briefly and hold no lock meanwhile.
Also what a year's volume needs: indexes for every lookup on a hot or operator path, keyset
paging of the ledger, and an index for deleting old events.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column("inbox", sa.Column("claimed_until", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("inbox", sa.Column("claimed_by", sa.Text), schema=SCHEMA)
    op.create_index("inbox_payment_key_idx", "inbox", ["provider", "payment_key"], schema=SCHEMA)
    op.create_index(
        "inbox_done_idx",
        "inbox",
        ["processed_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('processed', 'ignored')"),
    )
    # The ledger in the order rows came, for paging without OFFSET.
    op.add_column(
        "payments",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("payments_seq_idx", "payments", ["seq"], unique=True, schema=SCHEMA)
    op.create_index("payments_user_seq_idx", "payments", ["user_id", "seq"], schema=SCHEMA)
    # Every replica's workers wake on a new event at once, instead of at their next poll.
    op.execute(
        """
        CREATE FUNCTION payments.notify_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('payments_inbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER inbox_notify AFTER INSERT ON payments.inbox"
        " FOR EACH STATEMENT EXECUTE FUNCTION payments.notify_inbox()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER inbox_notify ON payments.inbox")
    op.execute("DROP FUNCTION payments.notify_inbox()")
    op.drop_index("payments_user_seq_idx", table_name="payments", schema=SCHEMA)
    op.drop_index("payments_seq_idx", table_name="payments", schema=SCHEMA)
    op.drop_column("payments", "seq", schema=SCHEMA)
    op.drop_index("inbox_done_idx", table_name="inbox", schema=SCHEMA)
    op.drop_index("inbox_payment_key_idx", table_name="inbox", schema=SCHEMA)
    op.drop_column("inbox", "claimed_by", schema=SCHEMA)
    op.drop_column("inbox", "claimed_until", schema=SCHEMA)
