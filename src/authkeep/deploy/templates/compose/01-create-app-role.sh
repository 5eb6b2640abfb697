#!/usr/bin/env bash
# Creates (or updates) the limited role the authkeep server connects as. The postgres image runs
# this once, when it initialises an empty data volume; running it again is safe.
#
# The role may read and write rows, nothing else: no DDL, not the owner, not a superuser. Tables
# the migrations create later are granted to it through default privileges.
#
# Values reach SQL only as psql variables (:'x' quotes a literal, :"x" an identifier), so
# quotes, backslashes, `$` or `;` in the password cannot change the statements.
set -euo pipefail

: "${POSTGRES_APP_USER:?set POSTGRES_APP_USER}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD}"
owner="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$owner}"

psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
    --username "$owner" --dbname "$database" \
    --set=app_user="$POSTGRES_APP_USER" \
    --set=app_password="$POSTGRES_APP_PASSWORD" \
    --set=owner="$owner" \
    --set=db_name="$database" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
GRANT CONNECT ON DATABASE :"db_name" TO :"app_user";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_user";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_user";
\echo Limited app role :"app_user" is ready.
SQL
