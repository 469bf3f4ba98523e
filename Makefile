# kotel — build, run and test on a fresh Debian machine (as root: eBPF needs it).
#
#   make run    install what is missing, build, run kotel on the embedded default
#   make test   install what tests need (incl. a real OpenTelemetry Collector
#               built from Go modules, and Prometheus), then run every test

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)

APT_PACKAGES := clang-19 llvm-19 libbpf-dev bpftool iproute2 curl ca-certificates
TEST_APT_PACKAGES := prometheus python3 openssl nftables e2fsprogs util-linux gcc libbpf-tools
CARGO ?= cargo

.PHONY: run test setup setup-test build otelcol lint bench clean

run: setup build
	mkdir -p /var/lib/kotel
	./target/release/kotel run

build:
	$(CARGO) build --release --locked

test: setup setup-test otelcol
	$(CARGO) test --workspace --locked --no-fail-fast -- --test-threads=2

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench:
	$(CARGO) bench --workspace

# System packages, installed only when missing.
setup:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

setup-test:
	@missing=$$(for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v go >/dev/null || { echo "error: Go is needed to build the OpenTelemetry Collector for the tests (expected at /usr/local/go/bin)" >&2; exit 1; }

# The real collector the integration tests run against (cached by manifest hash).
otelcol:
	bash integration/otelcol/build.sh

clean:
	$(CARGO) clean
