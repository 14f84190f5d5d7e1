#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis are reachable on 127.0.0.1: starts them when installed but
# stopped, installs them with apt-get when absent (only when run as root or with INSTALL=1),
# and creates the `test` database the test suite uses. Used by `make run` and `.ci/run`.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

install() {
  if [ "$(id -u)" != 0 ] && [ "${INSTALL:-0}" != 1 ]; then
    say "$1 is not installed. Install it (Debian: apt-get install -y $2) and run again."
    exit 1
  fi
  say "installing $1 (apt-get install -y $2)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null
}

wait_for() { # name check-function
  for _ in $(seq 1 60); do "$2" && return 0; sleep 0.5; done
  say "$1 did not come up"; exit 1
}

if ! pg_up; then
  command -v pg_ctlcluster >/dev/null || install PostgreSQL "postgresql postgresql-client"
  say "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  command -v redis-server >/dev/null || install Redis "redis-server redis-tools"
  say "starting Redis (no persistence)"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redis-cqrs.log
  wait_for Redis redis_up
fi

# The test suite isolates itself by schema inside the `test` database.
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE test" >/dev/null
fi
say "PostgreSQL and Redis are up"
