# shellcheck shell=bash
# Sourced by the bench scripts (bench-e2e.sh, bench-ingest.sh): a private
# Mosquitto config on $PORT in a temp dir, and on exit a cleanup that stops
# what the script started (the `pids` array, newest first, each to its end:
# a bridge drains before its broker goes) and removes the database $DB, the
# Redis keys under $PREFIX and the temp dir. Needs scripts/lib.sh sourced and
# fc_pg_resolve (fc_setup) done.
tmp=$(mktemp -d)
pids=()
cat > "$tmp/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 100000
set_tcp_nodelay true
persistence false
CONF
bench_cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  fc_psql -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "${PREFIX}*" | xargs -r -n 500 redis-cli del >/dev/null
  rm -rf "$tmp"
}
# INT/TERM exit, and the EXIT trap cleans up once.
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
