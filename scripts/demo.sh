#!/usr/bin/env bash
# Starts Fieldcast on this machine with a simulated fleet: checks Rust,
# installs what is missing and starts the services (scripts/lib.sh), creates
# the database, builds the release binaries, runs the bridge, the gateway
# and `fieldcast-sim fleet`, and prints the map's address once the gateway
# answers. Ctrl-C (SIGINT) or SIGTERM stops everything it started, newest
# first, and exits 0; if one of the three exits by itself, the rest are
# stopped and it exits 1.
#
# Env: FIELDCAST_DB (fieldcast), FLEET_DEVICES (200), FIELDCAST_LISTEN
# (127.0.0.1:8080), FIELDCAST_ADMIN_ADDR (127.0.0.1:9464), FIELDCAST_JWT_SECRET
# (unset: the gateway runs with --auth none, loopback only), and every other
# FIELDCAST_* variable of the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services

DB="${FIELDCAST_DB:-fieldcast}"
fc_pg_create_db "$DB"
export FIELDCAST_DATABASE_URL="${FIELDCAST_DATABASE_URL:-$(fc_pg_url "$DB")}"
export FIELDCAST_SPOOL_DIR="${FIELDCAST_SPOOL_DIR:-.fieldcast/spool}"
export RUST_LOG="${RUST_LOG:-info}"
LISTEN="${FIELDCAST_LISTEN:-127.0.0.1:8080}"
ADMIN="${FIELDCAST_ADMIN_ADDR:-127.0.0.1:9464}"

T="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim

pids=()
names=()
stopping=0
# Newest first: the fleet says goodbye before the bridge stops. Each is
# waited for, so nothing is left running when the script ends.
stop() {
  trap - INT TERM HUP EXIT
  stopping=1
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap 'stop; echo "stopped." >&2; exit 0' INT TERM HUP
trap stop EXIT
start() {
  local name=$1
  shift
  "$@" &
  pids+=($!)
  names+=("$name")
}

start bridge "$T"/fieldcast-bridge
# One gateway and no load balancer: nothing to drain from (README,
# "Gateways behind HAProxy"), so it stops at the first signal.
export FIELDCAST_DRAIN_GRACE=${FIELDCAST_DRAIN_GRACE:-0s}
# Without FIELDCAST_JWT_SECRET the demo gateway needs no token (loopback only).
if [ -z "${FIELDCAST_JWT_SECRET:-}" ]; then
  start gateway "$T"/fieldcast-gateway --auth none
else
  start gateway "$T"/fieldcast-gateway
fi
start fleet "$T"/fieldcast-sim fleet --devices "${FLEET_DEVICES:-200}"

# Dead or alive: the name of the first of ours that has exited, if any.
exited() {
  local i
  for i in "${!pids[@]}"; do
    kill -0 "${pids[i]}" 2>/dev/null || {
      echo "${names[i]}"
      return 0
    }
  done
  return 1
}
ready=0
for _ in $(seq 1 300); do
  if curl -fsS -o /dev/null "http://$LISTEN/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  exited >/dev/null && break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  gone=$(exited || true)
  fc_die "the gateway did not answer on http://$LISTEN/readyz within 60 s${gone:+ ($gone exited)}"
fi

# A first database gets two geofences and an overspeed rule where the
# simulated fleet drives (central London), so the map shows fences and
# the feed their transitions and alerts; FIELDCAST_DEMO_FENCES=0 skips it.
# The bridge has made the tables once it is ready.
if [ "${FIELDCAST_DEMO_FENCES:-1}" = 1 ]; then
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "http://$ADMIN/readyz" 2>/dev/null && break
    sleep 0.2
  done
  psql -X -w -q -v ON_ERROR_STOP=1 -d "$FIELDCAST_DATABASE_URL" <<'SQL' || echo "demo fences not added" >&2
INSERT INTO geofences (feature)
SELECT f::jsonb FROM (VALUES
  ('{"type":"Feature","properties":{"name":"City","severity":"info"},"geometry":{"type":"Polygon","coordinates":[[[-0.115,51.505],[-0.07,51.505],[-0.07,51.525],[-0.115,51.525],[-0.115,51.505]]]}}'),
  ('{"type":"Feature","properties":{"name":"Depot","radius":1500,"severity":"warning"},"geometry":{"type":"Point","coordinates":[-0.1278,51.5074]}}')
) AS v(f)
WHERE NOT EXISTS (SELECT 1 FROM geofences);
INSERT INTO alert_rules (rule)
SELECT '{"kind":"overspeed","speed":22,"for":"10s","severity":"warning"}'::jsonb
WHERE NOT EXISTS (SELECT 1 FROM alert_rules);
SQL
fi

cat <<EOF

live map:       http://$LISTEN/
bridge metrics: http://$ADMIN/metrics
hot state:      redis-cli --scan --pattern 'fieldcast:{*}:dev:*' | head
history:        $(fc_psql_hint "$DB") -c 'SELECT count(*) FROM locations'
Ctrl-C stops the fleet, the gateway and the bridge (the services keep running).

EOF

set +e
wait -n "${pids[@]}"
rc=$?
set -e
[ "$stopping" = 1 ] && exit 0
gone=$(exited || echo "one of them")
echo "$gone exited (status $rc); stopping the rest" >&2
stop
exit 1
