#!/usr/bin/env bash
# History at 100 M rows (issue #16; docs/benchmarks.md): creates database
# $DB, applies the migrations with the bridge's own schema code, and writes
# DEVICES (2 000) devices x DAYS (31) days of 1 Hz drives and parked
# heartbeats (about 50 000 fixes a device, 100 million rows) by binary COPY
# (crates/bridge/examples/gen_history.rs), then measures through the
# gateway's HTTP API (release build) with curl:
#
#   scripts/gen-history.sh             # generate, measure, keep the database
#   KEEP=0 scripts/gen-history.sh      # ... and drop the database at the end
#   SKIP_GEN=1 scripts/gen-history.sh  # measure an existing database only
#
# Needs about 20 GB free for the database. PG_URL points at the server.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
DB=${DB:-fieldcast_hist100m}
LISTEN=${LISTEN:-127.0.0.1:18099}
T="${CARGO_TARGET_DIR:-target}"
export DEVICES=${DEVICES:-2000} DAYS=${DAYS:-31} JOBS=${JOBS:-2} FULL_DEVICES=${FULL_DEVICES:-${DEVICES:-2000}}

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p fieldcast-gateway
  cargo build --release -q -p fieldcast-bridge --example gen_history
fi
if [ -z "${SKIP_GEN:-}" ]; then
  psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
  /usr/bin/time -f 'generation: %e s wall, %M KB max RSS' \
    "$T/release/examples/gen_history" "$PG_URL/$DB"
fi
psql "$PG_URL/$DB" -Atc "SELECT 'rows: ' || count(*) FROM locations" \
  -c "SELECT 'size: ' || pg_size_pretty(pg_database_size(current_database()))"

FIELDCAST_DATABASE_URL="$PG_URL/$DB" FIELDCAST_LISTEN=$LISTEN FIELDCAST_REDIS_PREFIX="hist$$:" \
  RUST_LOG=warn "$T/release/fieldcast-gateway" --auth none &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://$LISTEN/healthz" >/dev/null && break; sleep 0.2; done

END=$(psql "$PG_URL/$DB" -Atc "SELECT (extract(epoch FROM date_trunc('day', max(ts)))*1000)::bigint FROM locations WHERE device_id = 'dev-00042'")
DAY_FROM=$((END - 86400000)); MONTH_FROM=$((END - 31 * 86400000 + 86400000))
AT=$((END - 10 * 86400000 + 14 * 3600000 + 5 * 60000))   # 14:05 UTC, ten days back
B="http://$LISTEN/api"
echo "day track points: $(curl -fs "$B/devices/dev-00042/track?from=$DAY_FROM&to=$((DAY_FROM + 86400000))&limit=100000&format=csv" | wc -l)"
echo "month points: $(curl -fs "$B/devices/dev-00042/track?from=$MONTH_FROM&to=$((END + 86400000))&limit=100000&format=csv" | wc -l)"
echo "month trips: $(curl -fs "$B/devices/dev-00042/trips?from=$MONTH_FROM&to=$((END + 86400000))" | grep -o '"start"' | wc -l)"
echo "fleet at: $(curl -fs "$B/devices?at=$AT" | grep -o '"device"' | wc -l) devices"
echo "simplified month points: $(curl -fs "$B/devices/dev-00042/track?from=$MONTH_FROM&to=$((END + 86400000))&simplify=10&limit=100000&format=csv" | wc -l)"
# Wall time of each request as curl sees it (connect to last byte), after
# 3 warm-up runs: median and 95th percentile of RUNS.
measure() {
  local name=$1 url=$2 runs=${RUNS:-30}
  for _ in 1 2 3; do curl -fs -o /dev/null "$url"; done
  for _ in $(seq "$runs"); do curl -fs -o /dev/null -w '%{time_total}\n' "$url"; done |
    sort -n | awk -v name="$name" '{ t[NR] = $1 * 1000 } END {
      printf "| %s | %.1f ms | %.1f ms |\n", name, t[int((NR + 1) / 2)], t[int(NR * 0.95 + 0.5)] }'
}
{
  echo "| request | median | p95 |"
  echo "| --- | --- | --- |"
  measure 'day of track (1 device, json)' "$B/devices/dev-00042/track?from=$DAY_FROM&to=$((DAY_FROM + 86400000))&limit=100000"
  measure 'month of trips (1 device)' "$B/devices/dev-00042/trips?from=$MONTH_FROM&to=$((END + 86400000))"
  measure '?at= (whole fleet)' "$B/devices?at=$AT"
  measure 'month, simplify=10 (1 device)' "$B/devices/dev-00042/track?from=$MONTH_FROM&to=$((END + 86400000))&simplify=10&limit=100000"
  measure 'month, bucket=5m (1 device)' "$B/devices/dev-00042/track?from=$MONTH_FROM&to=$((END + 86400000))&bucket=5m&limit=100000"
} | tee "${OUT:-/tmp/hist100m.md}"
if [ "${KEEP:-1}" = 0 ]; then
  kill $GW; wait $GW 2>/dev/null || true
  psql "$PG_URL/postgres" -qc "DROP DATABASE $DB"
fi
