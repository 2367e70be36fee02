"""The entitlements schema: this service's tables, and nothing of any other service.

Every index and constraint is named, so the migration and this file can be compared exactly.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA = "entitlements"
metadata = MetaData(schema=SCHEMA)

# Where every check, grant and revoke hears of changes (payload: one EntitlementChange).
CHANGES_CHANNEL = "entitlements_changes"

# One row per source (provider + reference). A revoke that comes before its grant leaves a
# tombstone: a row with no user, already revoked, that the grant later fills in still revoked.
grants = Table(
    "grants",
    metadata,
    Column("grant_id", Uuid, nullable=False),
    Column("provider", Text, nullable=False),
    Column("reference", Text, nullable=False),
    Column("user_id", Text, nullable=True),
    Column("entitlement", Text, nullable=True),
    Column("event_id", Text, nullable=False, server_default=text("''")),
    Column("purchased_at", DateTime(timezone=True), nullable=True),
    Column("duration_seconds", BigInteger, nullable=True),
    Column("until", DateTime(timezone=True), nullable=True),
    Column("lifetime", Boolean, nullable=False, server_default=text("false")),
    Column("reason", Text, nullable=False, server_default=text("''")),
    Column("granted_by", Text, nullable=False, server_default=text("''")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoke_event_id", Text, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Column("revoked_by", Text, nullable=True),
    PrimaryKeyConstraint("grant_id", name="pk_grants"),
    UniqueConstraint("provider", "reference", name="uq_grants_source"),
    CheckConstraint(
        "user_id IS NOT NULL OR revoked_at IS NOT NULL", name="ck_grants_tombstone_is_revoked"
    ),
    CheckConstraint(
        "user_id IS NULL OR (entitlement IS NOT NULL AND purchased_at IS NOT NULL"
        " AND (duration_seconds IS NOT NULL)::int + (until IS NOT NULL)::int + lifetime::int = 1)",
        name="ck_grants_one_term",
    ),
    # The cache loads one user's grants at a time.
    Index("ix_grants_user_id", "user_id"),
)

# Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE): every change, and what caused it.
audit = Table(
    "audit",
    metadata,
    Column("audit_id", BigInteger, Identity(always=True), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # grant, grant_after_revoke, revoke, tombstone
    Column("action", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("reference", Text, nullable=False),
    Column("grant_id", Uuid, nullable=False),
    Column("user_id", Text, nullable=True),
    Column("entitlement", Text, nullable=True),
    Column("event_id", Text, nullable=False, server_default=text("''")),
    Column("reason", Text, nullable=False, server_default=text("''")),
    Column("actor", Text, nullable=False, server_default=text("''")),
    Column("details", JSONB, nullable=True),
    PrimaryKeyConstraint("audit_id", name="pk_audit"),
    Index("ix_audit_user_id", "user_id"),
    Index("ix_audit_provider_reference", "provider", "reference"),
)
