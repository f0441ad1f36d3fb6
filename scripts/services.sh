#!/usr/bin/env bash
# Makes sure Mosquitto (1883), Redis (6379) and PostgreSQL (5432) run on
# loopback: installs the distribution's packages that are missing (Debian,
# Ubuntu; as root or with sudo), starts each service that does not answer
# the way its package does (systemd where it runs, else what the unit
# does), and finds or makes a PostgreSQL login for the scripts and tests
# (scripts/lib.sh says how). Idempotent; needs no network once installed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
fc_setup services
echo "services up; PostgreSQL: $(fc_redact "$FC_PG_ADMIN_URL") ($FC_PG_SOURCE)"
