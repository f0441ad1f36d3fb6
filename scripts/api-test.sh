#!/usr/bin/env bash
# The HTTP API against its description: schemathesis (pinned, from PyPI, in
# a virtualenv of its own) generates requests from the gateway's own
# `/api/openapi.json` (docs/openapi.json) and checks every answer against
# it — status codes, content types, bodies, headers, that bad input is
# refused and good input accepted, that a missing token is a 401 — against
# a PRIVATE set of real services with a small simulated fleet in them.
#
#   scripts/api-test.sh                  # the whole check, ~2 minutes
#   FC_SKIP_BUILD=1 scripts/api-test.sh  # with the binaries already built
#
# The seed is fixed, so a run is reproducible; a failure prints the curl
# command that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services api

SCHEMATHESIS=$(fc_schemathesis)

[ -n "${FC_SKIP_BUILD:-}" ] || cargo build --quiet -p fieldcast-bridge -p fieldcast-gateway -p fieldcast-sim --bins
FC_BIN_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug"
FC_TMP=$(mktemp -d "${TMPDIR:-/tmp}/fieldcast-api.XXXXXX")

cleanup() {
  local rc=$?
  fc_stack_stop
  if [ "$rc" -ne 0 ]; then
    echo "--- API test failed; service logs:" >&2
    tail -v -n 40 "$FC_TMP"/*.log >&2 2>/dev/null || true
  fi
  rm -rf "$FC_TMP"
  exit "$rc"
}
trap cleanup EXIT INT TERM
fc_stack_start api

SECRET="api-test-$RANDOM$RANDOM$RANDOM"
PORT=$(fc_free_port)
FIELDCAST_LISTEN="127.0.0.1:$PORT" \
FIELDCAST_JWT_SECRET="$SECRET" \
FIELDCAST_REDIS_PREFIX="$FC_PREFIX" \
FIELDCAST_DATABASE_URL="$FC_DATABASE_URL" \
  "$FC_BIN_DIR/fieldcast-gateway" > "$FC_TMP/gateway.log" 2>&1 &
FC_PIDS+=($!)
fc_wait_ready "http://127.0.0.1:$PORT/readyz" || fc_die "the gateway is not ready"

# Something to find: devices with a hot state, a track and events, so that
# generated requests reach the code behind a 404.
FIELDCAST_MQTT_URL="mqtt://127.0.0.1:$FC_MQTT_PORT" "$FC_BIN_DIR/fieldcast-sim" fleet \
  --devices 5 --rate 2 --event-every 1 --duration 8s > "$FC_TMP/fleet.log" 2>&1
sleep 2 # the bridge's history flush (FIELDCAST_FLUSH_INTERVAL=1s)

# Every right, so that every operation can succeed; `ignored_auth` still
# checks that each guarded operation refuses a request without the token.
TOKEN=$(FIELDCAST_JWT_SECRET="$SECRET" "$FC_BIN_DIR/fieldcast-gateway" token \
  --sub api-test --admin --publish --channels '*' --ttl 1h)

# From the scratch folder: schemathesis keeps a cache in its working
# directory, which belongs to no checkout.
cd "$FC_TMP"
"$SCHEMATHESIS" --config-file "$ROOT/tests/api/schemathesis.toml" run "http://127.0.0.1:$PORT/api/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --seed 20261207 \
  --max-examples "${FC_API_EXAMPLES:-40}" \
  --workers 1 \
  --request-timeout 10 \
  --no-color
