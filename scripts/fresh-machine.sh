#!/usr/bin/env bash
# Proves "the two commands" on a fresh machine: a clean Debian 12 root made
# by debootstrap, with only Rust added (a copy of this host's rustup
# toolchain), this checkout in it (a git clone plus the working tree's
# uncommitted changes), and a user `fc` with passwordless sudo who runs
# scripts/demo.sh and then scripts/test.sh there, in a network namespace
# that has only loopback, so the root's own services are the only ones
# visible, and without systemd. Slow (a release and a debug build in the
# root): not part of the test suite.
#
#   sudo scripts/fresh-machine.sh
#
# Phases, each in its own mount and PID namespace (whatever a phase leaves
# running ends with it):
#   base     debootstrap bookworm, cached in $FRESH_DIR/cache (re-runs skip it)
#   packages user fc, and with the host's network `scripts/setup.sh
#            --packages-only` (the scripts' own package lists; a policy-rc.d
#            keeps the packages from starting their services), cached as an
#            overlay layer per version of scripts/lib.sh and setup.sh
#   prepare  in a fresh overlay for this run: the checkout, the Rust
#            toolchain, and with the host's network `cargo fetch`, `npm ci`
#   run      network namespace with only lo: scripts/demo.sh in the
#            background until it prints the map's address, GET / and
#            /readyz (200), SIGINT to its process group as Ctrl-C would,
#            exit 0 or 130 and no fieldcast process left; then scripts/test.sh.
#            The scripts must start the services and make the PostgreSQL
#            login themselves, and may not need the network.
# Prints each step's result and duration; logs in
# $FRESH_DIR/logs/<timestamp>/. Exit 0 when both commands passed.
#
# Env: FRESH_DIR (/var/tmp/fieldcast-fresh), MIRROR (http://deb.debian.org/debian),
# KEEP_ROOT=1 (keep the run's overlay, for a look), DEMO_TIMEOUT (2400 s to
# the map's address), TEST_TIMEOUT (5400 s), RUSTUP_HOME, CARGO_HOME (the
# host toolchain to copy: ~/.rustup, ~/.cargo).
set -euo pipefail

SUITE=bookworm
FRESH_DIR=${FRESH_DIR:-/var/tmp/fieldcast-fresh}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=$FRESH_DIR/cache
BASE=$CACHE/$SUITE
FC_UID=1000

# ---------------------------------------------------------------- inside a namespace

# Mounts an overlay at $R (layers LOWER, UPPER) with what a booted machine
# has (fresh /run and /tmp, /proc of this PID namespace), then runs the phase.
inner() {
  R=$UPPER.root
  mkdir -p "$UPPER" "$UPPER.work" "$R"
  mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$UPPER.work" "$R"
  mount -t proc proc "$R/proc"
  mount -t sysfs sysfs "$R/sys"
  mount --rbind /dev "$R/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
  mount -t tmpfs -o mode=0755 tmpfs "$R/run"
  mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
  hostname fieldcast-fresh
  "phase_$1"
}

# A login shell of user fc in the root, in ~/fieldcast (or $FC_DIR), with
# the environment a fresh login has (no sbin on PATH).
as_fc() {
  local groups
  groups=$(awk -F: -v u=fc '$1 == u || $4 ~ "(^|,)" u "(,|$)" { printf "%s%s", s, $3; s = "," }' "$R/etc/group")
  chroot --userspec="$FC_UID:$FC_UID" --groups="$groups" "$R" /usr/bin/env -i \
    HOME=/home/fc USER=fc LOGNAME=fc SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games \
    /bin/bash -lc "cd ${FC_DIR:-~/fieldcast} && $1"
}

# The user, and the packages as the scripts' own lists name them (with the
# host's network), cached as a layer per version of those lists.
phase_packages() {
  echo fieldcast-fresh >"$R/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tfieldcast-fresh\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
  chroot "$R" useradd -m -u "$FC_UID" -s /bin/bash -G sudo fc
  echo 'fc ALL=(ALL:ALL) NOPASSWD: ALL' >"$R/etc/sudoers.d/fc"
  chmod 440 "$R/etc/sudoers.d/fc"
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  mkdir -p "$CACHE/apt-archives/partial" "$R/tmp/fc/scripts"
  mount --bind "$CACHE/apt-archives" "$R/var/cache/apt/archives"
  cp "$REPO/scripts/lib.sh" "$REPO/scripts/setup.sh" "$R/tmp/fc/scripts/"
  cp "$REPO/Cargo.toml" "$R/tmp/fc/"
  chmod -R a+rX "$R/tmp/fc"
  # No package may start its service here: it would run in the host's
  # network, beside the host's own.
  printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
  chmod 755 "$R/usr/sbin/policy-rc.d"
  local rc=0
  FC_DIR=/tmp/fc as_fc 'scripts/setup.sh --packages-only' || rc=$?
  rm -f "$R/usr/sbin/policy-rc.d"
  # pg_createcluster gave the new cluster the first free port, and here the
  # host's PostgreSQL holds 5432: give it the 5432 a fresh machine gives it.
  local c
  for c in "$R"/etc/postgresql/*/main/postgresql.conf; do
    [ -f "$c" ] && sed -i 's/^port = [0-9]*/port = 5432/' "$c"
  done
  return "$rc"
}

# Per run: the checkout, the Rust toolchain, and (with the host's network)
# the crates and npm packages.
phase_prepare() {
  # The checkout: committed history, then the working tree as it is.
  local dest=$R/home/fc/fieldcast
  git clone -q --no-local "$REPO" "$dest"
  (cd "$REPO" && git ls-files -co --exclude-standard -z) |
    (cd "$REPO" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
    tar -C "$REPO" --null -T - -cf - | tar -C "$dest" -xf -
  (cd "$REPO" && git ls-files -d -z) | (cd "$dest" && xargs -0 -r rm -f)

  # Rust as rustup-init leaves it: ~/.rustup with the toolchain, ~/.cargo/bin
  # with rustup and its proxies, ~/.cargo/env sourced by ~/.profile.
  local home=$R/home/fc
  mkdir -p "$home/.rustup/toolchains" "$home/.cargo/bin"
  cp -a "$RUSTUP_SRC/toolchains/$TOOLCHAIN" "$home/.rustup/toolchains/"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "default"\nauto_self_update = "disable"\n' \
    "$TOOLCHAIN" >"$home/.rustup/settings.toml"
  cp "$CARGO_SRC/bin/rustup" "$home/.cargo/bin/rustup"
  local p
  for p in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb; do
    ln "$home/.cargo/bin/rustup" "$home/.cargo/bin/$p"
  done
  cat >"$home/.cargo/env" <<'EOF'
case ":${PATH}:" in
  *:"$HOME/.cargo/bin":*) ;;
  *) export PATH="$HOME/.cargo/bin:$PATH" ;;
esac
EOF
  # shellcheck disable=SC2016 # expanded at login, in the root
  printf '%s\n' '. "$HOME/.cargo/env"' | tee -a "$home/.profile" >>"$home/.bashrc"
  chown -R "$FC_UID:$FC_UID" "$home"
  # The host's network may need the host's trust store (an intercepting
  # proxy's CA): for these downloads only, in /tmp (gone after this phase).
  cp /etc/ssl/certs/ca-certificates.crt "$R/tmp/host-ca.crt"
  as_fc 'rustc --version && cargo --version &&
    export CARGO_HTTP_CAINFO=/tmp/host-ca.crt NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt &&
    cargo fetch &&
    (cd web && npm ci --no-audit --no-fund --loglevel=error) &&
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) &&
    PIP_CERT=/tmp/host-ca.crt bash -c ". scripts/lib.sh && fc_schemathesis" >/dev/null'
}

phase_run() {
  ip link set lo up
  local t0 t1 pid rc=0 i map_s="" code_root code_ready leftover
  # demo.sh: in its own process group, as in a terminal, and with SIGINT
  # not ignored (as a shell's background job would have it, which demo.sh
  # could not trap).
  t0=$(date +%s)
  : >"$LOGS/demo.log"
  setsid env --default-signal=INT bash -c "$(declare -f as_fc); R=$R FC_UID=$FC_UID; as_fc 'exec scripts/demo.sh'" \
    >"$LOGS/demo.log" 2>&1 </dev/null &
  pid=$!
  for ((i = 0; i < DEMO_TIMEOUT; i++)); do
    if grep -q '^live map: ' "$LOGS/demo.log"; then
      map_s=$(($(date +%s) - t0))
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if [ -z "$map_s" ]; then
    result demo FAIL "$(($(date +%s) - t0))" "no map address (demo.sh $(kill -0 "$pid" 2>/dev/null && echo 'still running' || echo exited))"
    kill -INT -- "-$pid" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  else
    local addr
    addr=$(sed -n 's/^live map: *\(http[^ ]*\).*/\1/p' "$LOGS/demo.log" | head -n1)
    code_root=$(curl -s -o "$LOGS/map.html" -w '%{http_code}' "$addr" || true)
    code_ready=$(curl -s -o /dev/null -w '%{http_code}' "${addr%/}/readyz" || true)
    sleep 5 # a few seconds of the fleet, for the log
    kill -INT -- "-$pid"
    for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      rc=timeout
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    wait "$pid" || rc=$?
    t1=$(date +%s)
    leftover=$(pgrep -a -f 'fieldcast-(bridge|gateway|sim)' || true)
    echo "demo: map after ${map_s}s at $addr; GET / -> $code_root, GET /readyz -> $code_ready;" \
      "SIGINT -> exit $rc${leftover:+; left running: $leftover}" >>"$LOGS/demo.log"
    if [ "$code_root" = 200 ] && [ "$code_ready" = 200 ] && { [ "$rc" = 0 ] || [ "$rc" = 130 ]; } &&
      [ -z "$leftover" ]; then
      result demo PASS "$((t1 - t0))" "map after ${map_s}s; / $code_root, /readyz $code_ready; SIGINT -> exit $rc, nothing left running"
    else
      result demo FAIL "$((t1 - t0))" "map after ${map_s}s; / $code_root, /readyz $code_ready; SIGINT -> exit $rc${leftover:+; left: $leftover}"
    fi
  fi

  t0=$(date +%s)
  rc=0
  timeout --signal=INT --kill-after=60 "$TEST_TIMEOUT" \
    bash -c "$(declare -f as_fc); R=$R FC_UID=$FC_UID; as_fc 'scripts/test.sh'" >"$LOGS/test.log" 2>&1 </dev/null || rc=$?
  t1=$(date +%s)
  local summary
  summary=$(grep -E '^test result:|^(# |ℹ )(pass|fail) ' "$LOGS/test.log" |
    awk '/^test result/ { p += $4; f += $6 } / pass / && !/^test/ { bp += $3 } / fail / && !/^test/ { bf += $3 }
      END { printf "cargo: %d passed, %d failed; browser: %d passed, %d failed", p, f, bp, bf }')
  if [ "$rc" = 0 ]; then result test PASS "$((t1 - t0))" "exit 0; $summary"; else result test FAIL "$((t1 - t0))" "exit $rc; $summary"; fi
}

# result STEP PASS|FAIL SECONDS DETAIL: one line to stdout and results.txt.
result() {
  local line
  line=$(printf '%-8s %-4s %5ss  %s' "$1" "$2" "$3" "$4")
  echo "$line" | tee -a "$LOGS/results.txt"
}

if [ "${1:-}" = --inner ]; then
  inner "$2"
  exit
fi

# ---------------------------------------------------------------- on the host

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUSTUP_SRC=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_SRC=${CARGO_HOME:-$HOME/.cargo}
TOOLCHAIN=$(cd "$REPO" && rustup show active-toolchain | awk '{ print $1 }')
[ -d "$RUSTUP_SRC/toolchains/$TOOLCHAIN" ] || { echo "no toolchain $TOOLCHAIN in $RUSTUP_SRC" >&2; exit 1; }
DEMO_TIMEOUT=${DEMO_TIMEOUT:-2400}
TEST_TIMEOUT=${TEST_TIMEOUT:-5400}
LOGS=$FRESH_DIR/logs/$(date -u +%Y%m%dT%H%M%SZ)
RUN=$FRESH_DIR/run.$$
# The packages layer is cached per version of the scripts that choose them.
PKGS=$CACHE/$SUITE-packages-$(cat "$REPO/scripts/lib.sh" "$REPO/scripts/setup.sh" | sha256sum | cut -c1-12)
mkdir -p "$LOGS" "$CACHE" "$RUN"
# A run's root holds a release and a debug build of the workspace (~20 GiB).
free_gib=$(df -Pk "$FRESH_DIR" | awk 'NR == 2 { print int($4 / 1048576) }')
[ "$free_gib" -ge 25 ] || echo "warning: only ${free_gib} GiB free in $FRESH_DIR; a run needs about 25" >&2
export REPO RUSTUP_SRC CARGO_SRC TOOLCHAIN DEMO_TIMEOUT TEST_TIMEOUT LOGS BASE CACHE
cleanup() {
  if [ "${KEEP_ROOT:-0}" = 1 ]; then
    echo "kept the run's root: $RUN/upper (over $PKGS and $BASE)"
  else
    rm -rf "$RUN" "$PKGS.tmp"
  fi
}
trap cleanup EXIT

# step NAME LOG CMD...: runs a setup step, prints its result and duration.
step() {
  local name=$1 log=$2 t0 rc=0
  shift 2
  t0=$(date +%s)
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    result "$name" ok "$(($(date +%s) - t0))" "$(basename "$log")"
  else
    result "$name" FAIL "$(($(date +%s) - t0))" "exit $rc; the end of $log:"
    tail -n 30 "$log"
    exit 1
  fi
}

echo "fresh Debian 12 root for $REPO ($(cd "$REPO" && git rev-parse --short HEAD) + working tree), Rust $TOOLCHAIN; logs in $LOGS"
host_deps=()
command -v debootstrap >/dev/null || host_deps+=(debootstrap)
command -v curl >/dev/null || host_deps+=(curl)
if [ "${#host_deps[@]}" -gt 0 ]; then
  step host-deps "$LOGS/host-deps.log" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${host_deps[*]}"
fi

make_base() {
  rm -rf "$BASE.tmp"
  debootstrap --include=sudo,ca-certificates "$SUITE" "$BASE.tmp" "$MIRROR"
  # As an installed system has them: updates and security updates.
  cat >"$BASE.tmp/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
  chroot "$BASE.tmp" apt-get clean
  date -u >"$BASE.tmp/.fieldcast-base"
  rm -rf "$BASE"
  mv "$BASE.tmp" "$BASE"
}
if [ -f "$BASE/.fieldcast-base" ]; then
  result base cached 0 "$BASE ($(cat "$BASE/.fieldcast-base"))"
else
  step base "$LOGS/debootstrap.log" make_base
fi

ns() { unshare --mount --pid --fork --mount-proc --uts --propagation private "$@"; }
if [ -f "$PKGS/.done" ]; then
  result packages cached 0 "$PKGS"
else
  rm -rf "$PKGS.tmp"
  export LOWER="$BASE" UPPER="$PKGS.tmp/upper"
  step packages "$LOGS/packages.log" ns "$0" --inner packages
  touch "$PKGS.tmp/.done"
  mv "$PKGS.tmp" "$PKGS"
fi
export LOWER="$PKGS/upper:$BASE" UPPER="$RUN/upper"
step prepare "$LOGS/prepare.log" ns "$0" --inner prepare
ns --net "$0" --inner run
echo "logs: $LOGS"
if grep -qE '^(demo|test) +FAIL' "$LOGS/results.txt"; then exit 1; fi
