#!/usr/bin/env bash
# Creates the databases of Airflow and MLflow, each owned by its own login role, and closes every
# database to roles that do not own it (CONNECT is revoked from PUBLIC): the Airflow role cannot
# read MLflow's tables and vice versa.
#
#   airflow database  <- AIRFLOW_DB_USER (Airflow metadata)
#   mlflow database   <- MLFLOW_DB_USER  (tracking + registry store)
#   mlflow_auth db    <- MLFLOW_DB_USER  (MLflow basic-auth users and permissions)
#
# The postgres container runs it once, on an empty data directory (/docker-entrypoint-initdb.d).
# `bin/stack` and tests/stack run the very same script against the local PostgreSQL
# (PGHOST=127.0.0.1), so it is idempotent: existing roles and databases are kept, passwords re-set.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD (.env)}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD (.env)}"

psql --no-psqlrc -v ON_ERROR_STOP=1 --quiet --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set=airflow_db="${AIRFLOW_DB_NAME:-airflow}" \
  --set=airflow_user="${AIRFLOW_DB_USER:-airflow}" \
  --set=airflow_password="$AIRFLOW_DB_PASSWORD" \
  --set=mlflow_db="${MLFLOW_DB_NAME:-mlflow}" \
  --set=mlflow_auth_db="${MLFLOW_AUTH_DB_NAME:-mlflow_auth}" \
  --set=mlflow_user="${MLFLOW_DB_USER:-mlflow}" \
  --set=mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
-- CREATE ROLE/DATABASE have no IF NOT EXISTS: build each statement only when needed (\gexec).
SELECT format('CREATE ROLE %I LOGIN', r) FROM unnest(ARRAY[:'airflow_user', :'mlflow_user']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'airflow_user', :'airflow_password') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'mlflow_user', :'mlflow_password') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', d.name, d.owner)
  FROM (VALUES (:'airflow_db', :'airflow_user'), (:'mlflow_db', :'mlflow_user'),
               (:'mlflow_auth_db', :'mlflow_user')) AS d(name, owner)
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d.name) \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', d)
  FROM unnest(ARRAY[:'airflow_db', :'mlflow_db', :'mlflow_auth_db']) AS d \gexec
SQL
echo "ct-databases: ${AIRFLOW_DB_NAME:-airflow} (${AIRFLOW_DB_USER:-airflow}), ${MLFLOW_DB_NAME:-mlflow} and" \
     "${MLFLOW_AUTH_DB_NAME:-mlflow_auth} (${MLFLOW_DB_USER:-mlflow}) ready"
