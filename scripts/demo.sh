#!/usr/bin/env bash
# Starts Fieldcast on this machine with a simulated fleet: the services
# (installed and started if missing), the database, the bridge, the gateway
# when built, and `fieldcast-sim fleet`. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh

DB="${FIELDCAST_DB:-fieldcast}"
if ! psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$DB\""
fi
export FIELDCAST_DATABASE_URL="${FIELDCAST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$DB}"
export FIELDCAST_SPOOL_DIR="${FIELDCAST_SPOOL_DIR:-.fieldcast/spool}"
export RUST_LOG="${RUST_LOG:-info}"

cargo build --release --workspace --bins
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

target/release/fieldcast-bridge & pids+=($!)
if [ -x target/release/fieldcast-gateway ] && target/release/fieldcast-gateway --help >/dev/null 2>&1; then
  export FIELDCAST_JWT_SECRET="${FIELDCAST_JWT_SECRET:-}"
  if [ -z "$FIELDCAST_JWT_SECRET" ]; then
    target/release/fieldcast-gateway --auth none & pids+=($!)
  else
    target/release/fieldcast-gateway & pids+=($!)
  fi
  echo "live map: http://${FIELDCAST_LISTEN:-127.0.0.1:8080}/"
fi
target/release/fieldcast-sim fleet --devices "${FLEET_DEVICES:-200}" & pids+=($!)
echo "bridge metrics: http://${FIELDCAST_ADMIN_ADDR:-127.0.0.1:9464}/metrics"
echo "hot state:      redis-cli --scan --pattern 'fieldcast:dev:*' | head"
echo "history:        psql -h 127.0.0.1 -U postgres $DB -c 'SELECT count(*) FROM locations'"
wait -n "${pids[@]}"
