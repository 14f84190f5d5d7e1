#!/usr/bin/env bash
# `make observe`: Prometheus (and Grafana, when installed) against the services `make run`
# starts, with the shipped alert rules and dashboard. Run `make run` in another terminal first.
#
#   Prometheus  http://127.0.0.1:9090  (PROMETHEUS_PORT; Alerts tab: the shipped rules live)
#   Grafana     http://127.0.0.1:3000  (GRAFANA_PORT; only if grafana-server is installed:
#                                       the "CQRS pipeline" dashboard, anonymous viewer)
#
# Prometheus is Debian's package, installed with apt-get when missing and this runs as root
# (or with INSTALL=1). Data lives in .run/observe/ and is kept between runs. Ctrl-C stops.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf '==> %s\n' "$*" >&2; }
prom_port=${PROMETHEUS_PORT:-9090}
grafana_port=${GRAFANA_PORT:-3000}
dir=.run/observe
mkdir -p "$dir"

if ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" != 0 ] && [ "${INSTALL:-0}" != 1 ]; then
    say "prometheus is not installed: apt-get install -y prometheus (or run with INSTALL=1)"
    exit 3
  fi
  say "installing prometheus (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The compose configuration, pointed at make run's ports and this checkout's rules.
cat > "$dir/prometheus.yml" <<YAML
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ["$root/deploy/prometheus/rules/*.yml"]
scrape_configs:
  - {job_name: command-api, static_configs: [{targets: ["127.0.0.1:8080"]}]}
  - {job_name: query-api, static_configs: [{targets: ["127.0.0.1:8081"]}]}
  - {job_name: admin-api, static_configs: [{targets: ["127.0.0.1:8082"]}]}
  - {job_name: outbox-relay, static_configs: [{targets: ["127.0.0.1:9101"]}]}
  - {job_name: projector-worker, static_configs: [{targets: ["127.0.0.1:9102"]}]}
YAML

pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 &
pids+=($!)
say "Prometheus: http://127.0.0.1:$prom_port (log: $dir/prometheus.log)"

grafana=$(command -v grafana-server || command -v grafana || true)
if [ -n "$grafana" ]; then
  mkdir -p "$dir/grafana/provisioning/datasources" "$dir/grafana/provisioning/dashboards"
  sed "s|http://prometheus:9090|http://127.0.0.1:$prom_port|" deploy/grafana/provisioning/datasources/prometheus.yml \
    > "$dir/grafana/provisioning/datasources/prometheus.yml"
  sed "s|/var/lib/grafana/dashboards|$root/deploy/grafana/dashboards|" deploy/grafana/provisioning/dashboards/dashboards.yml \
    > "$dir/grafana/provisioning/dashboards/dashboards.yml"
  args=(--homepath /usr/share/grafana)
  [ "$(basename "$grafana")" = grafana ] && args=(server "${args[@]}")
  GF_PATHS_PROVISIONING="$root/$dir/grafana/provisioning" GF_PATHS_DATA="$root/$dir/grafana/data" \
  GF_PATHS_LOGS="$root/$dir/grafana" GF_SERVER_HTTP_ADDR=127.0.0.1 GF_SERVER_HTTP_PORT="$grafana_port" \
  GF_AUTH_ANONYMOUS_ENABLED=true GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer \
    "$grafana" "${args[@]}" >"$dir/grafana.log" 2>&1 &
  pids+=($!)
  say "Grafana: http://127.0.0.1:$grafana_port (dashboard \"CQRS pipeline\"; log: $dir/grafana.log)"
else
  say "Grafana is not installed (not packaged by Debian): the dashboard is deploy/grafana/dashboards/cqrs-pipeline.json;"
  say "its expressions run as they are in Prometheus' graph page (with \$__rate_interval as 30s and \$projection as .+)"
fi
say "scraping make run's services on 8080 8081 8082 9101 9102; Ctrl-C stops"
wait
