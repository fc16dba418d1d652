#!/usr/bin/env bash
# Makes the local PostgreSQL and MariaDB ready for Concord's database participants:
#   * both servers running on their standard loopback ports (started if stopped);
#   * PostgreSQL's max_prepared_transactions at least PG_PREPARED (0 by default, which makes every
#     PREPARE TRANSACTION fail); changing it needs a server restart, done here once;
#   * the databases the tests use: concord_test in PostgreSQL and in MariaDB.
# Idempotent: a second run changes nothing. Exit status 0 means both servers are ready.
# The database tests run this script themselves, so CI needs no manual step.
set -euo pipefail

# 128: `concord bench databases` runs up to 32 clients x 2 branches on one server, with room
# for the tests and in-doubt leftovers.
PG_PREPARED=${PG_PREPARED:-128}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -1; }

pg_sql() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc "$1"; }

wait_for() { # wait_for DESCRIPTION COMMAND... : up to 30 s
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "setup-databases: $what did not become ready in 30 s" >&2
  return 1
}

# --- PostgreSQL -------------------------------------------------------------------------
if ! command -v psql >/dev/null; then
  echo "setup-databases: PostgreSQL is not installed (no psql)" >&2; exit 1
fi
if ! pg_sql "select 1" >/dev/null 2>&1; then
  version=$(pg_version)
  [ -n "$version" ] || { echo "setup-databases: no PostgreSQL cluster in /etc/postgresql" >&2; exit 1; }
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for "PostgreSQL" pg_sql "select 1"
fi
current=$(pg_sql "show max_prepared_transactions")
if [ "$current" -lt "$PG_PREPARED" ]; then
  echo "setup-databases: setting PostgreSQL max_prepared_transactions = $PG_PREPARED (was $current); restarting it"
  pg_sql "alter system set max_prepared_transactions = $PG_PREPARED"
  pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main restart
  wait_for "PostgreSQL" pg_sql "select 1"
fi
if [ "$(pg_sql "select count(*) from pg_database where datname = 'concord_test'")" = 0 ]; then
  pg_sql "create database concord_test"
fi

# --- MariaDB ----------------------------------------------------------------------------
if ! command -v mariadb >/dev/null; then
  echo "setup-databases: MariaDB is not installed (no mariadb client)" >&2; exit 1
fi
maria() { mariadb -h 127.0.0.1 -P 3306 -uroot -N -e "$1"; }
if ! maria "select 1" >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for "MariaDB" maria "select 1"
fi
maria "create database if not exists concord_test"

echo "setup-databases: PostgreSQL (max_prepared_transactions = $(pg_sql "show max_prepared_transactions")) and MariaDB ready"
