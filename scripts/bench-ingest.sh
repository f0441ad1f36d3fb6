#!/usr/bin/env bash
# Ingest benchmark: a simulated fleet -> a private Mosquitto -> the bridge
# -> Redis + PostgreSQL, on this machine, beside its floor (the same fleet
# -> the same broker -> a plain mosquitto_sub). Prints messages/s accepted
# by the bridge and written to Redis, and the bridge's CPU and peak RSS.
#
#   DEVICES=20000 CONNS=200 RATE=1 SECS=30 scripts/bench-ingest.sh
#
# Uses its own broker port, database and Redis prefix; removes them after.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-20000}; CONNS=${CONNS:-200}; RATE=${RATE:-1}; SECS=${SECS:-30}
PORT=${PORT:-18830}; ADMIN=127.0.0.1:${ADMIN_PORT:-19464}
DB=fieldcast_bench; PREFIX="bench$$:"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services
T="${CARGO_TARGET_DIR:-target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p fieldcast-bridge -p fieldcast-sim
. scripts/bench-world.sh
/usr/sbin/mosquitto -c "$tmp/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
sim() {
  "$T"/release/fieldcast-sim fleet --mqtt-url "mqtt://127.0.0.1:$PORT" --devices "$DEVICES" \
    --connections "$CONNS" --rate "$RATE" --event-every 60 --duration "${SECS}s" --prefix "b$$" 2>/dev/null | tail -n 3
}
metric() { curl -s "http://$ADMIN/metrics" | awk -v s="$1" '$1 == s { print $2 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

echo "== floor: fleet -> mosquitto -> mosquitto_sub ($DEVICES devices x $RATE/s over $CONNS connections, ${SECS}s)"
timeout $((SECS + 5)) mosquitto_sub -h 127.0.0.1 -p "$PORT" -t 'devices/#' -F '%t' > "$tmp/floor.txt" 2>/dev/null &
subpid=$!
sleep 0.5
sim
wait $subpid || true
floor=$(wc -l < "$tmp/floor.txt")
echo "floor: $floor messages received, $((floor / SECS)) msg/s"

echo "== bridge: fleet -> mosquitto -> fieldcast-bridge -> Redis + PostgreSQL"
fc_psql -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
fc_psql -qc "CREATE DATABASE $DB" >/dev/null
FIELDCAST_MQTT_URL="mqtt://127.0.0.1:$PORT" FIELDCAST_MQTT_CLIENT_ID="bench-bridge-$$" \
FIELDCAST_REDIS_PREFIX="$PREFIX" FIELDCAST_DATABASE_URL="$(fc_pg_url "$DB")" \
FIELDCAST_ADMIN_ADDR="$ADMIN" FIELDCAST_SPOOL_DIR="$tmp/spool" RUST_LOG=warn \
  "$T"/release/fieldcast-bridge & bridge=$!; pids+=("$bridge")
for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.2; done
accepted() { curl -s "http://$ADMIN/metrics" | awk '/^fieldcast_bridge_messages_total/ { s += $2 } END { print s }'; }
m0=$(accepted); r0=$(metric fieldcast_bridge_redis_messages_total)
redis_cpu() { redis-cli info cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { print s }'; }
c0=$(cpu_ticks $bridge); rc0=$(redis_cpu); t0=$(date +%s.%N)
sim
t1=$(date +%s.%N); sleep 1
m1=$(accepted); r1=$(metric fieldcast_bridge_redis_messages_total)
c1=$(cpu_ticks $bridge); rc1=$(redis_cpu)
coal=$(metric fieldcast_bridge_coalesced_total); rej=$(curl -s "http://$ADMIN/metrics" | awk '/^fieldcast_bridge_rejected_total/ { s += $2 } END { print s }')
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$bridge/status")
hz=$(getconf CLK_TCK)
awk -v m0="$m0" -v m1="$m1" -v r0="$r0" -v r1="$r1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" \
    -v hz="$hz" -v rc0="$rc0" -v rc1="$rc1" -v hwm="$hwm" -v coal="$coal" -v rej="$rej" -v floor="$floor" -v secs="$SECS" 'BEGIN {
  el = t1 - t0;
  # Both sides count every message of the same fleet run (locations,
  # status, events) over the same nominal duration.
  printf "accepted by bridge: %d messages (%.0f msg/s)   floor: %d messages (%.0f msg/s)\n", m1 - m0, (m1 - m0) / secs, floor, floor / secs;
  printf "written to Redis:   %d (%.0f msg/s; coalesced %d, rejected %d)\n", r1 - r0, (r1 - r0) / secs, coal, rej;
  printf "bridge CPU: %.2f s over %.1f s (%.0f%% of one core), peak RSS %.1f MiB\n", (c1 - c0) / hz, el, 100 * (c1 - c0) / hz / el, hwm / 1024;
  printf "redis CPU:  %.2f s (%.0f%% of one core; every client of this Redis counts)\n", rc1 - rc0, 100 * (rc1 - rc0) / el;
}'
sleep 2
echo "history rows: $(psql -X -w -d "$(fc_pg_url "$DB")" -qAtc 'SELECT count(*) FROM locations') (flushed every 30 s; the rest on SIGTERM)"
