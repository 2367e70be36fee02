-- One role per service, each owning its schema and nothing else.
-- Run with psql -v accounts_password=... -v entitlements_password=... -v payments_password=...
\set ON_ERROR_STOP on

-- Nobody gets anything by default: no CREATE in public, no objects in other schemas.
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE ROLE accounts LOGIN PASSWORD :'accounts_password';
CREATE ROLE entitlements LOGIN PASSWORD :'entitlements_password';
CREATE ROLE payments LOGIN PASSWORD :'payments_password';

CREATE SCHEMA accounts AUTHORIZATION accounts;
CREATE SCHEMA entitlements AUTHORIZATION entitlements;
CREATE SCHEMA payments AUTHORIZATION payments;

-- Each role connects, and sees its own schema first.
SELECT format('GRANT CONNECT ON DATABASE %I TO accounts, entitlements, payments', current_database()) \gexec
ALTER ROLE accounts SET search_path = accounts;
ALTER ROLE entitlements SET search_path = entitlements;
ALTER ROLE payments SET search_path = payments;
