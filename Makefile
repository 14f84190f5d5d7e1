# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test build migrate fmt lint bench soak chaos help observe check-deploy

help:
	@echo "make run      run the whole pipeline locally (PostgreSQL + Redis + five services)"
	@echo "make test     build and run the whole test suite"
	@echo "make migrate  apply migrations to DATABASE_URL / DATABASE_SCHEMA"
	@echo "make fmt      format the code"
	@echo "make lint     rustfmt check + clippy with warnings as errors"
	@echo "make bench    relay, projector, self-repair, snapshot and API throughput and latency next to this machine's limits (release)"
	@echo "make soak     10 minutes of steady load: storage and memory must stay flat"
	@echo "make chaos    the long chaos and self-repair profiles (relays and projectors killed, Redis wiped or failed over)"
	@echo "make observe  Prometheus (and Grafana if installed) with the shipped rules and dashboard, scraping make run's services"
	@echo "make check-deploy  lint and validate deploy/ and k8s/ offline, unit-test the alerts, run the dashboard test"

run:
	scripts/run-local.sh

# The pipeline tests start the built binaries, so they are built first. nextest runs every
# test in its own process (and in parallel); plain `cargo test` is the fallback.
test:
	scripts/ensure-services.sh
	scripts/check-deploy.sh --no-dashboard
	cargo build --workspace --bins
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

build:
	cargo build --workspace --bins

migrate:
	cargo run -q -p admin-api -- migrate

fmt:
	cargo fmt --all

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks run in release mode against the local servers; figures go in BENCHMARKS.md.
bench:
	scripts/ensure-services.sh
	cargo build --release -q -p outbox-relay -p projector-worker -p command-api -p query-api -p bench
	target/release/relay-bench
	target/release/projector-bench
	target/release/repair-bench
	target/release/snapshot-bench
	target/release/api-bench

# The chaos tests at full size (CI runs a short profile of the same tests).
chaos:
	scripts/ensure-services.sh
	cargo build --workspace --bins
	CHAOS_EVENTS=50000 CHAOS_COMMANDS=20000 CHAOS_REPAIR_COMMANDS=6000 CHAOS_REBUILD_TASKS=100000 \
		cargo nextest run -p pipeline-tests --no-capture -E 'test(/killed_at_random/) | binary(self_repair)'

# Ten minutes of steady load through the release relay and projector (SOAK_SECONDS to change).
soak:
	scripts/ensure-services.sh
	cargo build --release -q -p outbox-relay -p projector-worker -p bench
	target/release/soak

# Prometheus (and Grafana when installed) against `make run`'s services: docs/runbook.md.
observe:
	scripts/observe.sh

# Every deployment artefact checked offline, and the dashboard test (make test runs the same).
check-deploy:
	scripts/check-deploy.sh
