# shellcheck shell=bash
# Sourced by the scripts in scripts/: the one home of what they all need on a
# Debian or Ubuntu machine, as root or as a user with sudo, with or without
# systemd.
#
#   fc_as_root CMD...     root directly, else sudo (apt-get gets
#                         DEBIAN_FRONTEND=noninteractive through `sudo env`,
#                         since sudo resets the environment)
#   fc_setup GROUP...     Rust check (group build), the packages of each group
#                         (build, services, browser) that are missing, the
#                         three services started, PostgreSQL resolved
#   fc_pg_resolve         sets FC_PG_ADMIN_URL (see below) and FC_PG_SOURCE
#                         (where it came from), exports it as
#                         FIELDCAST_TEST_PG_URL for the Rust tests
#   fc_psql ARGS...       psql as that admin, on the `postgres` database
#   fc_pg_url DB          the admin URL with its database replaced by DB
#   fc_pg_create_db DB    creates DB unless it exists
#   fc_port_open PORT     something accepts on 127.0.0.1:PORT
#
# PostgreSQL, resolved in this order (crates/testkit/src/lib.rs reads the
# same file, so `cargo test` alone finds it too):
#   1. FIELDCAST_TEST_PG_URL, if set: an admin URL (CREATEDB at least);
#   2. postgres://postgres@127.0.0.1:5432/postgres, if it logs in without a
#      password (trust, as on CI);
#   3. the role `fieldcast` (LOGIN CREATEDB, no superuser) with a generated
#      password, kept as FIELDCAST_PG_ADMIN_URL=... in
#      ${XDG_CONFIG_HOME:-~/.config}/fieldcast/pg.env (mode 600), created or
#      given a new password through the socket as the `postgres` OS user when
#      the file is missing or its password no longer works. PostgreSQL's
#      authentication is left as the package set it up.

FC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FC_PG_TRUST_URL=postgres://postgres@127.0.0.1:5432/postgres
FC_PG_ENV="${XDG_CONFIG_HOME:-$HOME/.config}/fieldcast/pg.env"

fc_log() { printf '%s\n' "$*" >&2; }
fc_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- privileges

fc_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    fc_die "needs root for '$*': run as root, or as a user with sudo rights"
  fi
}

# Runs a command as OS user $1 (e.g. postgres, for peer authentication on
# the socket), from / so that it need not read the caller's directory.
fc_as_user() {
  local user=$1
  shift
  (
    cd /
    if [ "$(id -un)" = "$user" ]; then
      "$@"
    elif [ "$(id -u)" -eq 0 ]; then
      runuser -u "$user" -- "$@"
    else
      sudo -u "$user" "$@"
    fi
  )
}

# ---------------------------------------------------------------- packages

# What each group needs, as `package:probe` pairs: a probe is a command on
# PATH or an absolute path (a glob is fine). Probes rather than dpkg's
# database, so that a machine that has the programs from other packages
# (postgresql-15 without the `postgresql` metapackage, say) installs nothing.
FC_PKGS_BUILD=(
  # The C toolchain: the linker `cc`, and the C code of aws-lc-sys and ring.
  build-essential:cc build-essential:make pkg-config:pkg-config
)
FC_PKGS_SERVICES=(
  'postgresql:/usr/lib/postgresql/*/bin/postgres' postgresql:pg_ctlcluster postgresql-client:psql
  redis-server:/usr/bin/redis-server redis-tools:redis-cli
  mosquitto:/usr/sbin/mosquitto mosquitto:mosquitto_passwd mosquitto-clients:mosquitto_pub
  nats-server:/usr/sbin/nats-server
  openssl:openssl curl:curl
  # For the tests only (crates/gateway/tests/haproxy.rs runs its own, on
  # free ports, with deploy/haproxy.cfg); see fc_quiet_haproxy.
  haproxy:/usr/sbin/haproxy
)
FC_PKGS_BROWSER=(chromium:/usr/bin/chromium nodejs:node npm:npm)
# scripts/api-test.sh: schemathesis, pinned, in a virtualenv of its own.
FC_PKGS_API=(python3-venv:python3 'python3-venv:/usr/lib/python3*/ensurepip')
# scripts/cluster.sh: its own NATS nodes, Redis Cluster and HAProxy.
FC_PKGS_CLUSTER=(
  nats-server:/usr/sbin/nats-server redis-server:/usr/bin/redis-server redis-tools:redis-cli
  haproxy:/usr/sbin/haproxy curl:curl
)

fc_probe() {
  case $1 in
    /*) compgen -G "$1" >/dev/null ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Installs the packages of the given `package:probe` pairs whose probe fails;
# does nothing (and needs no network) when every probe passes.
fc_install() {
  local missing=() pair pkg
  for pair in "$@"; do
    pkg=${pair%%:*}
    if ! fc_probe "${pair#*:}" && [[ " ${missing[*]} " != *" $pkg "* ]]; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 ||
    fc_die "missing: ${missing[*]}; these scripts install packages only with apt-get (Debian, Ubuntu)"
  fc_log "installing: ${missing[*]}"
  fc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}"
  [[ " ${missing[*]} " == *" haproxy "* ]] && fc_quiet_haproxy
  return 0
}

# Debian's haproxy package enables and starts its own service, with a
# config that listens on no port. The tests start their own HAProxy, so a
# service this script just installed is stopped and disabled; one that was
# there before is left alone (deploy/haproxy.cfg says how to run it).
fc_quiet_haproxy() {
  if fc_systemd; then
    fc_as_root systemctl disable --now haproxy >&2 2>/dev/null || true
  elif [ -x /etc/init.d/haproxy ]; then
    fc_as_root /etc/init.d/haproxy stop >&2 2>/dev/null || true
  fi
}

# The packages of groups build, services, browser, api, cluster.
fc_install_groups() {
  local pairs=() g
  for g in "$@"; do
    case $g in
      build) pairs+=("${FC_PKGS_BUILD[@]}") ;;
      services) pairs+=("${FC_PKGS_SERVICES[@]}") ;;
      browser) pairs+=("${FC_PKGS_BROWSER[@]}") ;;
      api) pairs+=("${FC_PKGS_API[@]}") ;;
      cluster) pairs+=("${FC_PKGS_CLUSTER[@]}") ;;
      *) fc_die "unknown package group '$g' (build, services, browser, api, cluster)" ;;
    esac
  done
  fc_install "${pairs[@]}"
}

# ---------------------------------------------------------------- Rust

fc_version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# Exits with instructions unless rustc is at least the workspace's
# rust-version. rustup installs into ~/.cargo/bin, which only a login shell
# has on PATH (~/.profile), so that is looked at too.
fc_require_rust() {
  local need have
  need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$FC_ROOT/Cargo.toml" | head -n1)
  if [ -x "$HOME/.cargo/bin/cargo" ] && [[ ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
    PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    fc_rust_help "$need" "no Rust toolchain (cargo, rustc) found"
  fi
  have=$(rustc --version | awk '{ print $2 }')
  fc_version_ge "${have%%-*}" "$need" ||
    fc_rust_help "$need" "$(command -v rustc) is $have, too old"
}

fc_rust_help() {
  cat >&2 <<EOF
error: $2: Fieldcast needs Rust $1 or newer.
  The distributions' own rustc is older (Debian 12: 1.63, Ubuntu 24.04: 1.75).
  Install Rust with rustup (https://rustup.rs) as the user who runs these
  scripts, without sudo:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "\$HOME/.cargo/env"
  or, where rustup is already there: rustup update stable && rustup default stable
  Then run this script again.
EOF
  exit 1
}

# ---------------------------------------------------------------- services

fc_port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

fc_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# "VERSION NAME" of the PostgreSQL cluster on port 5432, or of a new one
# when there is none at all.
fc_pg_cluster() {
  local c ver others
  c=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }')
  others=$(pg_lsclusters -h 2>/dev/null | awk '{ printf "%s%s/%s on port %s", s, $1, $2, $3; s = ", " }')
  if [ -z "$c" ] && [ -n "$others" ]; then
    fc_log "no PostgreSQL cluster is set up for port 5432 ($others): set one's port to 5432" \
      "(sudo pg_conftool VERSION NAME set port 5432), or point FIELDCAST_TEST_PG_URL at it"
    return 1
  elif [ -z "$c" ]; then
    ver=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | cut -d/ -f5 | sort -V | tail -n1)
    fc_log "creating PostgreSQL cluster $ver/main"
    fc_as_root pg_createcluster --port 5432 "$ver" main >/dev/null
    c="$ver main"
  fi
  echo "$c"
}

# Each starts one service the way its package does: the systemd unit where
# systemd runs, else what the unit would do. They print where the log is.
fc_start_postgres() {
  local c
  c=$(fc_pg_cluster) || {
    echo "/var/log/postgresql/ (no cluster started)"
    return 0
  }
  if ! fc_systemd || ! fc_as_root systemctl start "postgresql@${c/ /-}" >&2; then
    # pg_ctlcluster makes /run/postgresql itself and runs the server as the
    # cluster's owner. ($c is two words: version and name.)
    # shellcheck disable=SC2086
    fc_as_root pg_ctlcluster --skip-systemctl-redirect ${c} start >&2 || true
  fi
  echo "/var/log/postgresql/postgresql-${c/ /-}.log"
}

fc_start_redis() {
  if fc_systemd && fc_as_root systemctl start redis-server >&2; then
    :
  elif fc_as_root test -f /etc/redis/redis.conf; then
    # The unit: RuntimeDirectory=redis, User=redis, the package's config.
    fc_as_root install -d -o redis -g redis -m 2755 /run/redis
    fc_as_root runuser -u redis -- /usr/bin/redis-server /etc/redis/redis.conf --daemonize yes >&2 || true
  else
    fc_as_root install -d /var/lib/redis /var/log/redis
    fc_as_root /usr/bin/redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/redis-server.log >&2 || true
  fi
  echo /var/log/redis/redis-server.log
}

fc_start_mosquitto() {
  if fc_systemd && fc_as_root systemctl start mosquitto >&2; then
    echo /var/log/mosquitto/mosquitto.log
  elif [ -f /etc/mosquitto/mosquitto.conf ]; then
    # The unit's ExecStartPre: the pid file's directory, which only
    # systemd's tmpfiles make otherwise.
    fc_as_root install -d -o mosquitto -m 0740 /run/mosquitto
    fc_as_root /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf >&2 || true
    echo /var/log/mosquitto/mosquitto.log
  else
    local log=${TMPDIR:-/tmp}/fieldcast-mosquitto.log
    /usr/sbin/mosquitto -c "$FC_ROOT/mosquitto/dev.conf" >"$log" 2>&1 &
    disown
    echo "$log"
  fi
}

# Starts each of PostgreSQL (5432), Redis (6379), Mosquitto (1883) that does
# not answer on loopback, then waits for each on its own; fails naming only
# those that did not come up, each with the tail of its log.
fc_start_services() {
  local svc name port started=() logs=() failed=() i
  for svc in postgres:5432 redis:6379 mosquitto:1883; do
    name=${svc%:*} port=${svc#*:}
    fc_port_open "$port" && continue
    fc_log "starting $name"
    started+=("$svc")
    logs+=("$("fc_start_$name")")
  done
  for i in "${!started[@]}"; do
    name=${started[i]%:*} port=${started[i]#*:}
    for _ in $(seq 1 100); do
      fc_port_open "$port" && break
      sleep 0.2
    done
    fc_port_open "$port" && continue
    failed+=("$name:$port")
    fc_log "$name did not come up on 127.0.0.1:$port; the end of ${logs[i]}:"
    fc_as_root tail -n 20 "${logs[i]}" >&2 2>/dev/null || fc_log "  (no log there)"
    if fc_systemd; then
      fc_as_root journalctl -n 10 --no-pager -u "$(fc_unit "$name")" >&2 2>/dev/null || true
    fi
  done
  [ "${#failed[@]}" -eq 0 ] || fc_die "did not come up: ${failed[*]}"
}

fc_unit() {
  case $1 in
    postgres) echo 'postgresql*' ;;
    redis) echo redis-server ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------- PostgreSQL

fc_pg_ok() { PGCONNECT_TIMEOUT=5 psql -w -d "$1" -qAtc 'SELECT 1' >/dev/null 2>&1; }

# The URL with its password hidden, for messages.
fc_redact() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

fc_pg_resolve() {
  local url=""
  if [ -n "${FIELDCAST_TEST_PG_URL:-}" ]; then
    fc_pg_ok "$FIELDCAST_TEST_PG_URL" ||
      fc_die "FIELDCAST_TEST_PG_URL ($(fc_redact "$FIELDCAST_TEST_PG_URL")) does not log in"
    url=$FIELDCAST_TEST_PG_URL FC_PG_SOURCE="FIELDCAST_TEST_PG_URL"
  elif fc_pg_ok "$FC_PG_TRUST_URL"; then
    url=$FC_PG_TRUST_URL FC_PG_SOURCE="trust: no password"
  else
    FC_PG_SOURCE="password in $FC_PG_ENV"
    [ -r "$FC_PG_ENV" ] && url=$(sed -n 's/^FIELDCAST_PG_ADMIN_URL=//p' "$FC_PG_ENV" | tail -n1)
    if [ -z "$url" ] || ! fc_pg_ok "$url"; then
      url=$(fc_pg_make_role)
      fc_pg_ok "$url" || fc_die "the role fieldcast cannot log in on 127.0.0.1:5432 with its password:" \
        "pg_hba.conf must allow it 'host all all 127.0.0.1/32 scram-sha-256' (the package's default)"
    fi
  fi
  FC_PG_ADMIN_URL=$url
  export FIELDCAST_TEST_PG_URL=$url
}

# Creates the role fieldcast (or gives it a new password) through the socket
# as the postgres OS user, writes its URL to $FC_PG_ENV, prints the URL.
fc_pg_make_role() {
  local pw url dir
  pw=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  fc_log "PostgreSQL: no password-less login on 127.0.0.1; creating the role fieldcast, credentials in $FC_PG_ENV"
  # The password goes through stdin, never on a command line.
  fc_as_user postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL ||
DO \$\$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'fieldcast') THEN
    ALTER ROLE fieldcast LOGIN CREATEDB PASSWORD '$pw';
  ELSE
    CREATE ROLE fieldcast LOGIN CREATEDB PASSWORD '$pw';
  END IF;
END \$\$;
SQL
    fc_die "could not create the PostgreSQL role fieldcast as the postgres OS user"
  url="postgres://fieldcast:$pw@127.0.0.1:5432/postgres"
  dir=$(dirname "$FC_PG_ENV")
  mkdir -p "$dir"
  (
    umask 077
    printf '%s\n' "# Written by scripts/lib.sh: the PostgreSQL login of Fieldcast's scripts and tests." \
      "# For psql: (set -a; . $FC_PG_ENV; psql fieldcast)" \
      "FIELDCAST_PG_ADMIN_URL=$url" PGHOST=127.0.0.1 PGPORT=5432 PGUSER=fieldcast "PGPASSWORD=$pw" \
      >"$FC_PG_ENV.tmp"
  )
  chmod 600 "$FC_PG_ENV.tmp"
  mv "$FC_PG_ENV.tmp" "$FC_PG_ENV"
  echo "$url"
}

fc_psql() { psql -X -w -v ON_ERROR_STOP=1 -d "$FC_PG_ADMIN_URL" "$@"; }

fc_pg_url() {
  local url=$FC_PG_ADMIN_URL query="" scheme rest
  if [[ $url == *\?* ]]; then
    query="?${url#*\?}"
    url=${url%%\?*}
  fi
  scheme=${url%%://*}
  rest=${url#*://}
  printf '%s://%s/%s%s\n' "$scheme" "${rest%%/*}" "$1" "$query"
}

# A psql command line for database DB that a person can paste.
fc_psql_hint() {
  if [ "$FC_PG_SOURCE" = FIELDCAST_TEST_PG_URL ]; then
    echo "psql '$(fc_redact "$(fc_pg_url "$1")")'"
  elif [ "$FC_PG_ADMIN_URL" = "$FC_PG_TRUST_URL" ]; then
    echo "psql -h 127.0.0.1 -U postgres $1"
  else
    echo "(set -a; . $FC_PG_ENV; psql $1)"
  fi
}

fc_pg_create_db() {
  if ! fc_psql -qAtc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; then
    fc_psql -qc "CREATE DATABASE \"$1\""
  fi
}

# ---------------------------------------------------------------- a private stack

# A free TCP port on 127.0.0.1 (the kernel's pick, released at once).
fc_free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  else
    node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
  fi
}

# For the scripts that drive the binaries from outside (browser-test.sh,
# api-test.sh): a PRIVATE Mosquitto on a free port, a fresh database, a
# unique Redis key prefix and a fieldcast-bridge on them, ready when this
# returns. Needs FC_BIN_DIR (the binaries) and FC_TMP (a scratch folder:
# config, spool, logs); sets FC_RUN, FC_DB, FC_PREFIX, FC_MQTT_PORT,
# FC_ADMIN_PORT, FC_DATABASE_URL and FC_PIDS. fc_stack_stop undoes it all.
fc_stack_start() {
  FC_RUN="fc_$1_$$_$RANDOM"
  FC_DB="$FC_RUN"
  FC_PREFIX="$FC_RUN:"
  FC_MQTT_PORT=$(fc_free_port)
  FC_ADMIN_PORT=$(fc_free_port)
  FC_PIDS=()
  sed -e "s/^listener 1883 127.0.0.1/listener $FC_MQTT_PORT 127.0.0.1/" mosquitto/dev.conf > "$FC_TMP/mosquitto.conf"
  /usr/sbin/mosquitto -c "$FC_TMP/mosquitto.conf" > "$FC_TMP/mosquitto.log" 2>&1 &
  FC_PIDS+=($!)
  fc_psql -qAtc "CREATE DATABASE \"$FC_DB\"" >/dev/null
  FC_DATABASE_URL=$(fc_pg_url "$FC_DB")
  FIELDCAST_MQTT_URL="mqtt://127.0.0.1:$FC_MQTT_PORT" \
  FIELDCAST_MQTT_CLIENT_ID="$FC_RUN-bridge" \
  FIELDCAST_REDIS_PREFIX="$FC_PREFIX" \
  FIELDCAST_DATABASE_URL="$FC_DATABASE_URL" \
  FIELDCAST_ADMIN_ADDR="127.0.0.1:$FC_ADMIN_PORT" \
  FIELDCAST_FLUSH_INTERVAL=1s \
  FIELDCAST_SPOOL_DIR="$FC_TMP/spool" \
    "$FC_BIN_DIR/fieldcast-bridge" > "$FC_TMP/bridge.log" 2>&1 &
  FC_PIDS+=($!)
  fc_wait_ready "http://127.0.0.1:$FC_ADMIN_PORT/readyz" || fc_die "the bridge is not ready (log: $FC_TMP/bridge.log)"
}

# schemathesis for scripts/api-test.sh, pinned, in a virtualenv of its own
# under ~/.cache/fieldcast (installed once, from PyPI); prints its path.
FC_SCHEMATHESIS_VERSION=4.32.5
fc_schemathesis() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/fieldcast/schemathesis-$FC_SCHEMATHESIS_VERSION"
  if [ ! -x "$venv/bin/schemathesis" ]; then
    fc_log "installing schemathesis $FC_SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$FC_SCHEMATHESIS_VERSION" >&2 ||
      fc_die "cannot install schemathesis from PyPI"
  fi
  echo "$venv/bin/schemathesis"
}

# Waits up to 30 s for URL to answer 2xx.
fc_wait_ready() {
  local _
  for _ in $(seq 1 150); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# Stops what fc_stack_start started, newest first (the bridge stops, and
# acks, while its broker is still up), and drops its database and keys.
fc_stack_stop() {
  local i
  for ((i = ${#FC_PIDS[@]} - 1; i >= 0; i--)); do
    kill "${FC_PIDS[$i]}" 2>/dev/null || true
    wait "${FC_PIDS[$i]}" 2>/dev/null || true
  done
  FC_PIDS=()
  [ -z "${FC_DB:-}" ] || fc_psql -qAtc "DROP DATABASE IF EXISTS \"$FC_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  [ -z "${FC_PREFIX:-}" ] || redis-cli --scan --pattern "$FC_PREFIX*" | xargs -r -n 500 redis-cli DEL >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- all of it

# Rust first (it fails fast, before any download), then packages, services,
# PostgreSQL.
fc_setup() {
  [[ " $* " == *" build "* ]] && fc_require_rust
  fc_install_groups "$@"
  fc_start_services
  fc_pg_resolve
}
