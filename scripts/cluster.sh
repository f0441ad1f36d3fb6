#!/usr/bin/env bash
# The whole scaled-out topology on this one machine, on loopback (issue
# #14, README "The cluster on one machine"):
#
#   fleet (fieldcast-sim, devices spread over the three MQTT listeners)
#     -> 3 NATS nodes (MQTT + JetStream, stream replicated 3 times)
#     -> 2 bridges (one durable JetStream consumer, shared)
#     -> Redis Cluster (3 primaries, 3 replicas) + PostgreSQL (the machine's)
#     -> 2 gateways (drain on SIGTERM) -> HAProxy (deploy/haproxy.cfg)
#     -> the live map at http://127.0.0.1:8080/
#
# Installs what is missing from the distribution's packages (nats-server,
# redis-server, haproxy, PostgreSQL), builds the release binaries, starts
# everything in a fresh working directory (.fieldcast/cluster, logs in
# its logs/), prints where to look, and on Ctrl-C/SIGTERM stops everything
# it started, newest first, and exits 0. If a process exits by itself the
# script says which and keeps the rest running: killing a node by hand to
# watch the others carry on is what this is for. Nothing of the machine's
# own Redis, Mosquitto or NATS is used.
#
# Env: CLUSTER_DIR (.fieldcast/cluster), FIELDCAST_DB (fieldcast_cluster),
# FLEET_DEVICES (300), FIELDCAST_JWT_SECRET (unset: gateways run with
# --auth none, loopback only). Ports, fixed so the README can name them:
#   HAProxy 8080 (map, API, /ws), 8404 (stats)
#   gateways 8081 8082        bridges' admin 9464 9465
#   NATS client 4231-4233, cluster 6231-6233, MQTT 1891-1893, monitor 8231-8233
#   Redis Cluster 7001-7006
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services cluster

LB=8080 STATS=8404 GATEWAYS=(8081 8082) ADMINS=(9464 9465)
NATS_CLIENT=(4231 4232 4233) NATS_ROUTE=(6231 6232 6233) NATS_MQTT=(1891 1892 1893)
NATS_MON=(8231 8232 8233) REDIS=(7001 7002 7003 7004 7005 7006)
busy=()
for p in $LB $STATS "${GATEWAYS[@]}" "${ADMINS[@]}" "${NATS_CLIENT[@]}" "${NATS_ROUTE[@]}" \
  "${NATS_MQTT[@]}" "${NATS_MON[@]}" "${REDIS[@]}"; do
  fc_port_open "$p" && busy+=("$p")
done
[ "${#busy[@]}" -eq 0 ] || fc_die "ports in use: ${busy[*]} (another cluster.sh, or something else; stop it first)"

DB="${FIELDCAST_DB:-fieldcast_cluster}"
fc_pg_create_db "$DB"
export FIELDCAST_DATABASE_URL="${FIELDCAST_DATABASE_URL:-$(fc_pg_url "$DB")}"
export RUST_LOG="${RUST_LOG:-info}"
T="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim

W="${CLUSTER_DIR:-.fieldcast/cluster}"
rm -rf "$W"
mkdir -p "$W/logs"
W=$(cd "$W" && pwd)

pids=() names=() stopping=0
stop() {
  trap - INT TERM HUP EXIT
  stopping=1
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap 'stop; echo "stopped; logs in $W/logs" >&2; exit 0' INT TERM HUP
trap stop EXIT
# start NAME CMD...: runs CMD in the background, its output in logs/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$W/logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}
# wait_for WHAT CMD...: retries CMD for up to 60 s.
wait_for() {
  local what=$1 _
  shift
  for _ in $(seq 1 300); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fc_die "$what did not come up within 60 s (logs in $W/logs)"
}

# -- NATS: three nodes, each with MQTT and JetStream, routes to the others.
for i in 0 1 2; do
  n=n$((i + 1)) routes=()
  for j in 0 1 2; do
    [ "$j" = "$i" ] || routes+=("nats-route://127.0.0.1:${NATS_ROUTE[j]}")
  done
  mkdir -p "$W/nats/$n"
  cat >"$W/nats/$n.conf" <<EOF
server_name: $n
listen: 127.0.0.1:${NATS_CLIENT[i]}
http: 127.0.0.1:${NATS_MON[i]}
jetstream { store_dir: "$W/nats/$n" }
cluster {
  name: fieldcast
  listen: 127.0.0.1:${NATS_ROUTE[i]}
  routes: [$(IFS=,; echo "${routes[*]}")]
}
# Its own MQTT streams (sessions, QoS 1) replicated like ours (docs/nats.md).
mqtt { listen: 127.0.0.1:${NATS_MQTT[i]}, stream_replicas: 3 }
EOF
  start "nats-$n" nats-server -c "$W/nats/$n.conf"
done
for i in 0 1 2; do
  wait_for "NATS node n$((i + 1))" curl -fsS "http://127.0.0.1:${NATS_MON[i]}/healthz"
done

# -- Redis Cluster: three primaries, a replica each; nothing on disk.
nodes=()
for p in "${REDIS[@]}"; do
  mkdir -p "$W/redis/$p"
  start "redis-$p" redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$W/redis/$p/nodes.conf" --cluster-node-timeout 5000 \
    --save "" --appendonly no --dir "$W/redis/$p"
  nodes+=("127.0.0.1:$p")
done
for p in "${REDIS[@]}"; do wait_for "redis $p" redis-cli -p "$p" ping; done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$W/logs/redis-create.log" 2>&1 ||
  fc_die "redis-cli --cluster create failed: $(tail -n 5 "$W/logs/redis-create.log")"
cluster_ok() {
  local p
  for p in "${REDIS[@]}"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || return 1; done
}
wait_for "the Redis Cluster" cluster_ok
url="redis-cluster://${nodes[0]}" sep="?"
for n in "${nodes[@]:1}"; do url="$url${sep}node=$n" sep="&"; done
export FIELDCAST_REDIS_URL="$url"

# -- Two bridges on the shared JetStream consumer.
nats_urls=()
for p in "${NATS_CLIENT[@]}"; do nats_urls+=("nats://127.0.0.1:$p"); done
export FIELDCAST_NATS_URL
FIELDCAST_NATS_URL=$(IFS=,; echo "${nats_urls[*]}")
for i in 0 1; do
  FIELDCAST_ADMIN_ADDR="127.0.0.1:${ADMINS[i]}" FIELDCAST_SPOOL_DIR="$W/spool-bridge$((i + 1))" \
    start "bridge$((i + 1))" "$T/fieldcast-bridge"
done
for i in 0 1; do wait_for "bridge $((i + 1))" curl -fsS "http://127.0.0.1:${ADMINS[i]}/readyz"; done

# -- Two gateways, draining on SIGTERM (README "Gateways behind HAProxy").
auth=()
[ -n "${FIELDCAST_JWT_SECRET:-}" ] || auth=(--auth none)
for i in 0 1; do
  FIELDCAST_LISTEN="127.0.0.1:${GATEWAYS[i]}" FIELDCAST_DRAIN_GRACE=5s \
    start "gateway$((i + 1))" "$T/fieldcast-gateway" "${auth[@]}"
done
for i in 0 1; do wait_for "gateway $((i + 1))" curl -fsS "http://127.0.0.1:${GATEWAYS[i]}/readyz"; done

# -- HAProxy with the shipped file: its global section swapped for one
# that runs unprivileged in the foreground, its two binds and its first
# server line (one per gateway) filled in.
awk -v lb="$LB" -v stats="$STATS" -v sock="$W/haproxy.sock" \
  -v gws="${GATEWAYS[*]}" '
  BEGIN { split(gws, gw, " "); binds = 0 }
  /^global/ { print "global"; print "\tstats socket " sock " mode 600 level admin"; skip = 1; next }
  /^[^ \t#]/ { skip = 0 }
  skip { next }
  /^[ \t]+bind / { binds++; print "\tbind 127.0.0.1:" (binds == 1 ? lb : stats); next }
  /^[ \t]+server / {
    if (!served) {
      served = 1
      for (i = 1; i in gw; i++) print "\tserver gw" i " 127.0.0.1:" gw[i]
    }
    next
  }
  { print }
' deploy/haproxy.cfg >"$W/haproxy.cfg"
haproxy -c -q -f "$W/haproxy.cfg" || fc_die "the rendered $W/haproxy.cfg does not check"
start haproxy haproxy -db -f "$W/haproxy.cfg"
wait_for "HAProxy" curl -fsS "http://127.0.0.1:$LB/readyz"

# -- The fleet, its devices spread over the three MQTT listeners.
mqtt_urls=()
for p in "${NATS_MQTT[@]}"; do mqtt_urls+=("mqtt://127.0.0.1:$p"); done
FIELDCAST_MQTT_URL=$(IFS=,; echo "${mqtt_urls[*]}") \
  start fleet "$T/fieldcast-sim" fleet --devices "${FLEET_DEVICES:-300}"

cat <<EOF

live map (through HAProxy):  http://127.0.0.1:$LB/
HAProxy stats:               http://127.0.0.1:$STATS/stats
bridges:                     http://127.0.0.1:${ADMINS[0]}/metrics  http://127.0.0.1:${ADMINS[1]}/metrics
gateways:                    http://127.0.0.1:${GATEWAYS[0]}/readyz  http://127.0.0.1:${GATEWAYS[1]}/readyz
NATS:                        http://127.0.0.1:${NATS_MON[0]}/jsz?streams=1  (and :${NATS_MON[1]}, :${NATS_MON[2]})
Redis Cluster:               redis-cli -p ${REDIS[0]} cluster nodes
history:                     $(fc_psql_hint "$DB") -c 'SELECT count(*) FROM locations'
logs:                        $W/logs/
pids:
EOF
for i in "${!pids[@]}"; do printf '  %-14s %s\n' "${names[i]}" "${pids[i]}"; done
cat <<EOF
Kill any one of them (kill -9 <pid>) and watch the rest carry on; Ctrl-C stops everything.

EOF

# Report each process that exits by itself; keep the others running.
reported=()
while [ "$stopping" = 0 ]; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null && [[ " ${reported[*]} " != *" $i "* ]]; then
      reported+=("$i")
      fc_log "${names[i]} (pid ${pids[i]}) exited; the end of its log:"
      tail -n 5 "$W/logs/${names[i]}.log" >&2 || true
    fi
  done
  sleep 1
done
