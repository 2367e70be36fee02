"""Grants, one per source, and the append-only audit of every change.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "entitlements"


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("entitlement", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("purchased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.BigInteger(), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lifetime", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("granted_by", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_event_id", sa.Text(), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("grant_id", name="pk_grants"),
        sa.UniqueConstraint("provider", "reference", name="uq_grants_source"),
        sa.CheckConstraint(
            "user_id IS NOT NULL OR revoked_at IS NOT NULL",
            name="ck_grants_tombstone_is_revoked",
        ),
        sa.CheckConstraint(
            "user_id IS NULL OR (entitlement IS NOT NULL AND purchased_at IS NOT NULL"
            " AND (duration_seconds IS NOT NULL)::int + (until IS NOT NULL)::int"
            " + lifetime::int = 1)",
            name="ck_grants_one_term",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_grants_user_id", "grants", ["user_id"], schema=SCHEMA)
    # Every change to a grant row tells each replica's cache, whoever makes it: the service
    # (which also sends the full change, for watchers) or an operator fixing data by hand.
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.grants_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('entitlements_changes', 'all:');
                RETURN NULL;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.user_id IS NOT NULL THEN
                PERFORM pg_notify('entitlements_changes', 'user:' || OLD.user_id);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.user_id IS NOT NULL THEN
                PERFORM pg_notify('entitlements_changes', 'user:' || NEW.user_id);
            END IF;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER grants_changed
        AFTER INSERT OR UPDATE OR DELETE ON {SCHEMA}.grants
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.grants_changed()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER grants_truncated
        AFTER TRUNCATE ON {SCHEMA}.grants
        FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.grants_changed()
        """
    )

    op.create_table(
        "audit",
        sa.Column("audit_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("entitlement", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("actor", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("details", postgresql.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("audit_id", name="pk_audit"),
        schema=SCHEMA,
    )
    op.create_index("ix_audit_user_id", "audit", ["user_id"], schema=SCHEMA)
    op.create_index(
        "ix_audit_provider_reference", "audit", ["provider", "reference"], schema=SCHEMA
    )
    # The audit is evidence: no role, this service's included, may rewrite or erase it.
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.audit_is_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the entitlements audit is append-only';
        END;
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER audit_is_append_only
        BEFORE UPDATE OR DELETE ON {SCHEMA}.audit
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.audit_is_append_only()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER audit_is_never_truncated
        BEFORE TRUNCATE ON {SCHEMA}.audit
        FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.audit_is_append_only()
        """
    )


def downgrade() -> None:
    op.drop_table("audit", schema=SCHEMA)
    op.execute(f"DROP FUNCTION {SCHEMA}.audit_is_append_only()")
    op.drop_index("ix_grants_user_id", table_name="grants", schema=SCHEMA)
    op.drop_table("grants", schema=SCHEMA)
    op.execute(f"DROP FUNCTION {SCHEMA}.grants_changed()")
