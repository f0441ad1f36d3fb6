#!/usr/bin/env bash
# Runs every test of the workspace against the real services: checks Rust,
# installs what is missing and starts the services (scripts/lib.sh), then
# `cargo test` with the resolved PostgreSQL login in FIELDCAST_TEST_PG_URL,
# then the browser tests (scripts/browser-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services browser
echo "PostgreSQL for the tests: $(fc_redact "$FC_PG_ADMIN_URL") ($FC_PG_SOURCE)"
cargo test --workspace --all-targets --no-fail-fast
# The map page in headless Chromium against private real services.
scripts/browser-test.sh
