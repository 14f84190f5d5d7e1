#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine, with readable logs. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATABASE_SCHEMA="${DATABASE_SCHEMA:-public}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export JWT_SECRET="${JWT_SECRET:-local-development-secret-change-me}"
export ADMIN_TOKENS="${ADMIN_TOKENS:-local:local-admin-token}"
export ADMIN_READONLY_TOKENS="${ADMIN_READONLY_TOKENS:-viewer:local-viewer-token}"
export STREAM_PARTITIONS="${STREAM_PARTITIONS:-1}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export RUST_LOG="${RUST_LOG:-info,actix_server=warn}"

echo "==> building"
cargo build --workspace --bins
BIN=target/debug

echo "==> migrating ($DATABASE_SCHEMA)"
"$BIN/admin-api" migrate

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "==> stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

for svc in command-api query-api admin-api outbox-relay projector-worker; do
  # Each line is prefixed with the service name so the interleaved logs stay readable. The
  # binary itself is the background job, so the trap below signals it (not a pipe stage).
  # The prefixer ignores Ctrl-C so that it prints the service's shutdown lines, then ends
  # when the service closes its output.
  "$BIN/$svc" > >(trap '' INT TERM; exec sed -u "s/^/[$svc] /") 2>&1 &
  pids+=($!)
done

# Wait until every service answers /readyz.
for port in 8080 8081 8082 9101 9102; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
done

user=$(cat /proc/sys/kernel/random/uuid)
cat <<MSG

==> the pipeline is running. Try it:

    TOKEN=\$(JWT_SECRET='$JWT_SECRET' $BIN/command-api token --user $user)
    curl -s -X POST localhost:8080/v1/tasks -H "authorization: Bearer \$TOKEN" \\
         -H 'content-type: application/json' \\
         -d '{"title": "Read chapter 3", "type": "learning", "estimated_minutes": 45}'
    curl -s localhost:8081/v1/me/tasks -H "authorization: Bearer \$TOKEN"

  Operate it (admin-api; its CLI is the same binary):

    curl -s localhost:8082/health/cqrs
    curl -s localhost:8082/admin/cqrs/projections -H 'authorization: Bearer local-admin-token'
    export ADMIN_TOKEN=local-admin-token
    $BIN/admin-api projections
    $BIN/admin-api rebuild task_projection --wait
    $BIN/admin-api dlq stats

    command-api :8080   query-api :8081   admin-api :8082   relay :9101   projector :9102
    Ctrl-C stops everything.

MSG
wait
