#!/usr/bin/env bash
# Fuzzes a running API from its own OpenAPI document (GET <base>/openapi.json) with
# schemathesis: any 5xx, or any answer the document does not promise (status code, content
# type, body schema), fails the run. It starts nothing: point it at a running service. The
# command-api, query-api and admin-api test suites run it against the app they spawn.
#
#   scripts/fuzz-api.sh BASE_URL [more schemathesis run options]
#
#   FUZZ_AUTHORIZATION  the Authorization header of every request, e.g. "Bearer <jwt>"
#                       (`<binary> token --user <uuid>` prints a JWT)
#   FUZZ_MAX_EXAMPLES   generated cases per operation (default 30)
#   FUZZ_SEED           seed of a reproducible run (default: random; the report prints it)
#   FUZZ_WORKERS        concurrent workers (default 1: with more, hypothesis parses lambda
#                       sources on several threads, which CPython before 3.11.9/3.12.5 can fail
#                       with "SystemError: AST constructor recursion depth mismatch")
#   FUZZ_VENV           where schemathesis is installed (default: .venv-fuzz in the repository)
#
# schemathesis is installed with pip into FUZZ_VENV on first use (PyPI only); python3-venv is
# installed with apt-get when missing and this runs as root (or with INSTALL=1).
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${FUZZ_VENV:-$root/.venv-fuzz}
say() { printf '==> %s\n' "$*" >&2; }

if [ $# -lt 1 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
base=${1%/}
shift

command -v python3 >/dev/null || { say "python3 is not installed (Debian: apt-get install -y python3 python3-venv)"; exit 3; }

ensure_venv_module() {
  python3 -c 'import venv, ensurepip' 2>/dev/null && return 0
  if [ "$(id -u)" != 0 ] && [ "${INSTALL:-0}" != 1 ]; then
    say "python3 cannot make virtual environments: apt-get install -y python3-venv, then run again"
    exit 3
  fi
  say "installing python3-venv (apt-get install -y python3-venv)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}

installed() {
  [ -x "$venv/bin/schemathesis" ] &&
    [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" = "schemathesis, version $SCHEMATHESIS_VERSION" ]
}

if ! installed; then
  # Test binaries of two APIs may get here at once: one installs, the other waits for it.
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! installed; then
    ensure_venv_module
    say "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  flock -u 9
fi

# Whatever the document promises: no 5xx; only documented statuses, content types, headers and
# bodies; 405 with a true Allow for undocumented methods; no operation that needs credentials
# answers without them. (positive_data_acceptance and negative_data_rejection are left out:
# JSON Schema's `integer` admits 1.0, which the APIs refuse, and some headers are more lenient
# than their documented pattern.)
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance
checks+=,unsupported_method,allow_header_conformance,ignored_auth

args=(
  run "$base/openapi.json"
  --url "$base"
  --checks "$checks"
  --max-examples "${FUZZ_MAX_EXAMPLES:-30}"
  --workers "${FUZZ_WORKERS:-1}"
  --request-timeout 10
  --generation-database none
  --no-color
)
[ -n "${FUZZ_AUTHORIZATION:-}" ] && args+=(--header "Authorization: $FUZZ_AUTHORIZATION")
[ -n "${FUZZ_SEED:-}" ] && args+=(--seed "$FUZZ_SEED")

# Run from a scratch directory: schemathesis may leave files in its working directory.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$venv/bin/schemathesis" "${args[@]}" "$@"
