"""The audit refuses UPDATE, DELETE and TRUNCATE from every role but its owner's.

The append-only trigger (0001) stays: the service's role does not own the table, so it can
neither drop nor disable it. This takes the rights away as well, from whoever was given them
(default privileges included), so the refusal does not rest on the trigger alone.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "entitlements"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$
        DECLARE grantee text;
        BEGIN
            REVOKE UPDATE, DELETE, TRUNCATE ON {SCHEMA}.audit FROM PUBLIC;
            FOR grantee IN
                SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
                WHERE g.table_schema = '{SCHEMA}' AND g.table_name = 'audit'
                  AND g.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
                  AND g.grantee <> (SELECT tableowner FROM pg_tables
                                    WHERE schemaname = '{SCHEMA}' AND tablename = 'audit')
                  AND g.grantee <> 'PUBLIC'
            LOOP
                EXECUTE format(
                    'REVOKE UPDATE, DELETE, TRUNCATE ON {SCHEMA}.audit FROM %I', grantee
                );
            END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    pass  # rights are the deployment's to give back (deploy/postgres/roles.sql)
