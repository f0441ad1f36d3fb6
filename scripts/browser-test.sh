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

FC_BIN_DIR="$BIN_DIR" FC_TMP="$TMP"
GATEWAY_PORT=${FC_GATEWAY_PORT:-$(fc_free_port)}

cleanup() {
  local rc=$?
  [ -f "$TMP/gateway.pid" ] && kill "$(cat "$TMP/gateway.pid")" 2>/dev/null || true
  fc_stack_stop
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
fc_stack_start browser

export FC_ROOT="$ROOT" FC_BIN_DIR FC_TMP FC_MQTT_PORT FC_GATEWAY_PORT="$GATEWAY_PORT" \
  FC_JWT_SECRET="browser-test-$RANDOM$RANDOM" FC_REDIS_PREFIX="$FC_PREFIX" FC_DATABASE_URL
cd tests/browser
tests=("$@")
if [ "${#tests[@]}" -eq 0 ]; then
  for t in *.test.mjs; do tests+=("$t"); done
fi
timeout_flag=()
node --help | grep -q -- '--test-timeout' && timeout_flag=(--test-timeout=300000)
node --test --test-concurrency=1 "${timeout_flag[@]}" "${tests[@]}"
