#!/usr/bin/env bash
# Makes sure Mosquitto, Redis and PostgreSQL run on loopback: installs them
# from the distribution's packages when missing (Debian/Ubuntu, as root or
# with sudo) and starts any that is not answering. Idempotent.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi

if ! port_open 5432; then
  echo "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
fi
if ! port_open 6379; then
  echo "starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/fieldcast.log
fi
if ! port_open 1883; then
  echo "starting Mosquitto"
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    $SUDO mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    $SUDO mosquitto -d -c "$(dirname "$0")/../mosquitto/dev.conf"
  fi
fi

for i in $(seq 1 50); do
  if port_open 5432 && port_open 6379 && port_open 1883; then
    exit 0
  fi
  sleep 0.2
done
echo "services did not come up: postgres:5432 redis:6379 mosquitto:1883" >&2
exit 1
