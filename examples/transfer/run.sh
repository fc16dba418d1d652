#!/usr/bin/env bash
# The seed documents' transfer, run for real: debit alice's balance in PostgreSQL and credit
# her points in Redis, as one transaction through `concord db serve`. Then the failure the
# seed warns about — the coordinator killed (kill -9) between the prepare and the commit —
# twice: after the COMMIT decision is logged (the restarted coordinator commits both), and
# before it (it rolls both back). Every step checks both stores and exits non-zero if they
# disagree with what Concord answered.
#
#   CONCORD=./target/release/concord examples/transfer/run.sh
#
# Needs PostgreSQL on 127.0.0.1:5432 with max_prepared_transactions > 0 and a concord_test
# database (scripts/setup-databases.sh), and redis-server / redis-cli (scripts/setup-redis.sh).
# Starts its own Redis (AOF, appendfsync always) on REDIS_PORT and the coordinator on
# API_PORT; leaves nothing behind but WORK (a temporary directory unless given).
set -euo pipefail

CONCORD=${CONCORD:-concord}
WORK=${WORK:-$(mktemp -d /tmp/concord-transfer.XXXXXX)}
REDIS_PORT=${REDIS_PORT:-6391}
API_PORT=${API_PORT:-7811}
PG="host=127.0.0.1 user=postgres dbname=concord_test"
RUN=$$$(date +%N | cut -c1-4)          # this run's tag: tables and gids of its own
TABLE="transfer_accounts_$RUN"
API="127.0.0.1:$API_PORT"
pids=()

say() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  psql "$PG" -qc "DROP TABLE IF EXISTS $TABLE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
sql() { psql "$PG" -qtAc "$1"; }
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
# Waits (bounded) until the command succeeds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out waiting for $what"
}
balances() { echo "postgres: $(sql "SELECT balance FROM $TABLE WHERE id = 'alice'")  redis: $(rcli GET points:alice)"; }
expect() {
  local pg redis
  pg=$(sql "SELECT balance FROM $TABLE WHERE id = 'alice'"); redis=$(rcli GET points:alice)
  [ "$pg" = "$1" ] && [ "$redis" = "$2" ] || fail "expected postgres $1 and redis $2, found postgres $pg and redis $redis"
  echo "ok: $(balances)"
}
nothing_prepared() {
  [ "$(sql "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'concord:transfer:%@n$NODE:%'")" = 0 ] &&
    [ -z "$(rcli --scan --pattern 'concord:prepared:*')" ] && [ -z "$(rcli --scan --pattern 'concord:lock:*')" ]
}

say "Redis with an append-only file fsynced at every write, on port $REDIS_PORT"
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --dir "$WORK/redis" \
  --appendonly yes --appendfsync always --maxmemory-policy noeviction >"$WORK/redis.log" 2>&1 &
pids+=($!)
wait_for "Redis" rcli PING

say "alice has 100 in PostgreSQL ($TABLE) and no points in Redis"
sql "CREATE TABLE $TABLE (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
     INSERT INTO $TABLE VALUES ('alice', 100)"

# A node id of this run's own: gids are never reused, and PostgreSQL keeps marker rows a day.
NODE=$(( (RUN % 60000) + 1 ))
cat >"$WORK/databases.toml" <<TOML
cluster = "transfer"
node_id = $NODE
listen = "$API"

[[database]]
name = "bank"
kind = "postgres"
url = "$PG"

[[database]]
name = "points"
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT/0"

[recovery]
interval_ms = 300
grace_ms = 8000

[timeouts]
statement_ms = 2000
TOML

serve() {  # serve [--fault POINT]
  local n=${#pids[@]}
  "$CONCORD" db serve --config "$WORK/databases.toml" --data-dir "$WORK/coordinator" "$@" \
    >"$WORK/serve-$n.log" 2>&1 &
  coordinator=$!
  pids+=("$coordinator")
  coordinator_log="$WORK/serve-$n.log"
  wait_for "the coordinator" grep -q "concord: ready" "$coordinator_log"
}
transfer() {  # transfer AMOUNT
  "$CONCORD" db exec --db "$API" \
    "bank=UPDATE $TABLE SET balance = balance - $1 WHERE id = 'alice'" \
    "points=INCRBY points:alice $1"
}

say "1. transfer 30: both apply"
serve
transfer 30
expect 70 30

say "2. transfer 500: PostgreSQL's CHECK votes NO, so Redis is not credited"
transfer 500 || true
expect 70 30
wait_for "no branch left prepared" nothing_prepared
kill -9 "$coordinator"; wait "$coordinator" 2>/dev/null || true

say "2b. transfer 10 while alice's points are not a number: Redis votes NO, so PostgreSQL is not debited"
rcli SET points:alice thirty >/dev/null
transfer 10 || true
[ "$(sql "SELECT balance FROM $TABLE WHERE id = 'alice'")" = 70 ] || fail "PostgreSQL was debited"
[ "$(rcli GET points:alice)" = thirty ] || fail "Redis changed"
rcli SET points:alice 30 >/dev/null
expect 70 30

say "3. transfer 20, coordinator killed (kill -9) after the COMMIT decision is logged"
serve --fault pause-after-decision
transfer 20 >"$WORK/client-3.log" 2>&1 &
client=$!
wait_for "the decision" grep -q "paused AfterDecision" "$coordinator_log"
[ -n "$(rcli --scan --pattern 'concord:prepared:*')" ] || fail "Redis holds no prepared branch"
echo "both prepared, COMMIT logged, nothing applied: $(balances)"
kill -9 "$coordinator"; wait "$coordinator" 2>/dev/null || true
wait "$client" 2>/dev/null || true
serve
wait_for "recovery to finish both branches" nothing_prepared
expect 50 50

say "4. transfer 5, coordinator killed (kill -9) after the prepare, before any decision"
kill -9 "$coordinator"; wait "$coordinator" 2>/dev/null || true
serve --fault pause-after-prepare
transfer 5 >"$WORK/client-4.log" 2>&1 &
client=$!
wait_for "the prepare" grep -q "paused AfterPrepare" "$coordinator_log"
[ -n "$(rcli --scan --pattern 'concord:prepared:*')" ] || fail "Redis holds no prepared branch"
[ -n "$(rcli --scan --pattern 'concord:lock:*')" ] || fail "Redis holds no lock for the branch"
echo "both prepared, no decision, nothing applied: $(balances)"
kill -9 "$coordinator"; wait "$coordinator" 2>/dev/null || true
wait "$client" 2>/dev/null || true
serve
wait_for "recovery to roll both back (presumed abort)" nothing_prepared
expect 50 50

say "all checks held"
