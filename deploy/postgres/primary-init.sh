#!/bin/bash
# Runs once, on the primary's first start with an empty data directory (the official image's
# /docker-entrypoint-initdb.d), as the postgres superuser against the image's temporary server.
#
#   replicator     streams WAL to the standby (physical slot `standby1`, so the primary keeps the
#                  WAL the standby has not received yet)
#   huiyue_owner   owns the database and the schema: runs the migrations, nothing else
#   huiyue_app     what the processes connect as: no ownership, no superuser (docs/audit-log.md)
#
# Passwords come from the container's environment (deploy/.env), never from this file.
set -euo pipefail

: "${REPLICATION_PASSWORD:?}" "${HY_DB_OWNER_PASSWORD:?}" "${HY_DB_APP_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v repl_pw="$REPLICATION_PASSWORD" -v owner_pw="$HY_DB_OWNER_PASSWORD" -v app_pw="$HY_DB_APP_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD :'repl_pw';  -- secret-scan: allow (psql variable)
SELECT pg_create_physical_replication_slot('standby1');

CREATE ROLE huiyue_owner LOGIN PASSWORD :'owner_pw';  -- secret-scan: allow (psql variable)
CREATE ROLE huiyue_app LOGIN PASSWORD :'app_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;  -- secret-scan: allow (psql variable)
CREATE DATABASE huiyue OWNER huiyue_owner;

\connect huiyue
ALTER SCHEMA public OWNER TO huiyue_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO huiyue_app;
-- Stopgap: `python -m app serve` re-runs the migration check at start-up, and its
-- `CREATE TABLE IF NOT EXISTS schema_migration` needs CREATE on the schema even when the table
-- exists. CREATE lets huiyue_app make tables of its own, but not alter, disable the triggers of or
-- drop huiyue_owner's (the audit log among them). Revoke it once serve can skip migrations.
GRANT CREATE ON SCHEMA public TO huiyue_app;
SQL

# Replication connections are matched by the keyword `replication`, not by `all`.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
