-- Two roles per service. `<service>` owns its schema: migrations run as it. `<service>_app`
-- is what the service runs as: it may read and write the tables, never alter, drop or disable
-- anything (it owns nothing), and the entitlements audit takes no UPDATE or DELETE from it.
-- Run with psql -v accounts_password=... -v accounts_app_password=... (and so on for
-- entitlements and payments).
\set ON_ERROR_STOP on

-- Nobody gets anything by default: no CREATE in public, no objects in other schemas.
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE ROLE accounts LOGIN PASSWORD :'accounts_password';
CREATE ROLE entitlements LOGIN PASSWORD :'entitlements_password';
CREATE ROLE payments LOGIN PASSWORD :'payments_password';
CREATE ROLE accounts_app LOGIN PASSWORD :'accounts_app_password';
CREATE ROLE entitlements_app LOGIN PASSWORD :'entitlements_app_password';
CREATE ROLE payments_app LOGIN PASSWORD :'payments_app_password';

CREATE SCHEMA accounts AUTHORIZATION accounts;
CREATE SCHEMA entitlements AUTHORIZATION entitlements;
CREATE SCHEMA payments AUTHORIZATION payments;

-- Each role connects, and sees its own schema first.
SELECT format(
  'GRANT CONNECT ON DATABASE %I TO accounts, entitlements, payments, '
  'accounts_app, entitlements_app, payments_app',
  current_database()
) \gexec
ALTER ROLE accounts SET search_path = accounts;
ALTER ROLE entitlements SET search_path = entitlements;
ALTER ROLE payments SET search_path = payments;
ALTER ROLE accounts_app SET search_path = accounts;
ALTER ROLE entitlements_app SET search_path = entitlements;
ALTER ROLE payments_app SET search_path = payments;

-- The service role: data only, on whatever its owner's migrations create (now or later).
-- The entitlements migrations take UPDATE, DELETE and TRUNCATE on the audit back again.
GRANT USAGE ON SCHEMA accounts TO accounts_app;
GRANT USAGE ON SCHEMA entitlements TO entitlements_app;
GRANT USAGE ON SCHEMA payments TO payments_app;
ALTER DEFAULT PRIVILEGES FOR ROLE accounts IN SCHEMA accounts
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO accounts_app;
ALTER DEFAULT PRIVILEGES FOR ROLE entitlements IN SCHEMA entitlements
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO entitlements_app;
ALTER DEFAULT PRIVILEGES FOR ROLE payments IN SCHEMA payments
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO payments_app;
ALTER DEFAULT PRIVILEGES FOR ROLE accounts IN SCHEMA accounts
  GRANT USAGE, SELECT ON SEQUENCES TO accounts_app;
ALTER DEFAULT PRIVILEGES FOR ROLE entitlements IN SCHEMA entitlements
  GRANT USAGE, SELECT ON SEQUENCES TO entitlements_app;
ALTER DEFAULT PRIVILEGES FOR ROLE payments IN SCHEMA payments
  GRANT USAGE, SELECT ON SEQUENCES TO payments_app;
