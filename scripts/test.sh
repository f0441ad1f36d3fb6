#!/usr/bin/env bash
# Runs every test of the workspace against the real services (started here
# if they are not running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# PostgreSQL must accept the trust-auth superuser the tests use.
psql -h 127.0.0.1 -U postgres -d postgres -qAtc 'SELECT 1' >/dev/null
cargo test --workspace --all-targets --no-fail-fast
# The map page in headless Chromium against private real services.
scripts/browser-test.sh
