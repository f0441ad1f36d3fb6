#!/usr/bin/env bash
# Everything scripts/demo.sh and scripts/test.sh need on a Debian 12 or
# Ubuntu 24.04 machine, as root or as a user with sudo: checks the Rust
# toolchain (rustup, at least the workspace's rust-version), installs the
# missing packages (C toolchain, PostgreSQL, Redis, Mosquitto, Chromium,
# Node.js, Python's venv), starts the services and finds or makes a PostgreSQL login
# (scripts/lib.sh says how). Both commands do this themselves; run it alone
# to prepare a machine, or with --packages-only to install and nothing else
# (e.g. while the machine still has a network).
#
#   scripts/setup.sh                      # all groups: build services browser api
#   scripts/setup.sh build services       # what the demo needs
#   scripts/setup.sh --packages-only      # no Rust check, no services
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
packages_only=0
groups=()
for a in "$@"; do
  case $a in
    --packages-only) packages_only=1 ;;
    build | services | browser | api) groups+=("$a") ;;
    *) fc_die "usage: scripts/setup.sh [--packages-only] [build] [services] [browser] [api]" ;;
  esac
done
[ "${#groups[@]}" -gt 0 ] || groups=(build services browser api)
if [ "$packages_only" = 1 ]; then
  fc_install_groups "${groups[@]}"
  exit 0
fi
fc_setup "${groups[@]}"
[[ " ${groups[*]} " == *" build "* ]] && echo "Rust: $(rustc --version)"
echo "services up on 127.0.0.1: PostgreSQL 5432, Redis 6379, Mosquitto 1883"
echo "PostgreSQL: $(fc_redact "$FC_PG_ADMIN_URL") ($FC_PG_SOURCE)"
