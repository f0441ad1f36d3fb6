#!/usr/bin/env bash
# Runs every test of the workspace against the real services: checks Rust,
# installs what is missing and starts the services (scripts/lib.sh), then
# `cargo test` with the resolved PostgreSQL login in FIELDCAST_TEST_PG_URL,
# then the API check (scripts/api-test.sh) and the browser tests
# (scripts/browser-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fc_setup build services browser api
echo "PostgreSQL for the tests: $(fc_redact "$FC_PG_ADMIN_URL") ($FC_PG_SOURCE)"
cargo test --workspace --all-targets --no-fail-fast
# The bridge's broker-relevant tests again, with the bridge on a private
# single-node NATS (JetStream) and devices on its MQTT listener
# (docs/nats.md). About a minute. Left on Mosquitto only: what is about
# Mosquitto itself (TLS + ACL, $share groups, its inflight and queue
# limits, its log) and what is about Redis or PostgreSQL alone (cluster,
# rebuild, schema, the eviction policy).
FIELDCAST_TEST_BROKER=nats cargo test -p fieldcast-bridge --no-fail-fast \
  --test flow --test faults --test durability --test session -- --exact \
  location_reaches_state_live_and_history \
  older_location_never_overwrites_newer \
  status_and_last_will \
  events_are_stored_and_pushed_once \
  malformed_corpus_is_rejected_counted_and_dead_lettered \
  admin_endpoints_answer \
  sigkill_mid_stream_loses_and_doubles_no_event \
  postgres_outage_loses_nothing \
  redis_outage_recovers \
  sigterm_flushes_pending_batch_and_exits_zero \
  hostile_text_events_are_dead_lettered_and_good_ones_stored \
  a_poisoned_and_torn_spool_segment_is_replayed_without_wedging \
  last_will_after_a_status_stamped_ahead_marks_the_device_offline \
  the_outbox_is_replayed_by_the_next_bridge_after_a_restart \
  resubscribes_after_broker_loses_the_session \
  retained_status_storm_through_a_small_queue
# The HTTP API against its OpenAPI description (schemathesis), on the
# binaries just built.
FC_SKIP_BUILD=1 scripts/api-test.sh
# The map page in headless Chromium against private real services.
scripts/browser-test.sh
