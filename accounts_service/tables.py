"""The accounts schema: this service's tables, and nothing of any other service.

Every index and constraint is named, so the migration and this file can be compared exactly.
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

SCHEMA = "accounts"
metadata = MetaData(schema=SCHEMA)

# One row per person, whatever channel they came from. Each identity is nullable and unique:
# PostgreSQL lets many NULLs through a unique constraint, so "none yet" never conflicts.
users = Table(
    "users",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=True),
    Column("stripe_customer_id", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("user_id", name="pk_users"),
    UniqueConstraint("telegram_user_id", name="uq_users_telegram_user_id"),
    UniqueConstraint("stripe_customer_id", name="uq_users_stripe_customer_id"),
    UniqueConstraint("email", name="uq_users_email"),
)

# One row per linked MT5 account, with its latest snapshot and drawdown folded in: the service
# answers "where does this account stand now", history belongs to the bridge.
accounts = Table(
    "accounts",
    metadata,
    Column("login", BigInteger, nullable=False),
    Column("server", Text, nullable=False),  # as the user spelled it, for display
    # What MT5 compares: case and surrounding spaces ignored (rules.server_key).
    Column("server_key", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("account_type", Text, nullable=False),
    Column("broker", Text, nullable=False, server_default=text("''")),
    Column("label", Text, nullable=False, server_default=text("''")),
    # Link order decides which accounts stay active when a tier ends: the oldest do.
    Column("linked_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("balance", Double, nullable=True),
    Column("equity", Double, nullable=True),
    Column("margin", Double, nullable=True),
    Column("free_margin", Double, nullable=True),
    Column("margin_level", Double, nullable=True),
    Column("currency", Text, nullable=True),
    Column("leverage", Integer, nullable=True),
    Column("snapshot_time", DateTime(timezone=True), nullable=True),
    Column("peak_equity", Double, nullable=True),
    Column("drawdown", Double, nullable=False, server_default=text("0")),
    Column("max_drawdown", Double, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("login", "server", name="pk_accounts"),
    UniqueConstraint("login", "server_key", name="uq_accounts_login_server_key"),
    ForeignKeyConstraint(["user_id"], ["accounts.users.user_id"], name="fk_accounts_user_id_users"),
    CheckConstraint("account_type IN ('demo', 'real', 'contest')", name="ck_accounts_account_type"),
    Index("ix_accounts_user_id_linked_at", "user_id", "linked_at"),
)

# The chart of an account: at most one point a minute (the first applied snapshot of that
# minute), kept SNAPSHOT_HISTORY_DAYS. Unlinking an account forgets its history with it.
snapshot_history = Table(
    "snapshot_history",
    metadata,
    Column("login", BigInteger, nullable=False),
    Column("server_key", Text, nullable=False),
    Column("minute", DateTime(timezone=True), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("balance", Double, nullable=False),
    Column("equity", Double, nullable=False),
    Column("drawdown", Double, nullable=False),
    PrimaryKeyConstraint("login", "server_key", "minute", name="pk_snapshot_history"),
    ForeignKeyConstraint(
        ["login", "server_key"],
        ["accounts.accounts.login", "accounts.accounts.server_key"],
        name="fk_snapshot_history_account",
        ondelete="CASCADE",
    ),
    Index("ix_snapshot_history_minute", "minute"),
)
