#!/usr/bin/env bash
# End-to-end benchmark (docs/benchmarks.md): a private Mosquitto, one
# fieldcast-bridge and GATEWAYS fieldcast-gateway instances from
# target/$PROFILE, then `fieldcast-sim bench` against them with the flags
# given here, beside its floor (the same load to plain MQTT subscribers,
# run first, before the bridge and gateway start).
#
#   scripts/bench-e2e.sh --label a --devices 600 --rate 2 --clients 120
#   GATEWAYS=2 FLOOR=0 scripts/bench-e2e.sh --label d --devices 2000 --rate 10 --clients 50 --watch 100
#
# Env: PROFILE (release), GATEWAYS (1), FLOOR (1: run the floor first),
# ROUNDS (1: bench runs against the same gateways, RSS printed after each),
# NO_BUILD (0), RSS_EVERY (seconds between RSS samples of bridge and
# gateways into the results CSV; 0 = off), OUT (target/bench), and for a
# second run beside a first: PORT (18831), ADMIN_PORT (19465), GW_PORT
# (18090, 18091, ...), DB (fieldcast_bench_e2e), REDIS_CLUSTER (unset:
# the machine's Redis; N: a private Redis Cluster of N primaries on ports
# 17101.., every node's CPU watched), REDIS_PRIVATE (1: a private single
# Redis on port 17100 instead of the machine's, so nothing else running
# counts in its CPU), BRIDGES (1; N > 1: N bridges in one Mosquitto shared
# group, admin ports ADMIN_PORT, ADMIN_PORT+1, ...), BROKER (mosquitto;
# nats: a private single nats-server with JetStream, its MQTT listener on
# PORT for the fleet and the floor's subscribers, the bridges reading the
# stream through FIELDCAST_NATS_URL, client port NATS_PORT (14222);
# nats-cluster: three such nodes in a cluster, every stream R3, MQTT on
# PORT..PORT+2 with the fleet spread over them, client ports
# NATS_PORT..+2, routes NATS_PORT+100..+102, monitoring NATS_PORT+200..,
# every node's CPU watched), FENCES (0; N: N polygon geofences loaded
# into the bridges before the run, see below), SVC_THREADS (unset: tokio's
# default, a worker thread per core; N: TOKIO_WORKER_THREADS=N for the
# bridges and gateways only, not the load generator). Each Redis node's
# `INFO commandstats` over the gateway run goes to $base-redis-<port>.txt
# (where its CPU went, command by command). PERF (unset; N: `perf record
# -e cpu-clock -g` of the first bridge, the first gateway and the Redis
# for N seconds, starting PERF_DELAY (20) seconds into the gateway run,
# into $base-<bridge|gateway|redis>.perf; `perf report -i` reads them).
# The table goes
# to stdout; each run's JSON line is appended to $OUT/results.jsonl.
# Uses its own broker port, database, Redis prefix, spool and JWT secret;
# removes them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
svc_env=()
if [ -n "${SVC_THREADS:-}" ]; then svc_env=(TOKIO_WORKER_THREADS="$SVC_THREADS"); fi
PROFILE=${PROFILE:-release}; GATEWAYS=${GATEWAYS:-1}; FLOOR=${FLOOR:-1}
RSS_EVERY=${RSS_EVERY:-0}; OUT=${OUT:-target/bench}
PORT=${PORT:-18831}; ADMIN_PORT=${ADMIN_PORT:-19465}; GW_PORT=${GW_PORT:-18090}
BRIDGES=${BRIDGES:-1}
DB=${DB:-fieldcast_bench_e2e}; PREFIX="benche2e$$:"
T="${CARGO_TARGET_DIR:-target}/$PROFILE"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services
if [ "${NO_BUILD:-0}" != 1 ]; then
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  cargo build "${flag[@]}" -q -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim
fi
mkdir -p "$OUT"
. scripts/bench-world.sh

broker_pids=()
if [ "${BROKER:-mosquitto}" = nats ]; then
  NATS_PORT=${NATS_PORT:-14222}; mkdir -p "$tmp/js"
  cat > "$tmp/nats.conf" <<CONF
server_name: bench
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$tmp/js" }
mqtt { listen: 127.0.0.1:$PORT }
CONF
  nats-server -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 & broker=$!; pids+=("$broker")
  export FIELDCAST_NATS_URL="nats://127.0.0.1:$NATS_PORT"
  for _ in $(seq 1 50); do fc_port_open "$PORT" && break; sleep 0.1; done
elif [ "${BROKER:-mosquitto}" = nats-cluster ]; then
  # Three nodes as scripts/cluster.sh runs them: client ports NATS_PORT..+2,
  # routes NATS_PORT+100.., MQTT listeners PORT..PORT+2, every stream R3.
  NATS_PORT=${NATS_PORT:-14222}; routes=""; mqtt_urls=""
  for i in 0 1 2; do routes="$routes${routes:+, }nats-route://127.0.0.1:$((NATS_PORT + 100 + i))"; done
  for i in 0 1 2; do
    mkdir -p "$tmp/js-$i"
    cat > "$tmp/nats-$i.conf" <<CONF
server_name: bench-$i
listen: 127.0.0.1:$((NATS_PORT + i))
http: 127.0.0.1:$((NATS_PORT + 200 + i))
jetstream { store_dir: "$tmp/js-$i" }
cluster { name: bench, listen: 127.0.0.1:$((NATS_PORT + 100 + i)), routes: [ $routes ] }
mqtt { listen: 127.0.0.1:$((PORT + i)), stream_replicas: 3 }
CONF
    nats-server -c "$tmp/nats-$i.conf" >"$tmp/nats-$i.log" 2>&1 & broker_pids+=($!); pids+=($!)
    mqtt_urls="$mqtt_urls${mqtt_urls:+,}mqtt://127.0.0.1:$((PORT + i))"
  done
  broker=${broker_pids[0]}
  export FIELDCAST_NATS_URL="nats://127.0.0.1:$NATS_PORT,nats://127.0.0.1:$((NATS_PORT + 1)),nats://127.0.0.1:$((NATS_PORT + 2))"
  for i in 0 1 2; do
    for _ in $(seq 1 100); do fc_port_open $((PORT + i)) && break; sleep 0.1; done
  done
  # JetStream needs its meta leader before the first stream.
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$((NATS_PORT + 200))/jsz" 2>/dev/null | grep -q '"leader"' && break; sleep 0.2
  done
else
  /usr/sbin/mosquitto -c "$tmp/mosquitto.conf" >/dev/null 2>&1 & broker=$!; pids+=("$broker")
fi
export FIELDCAST_MQTT_URL="${mqtt_urls:-mqtt://127.0.0.1:$PORT}"
broker_watch=(); for p in "${broker_pids[@]:-$broker}"; do broker_watch+=(--watch-pid "$p"); done
sleep 0.5
label=$(printf '%s\n' "$@" | awk 'f { print; exit } $0 == "--label" { f = 1 }')
stamp=$(date -u +%Y%m%dT%H%M%SZ); base="$OUT/${label:-bench}-$stamp"
run() {
  "$T/fieldcast-sim" bench "$@" | tee "$tmp/out"
  tail -n 1 "$tmp/out" >> "$OUT/results.jsonl"
}
# The floor first, with nothing else running: fleet -> broker -> plain subscribers.
if [ "$FLOOR" = 1 ]; then
  echo "== floor" >&2
  run --floor "${broker_watch[@]}" --prefix "f$$" "$@" > "$base-floor.txt"
  cat "$base-floor.txt"
fi

fc_psql -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
fc_psql -qc "CREATE DATABASE $DB" >/dev/null
export FIELDCAST_REDIS_PREFIX="$PREFIX"
cluster_pids=(); redis_ports=(6379)
if [ "${REDIS_PRIVATE:-0}" = 1 ] && [ -z "${REDIS_CLUSTER:-}" ]; then
  d="$tmp/redis-17100"; mkdir -p "$d"
  redis-server --port 17100 --bind 127.0.0.1 --save "" --appendonly no --dir "$d" \
    --logfile "$d/redis.log" & cluster_pids+=($!); pids+=($!)
  for _ in $(seq 1 50); do redis-cli -p 17100 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_ports=(17100)
  export FIELDCAST_REDIS_URL="redis://127.0.0.1:17100"
  echo "private redis $FIELDCAST_REDIS_URL (pid ${cluster_pids[*]})" >&2
fi
if [ -n "${REDIS_CLUSTER:-}" ]; then
  # A private cluster, no persistence, as loopback measurements want.
  nodes=()
  for i in $(seq 1 "$REDIS_CLUSTER"); do
    p=$((17100 + i)); d="$tmp/redis-$p"; mkdir -p "$d"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 5000 \
      --cluster-require-full-coverage no --save "" --appendonly no --dir "$d" \
      --logfile "$d/redis.log" & cluster_pids+=($!); pids+=($!); nodes+=("127.0.0.1:$p")
  done
  for n in "${nodes[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "${n#*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >/dev/null
  redis_ports=(); for n in "${nodes[@]}"; do redis_ports+=("${n#*:}"); done
  for _ in $(seq 1 100); do
    ok=1
    for n in "${nodes[@]}"; do
      redis-cli -p "${n#*:}" cluster info | grep -q 'cluster_state:ok' || ok=0
    done
    [ $ok = 1 ] && break; sleep 0.2
  done
  url="redis-cluster://${nodes[0]}"; sep="?"
  for n in "${nodes[@]:1}"; do url="$url${sep}node=$n"; sep="&"; done
  export FIELDCAST_REDIS_URL="$url"
  echo "redis cluster $url (pids ${cluster_pids[*]})" >&2
fi
FIELDCAST_DATABASE_URL=$(fc_pg_url "$DB"); export FIELDCAST_DATABASE_URL
export FIELDCAST_JWT_SECRET="bench-$$-$RANDOM$RANDOM"
export RUST_LOG=${RUST_LOG:-warn}

watch=(); bridge_pids=()
# Several bridges: a shared group on Mosquitto; on NATS they share the
# stream's durable consumer anyway.
[ "$BRIDGES" -gt 1 ] && [ "${BROKER:-mosquitto}" = mosquitto ] && export FIELDCAST_MQTT_SHARED_GROUP="bench$$"
for i in $(seq 0 $((BRIDGES - 1))); do
  admin=127.0.0.1:$((ADMIN_PORT + i))
  FIELDCAST_MQTT_CLIENT_ID="bench-bridge-$$-$i" FIELDCAST_ADMIN_ADDR="$admin" \
    FIELDCAST_SPOOL_DIR="$tmp/spool-$i" env "${svc_env[@]}" "$T/fieldcast-bridge" & p=$!; pids+=("$p"); bridge_pids+=("$p")
  for _ in $(seq 1 150); do curl -sf "http://$admin/readyz" >/dev/null && break; sleep 0.2; done
  watch+=(--watch-pid "$p")
done
bridge=${bridge_pids[0]}
# FENCES=N: N star-shaped polygon geofences of 50 vertices, 60 m to 600 m
# across (log-uniform), centred at random within 50 km of the fleet's
# default centre (London): ~1 % of them where the fleet drives. Written as
# the API writes them; the run starts once every bridge holds them.
if [ "${FENCES:-0}" -gt 0 ]; then
  psql -X -w -q -v ON_ERROR_STOP=1 -d "$FIELDCAST_DATABASE_URL" <<SQL
INSERT INTO geofences (feature)
SELECT jsonb_build_object('type', 'Feature',
         'properties', jsonb_build_object('name', 'bench-' || f.i),
         'geometry', jsonb_build_object('type', 'Polygon', 'coordinates', jsonb_build_array(
           (SELECT jsonb_agg(jsonb_build_array(
                     round((f.lon + f.r * (CASE WHEN k % 2 = 0 THEN 1 ELSE 0.6 END)
                            * cos(2 * pi() * (k % 50) / 50) / cos(radians(f.lat)))::numeric, 7),
                     round((f.lat + f.r * (CASE WHEN k % 2 = 0 THEN 1 ELSE 0.6 END)
                            * sin(2 * pi() * (k % 50) / 50))::numeric, 7)) ORDER BY k)
              FROM generate_series(0, 50) AS k))))
  FROM (SELECT i,
               51.5074 + (random() - 0.5) * 0.9 AS lat,
               -0.1278 + (random() - 0.5) * 1.44 AS lon,
               exp(ln(30) + random() * ln(10)) / 111320 AS r
          FROM generate_series(1, ${FENCES}) AS i) AS f;
SQL
  for i in $(seq 0 $((BRIDGES - 1))); do
    admin=127.0.0.1:$((ADMIN_PORT + i))
    for _ in $(seq 1 300); do
      n=$(curl -sf "http://$admin/metrics" | awk '/^fieldcast_bridge_geofences / { print $2 }')
      [ "${n:-0}" = "$FENCES" ] && break; sleep 0.2
    done
    echo "bridge $admin holds ${n:-0} geofences" >&2
  done
fi
# Redis's own CPU beside the services' (the shared Redis of the machine,
# which nothing else should use during a bench, or the cluster's nodes).
if [ ${#cluster_pids[@]} -gt 0 ]; then
  for p in "${cluster_pids[@]}"; do watch+=(--watch-pid "$p"); done
else
  redis_pid=$(redis-cli info server 2>/dev/null | awk -F: '/^process_id:/ { print $2 }' | tr -d '\r')
  [ -n "$redis_pid" ] && watch+=(--watch-pid "$redis_pid")
fi
gateways=(); gw_pids=()
for i in $(seq 0 $((GATEWAYS - 1))); do
  addr=127.0.0.1:$((GW_PORT + i))
  # No load balancer to drain from (README, "Gateways behind HAProxy").
  FIELDCAST_DRAIN_GRACE=0s FIELDCAST_LISTEN="$addr" env "${svc_env[@]}" "$T/fieldcast-gateway" & p=$!; pids+=("$p"); gw_pids+=("$p")
  for _ in $(seq 1 150); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.2; done
  gateways+=(--gateway "ws://$addr/ws"); watch+=(--watch-pid "$p")
done
echo "broker pid $broker, bridge pids ${bridge_pids[*]}, gateway pids ${gw_pids[*]}" >&2
for p in "${gw_pids[@]}"; do
  echo "gateway pid $p RSS before any client: $(awk '/VmRSS/ { print $2 }' "/proc/$p/status") KiB" >&2
done

if [ "$RSS_EVERY" != 0 ]; then
  (echo "unix_s,bridge_rss_kib$(printf ',gateway%s_rss_kib' "${!gw_pids[@]}")"
   while sleep "$RSS_EVERY"; do
     row="$(date +%s),$(awk '/VmRSS/ { print $2 }' "/proc/$bridge/status")"
     for p in "${gw_pids[@]}"; do row="$row,$(awk '/VmRSS/ { print $2 }' "/proc/$p/status")"; done
     echo "$row"
   done) > "$base-rss.csv" 2>/dev/null & pids+=($!)
fi

echo "== gateway" >&2
# ROUNDS > 1 runs the bench again against the same bridge and gateways
# (every client connects and leaves each round) and prints the gateways'
# RSS after each: memory over connection churn.
for round in $(seq 1 "${ROUNDS:-1}"); do
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  if [ -n "${PERF:-}" ]; then
    redis_main=${cluster_pids[0]:-${redis_pid:-}}
    (sleep "${PERF_DELAY:-20}"
     for w in "bridge:$bridge" "gateway:${gw_pids[0]}" "redis:$redis_main"; do
       [ -n "${w#*:}" ] || continue
       perf record -q -e cpu-clock -F 999 -g -p "${w#*:}" -o "$base-${w%%:*}.perf" -- sleep "$PERF" 2>/dev/null &
     done
     wait) & pids+=($!)
  fi
  run "${gateways[@]}" "${watch[@]}" "${broker_watch[@]}" --prefix "g$$" "$@" > "$base.txt"
  cat "$base.txt"
  for p in "${redis_ports[@]}"; do
    redis-cli -p "$p" info commandstats | tr -d '\r' > "$base-redis-$p.txt"
  done
  sleep 1
  for p in "${gw_pids[@]}"; do
    echo "round $round: gateway pid $p RSS after its clients left: $(awk '/VmRSS/ { print $2 }' "/proc/$p/status") KiB" >&2
  done
done
