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

T="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim
pids=()
cleanup() {
  # Newest first: the fleet says goodbye before the bridge stops.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$T"/fieldcast-bridge & pids+=($!)
# Without FIELDCAST_JWT_SECRET the demo gateway needs no token (loopback only).
if [ -z "${FIELDCAST_JWT_SECRET:-}" ]; then
  "$T"/fieldcast-gateway --auth none & pids+=($!)
else
  "$T"/fieldcast-gateway & pids+=($!)
fi
"$T"/fieldcast-sim fleet --devices "${FLEET_DEVICES:-200}" & pids+=($!)
echo "live map:       http://${FIELDCAST_LISTEN:-127.0.0.1:8080}/"
echo "bridge metrics: http://${FIELDCAST_ADMIN_ADDR:-127.0.0.1:9464}/metrics"
echo "hot state:      redis-cli --scan --pattern 'fieldcast:dev:*' | head"
echo "history:        psql -h 127.0.0.1 -U postgres $DB -c 'SELECT count(*) FROM locations'"
wait -n "${pids[@]}"
