#!/usr/bin/env bash
# Browser tests of the map page (tests/browser/): headless Chromium driven by
# Playwright against a PRIVATE set of real services, then cleans up.
#
# Installs what is missing (Debian's chromium, npm packages), checks that the
# committed web/dist is what web/src builds to, builds the binaries, starts
# its own Mosquitto on a free port, a fresh PostgreSQL database, a unique
# Redis key prefix and a fieldcast-bridge; the tests start (and restart)
# fieldcast-gateway themselves. Screenshots land in tests/browser/screenshots/.
#
#   scripts/browser-test.sh              # every tests/browser/*.test.mjs
#   scripts/browser-test.sh bench.mjs    # another file of tests/browser/ in the same setup
#
# Works on Node.js 18 (Debian 12) and later: --test-timeout, which Node
# before 20.11 rejects, is passed only where `node` knows it; each test
# bounds its own waits either way.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services browser
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fieldcast-browser.XXXXXX")
trap 'rm -rf "$TMP"' EXIT # until the full cleanup below takes over

# The page: pinned npm packages, unit tests, and the committed dist/ must be what src/ builds to.
(
  cd web
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error
  npm run --silent check
  npm test --silent > "$TMP/web-unit.log" 2>&1 || { cat "$TMP/web-unit.log"; exit 1; }
)
(cd tests/browser && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
# FC_RELEASE=1: release binaries (the benchmark); FC_SKIP_BUILD=1: use the ones already built.
PROFILE=debug
[ -z "${FC_RELEASE:-}" ] || PROFILE=release
BIN_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/$PROFILE"
[ -n "${FC_SKIP_BUILD:-}" ] || cargo build --quiet ${FC_RELEASE:+--release} -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim --bins

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

RUN="fcbt_$$_$RANDOM"
DB="$RUN"
PREFIX="$RUN:"
MQTT_PORT=$(free_port)
ADMIN_PORT=$(free_port)
GATEWAY_PORT=${FC_GATEWAY_PORT:-$(free_port)}
pids=()

cleanup() {
  local rc=$?
  [ -f "$TMP/gateway.pid" ] && kill "$(cat "$TMP/gateway.pid")" 2>/dev/null || true
  # Newest first: the bridge stops (and acks) while its broker is still up.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  fc_psql -qAtc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli DEL >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    echo "--- browser tests failed; service logs:" >&2
    for log in "$TMP"/*.log; do
      # The web unit tests' log was shown already if they failed.
      [ "$log" = "$TMP/web-unit.log" ] || tail -v -n 40 "$log" >&2 2>/dev/null || true
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT INT TERM

sed -e "s/^listener 1883 127.0.0.1/listener $MQTT_PORT 127.0.0.1/" mosquitto/dev.conf > "$TMP/mosquitto.conf"
/usr/sbin/mosquitto -c "$TMP/mosquitto.conf" > "$TMP/mosquitto.log" 2>&1 &
pids+=($!)

fc_psql -qAtc "CREATE DATABASE \"$DB\"" >/dev/null
DATABASE_URL=$(fc_pg_url "$DB")

FIELDCAST_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT" \
FIELDCAST_MQTT_CLIENT_ID="$RUN-bridge" \
FIELDCAST_REDIS_PREFIX="$PREFIX" \
FIELDCAST_DATABASE_URL="$DATABASE_URL" \
FIELDCAST_ADMIN_ADDR="127.0.0.1:$ADMIN_PORT" \
FIELDCAST_FLUSH_INTERVAL=1s \
FIELDCAST_SPOOL_DIR="$TMP/spool" \
  "$BIN_DIR/fieldcast-bridge" > "$TMP/bridge.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { echo "bridge not ready" >&2; exit 1; }

export FC_ROOT="$ROOT" FC_BIN_DIR="$BIN_DIR" FC_TMP="$TMP" FC_MQTT_PORT="$MQTT_PORT" FC_GATEWAY_PORT="$GATEWAY_PORT" \
  FC_JWT_SECRET="browser-test-$RANDOM$RANDOM" FC_REDIS_PREFIX="$PREFIX" FC_DATABASE_URL="$DATABASE_URL"
cd tests/browser
tests=("$@")
if [ "${#tests[@]}" -eq 0 ]; then
  for t in *.test.mjs; do tests+=("$t"); done
fi
timeout_flag=()
node --help | grep -q -- '--test-timeout' && timeout_flag=(--test-timeout=300000)
node --test --test-concurrency=1 "${timeout_flag[@]}" "${tests[@]}"
