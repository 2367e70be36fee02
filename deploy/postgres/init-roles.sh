#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
set -eu
psql --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v accounts_password="$ACCOUNTS_DB_PASSWORD" \
  -v entitlements_password="$ENTITLEMENTS_DB_PASSWORD" \
  -v payments_password="$PAYMENTS_DB_PASSWORD" \
  -v accounts_app_password="$ACCOUNTS_APP_DB_PASSWORD" \
  -v entitlements_app_password="$ENTITLEMENTS_APP_DB_PASSWORD" \
  -v payments_app_password="$PAYMENTS_APP_DB_PASSWORD" \
  -f /docker-entrypoint-initdb.d/roles.sql.in
