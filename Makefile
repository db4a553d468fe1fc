# Every target that runs code depends on the venv stamp, which is rebuilt whenever
# pyproject.toml changes: `make demo`, `make test` and `make serve` work on a fresh clone as-is.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GRPC_ADDRESS ?= 127.0.0.1:9001
HTTP_ADDRESS ?= 127.0.0.1:9090

.PHONY: demo test serve validate protos envoy-configs crd bench bench-kube fuzz soak clean

# PYTHONWARNINGS: setuptools warns on every editable install of a flat layout that a folder
# named like the package may shadow it; that is this checkout, on purpose. Other warnings show.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	# xds-protos (dev: the wire tests) ships an older copy of OpenTelemetry's protos under
	# the paths opentelemetry-proto (the otel extra) installs; whichever pip writes last
	# wins, and the OTLP exporter needs its own: put it back.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"
	touch $(STAMP)

# The vanity-key story on localhost: mock upstream, extauth and a real Envoy on :8080.
# DEMO_ARGS="--upstream https://api.openai.com" (with OPENAI_API_KEY set) uses the real provider.
demo: $(STAMP)
	$(BIN)/python -m extauth.demo $(DEMO_ARGS)

# The wire module's type stubs, for mypy: made from the .proto, not committed.
WIRE_STUBS := extauth/wire/ext_authz_pb2.pyi
$(WIRE_STUBS): protos/extauth/wire/ext_authz.proto $(STAMP)
	$(BIN)/python -m extauth.wire.generate --stubs

test: $(STAMP) $(WIRE_STUBS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

serve: $(STAMP)
	$(BIN)/extauth serve --config-dir authconfigs --grpc-address $(GRPC_ADDRESS) \
		--http-address $(HTTP_ADDRESS) --usage-label x-org \
		--default-config agentgateway-system.apikey-auth

validate: $(STAMP)
	$(BIN)/extauth validate authconfigs

# Regenerate the committed protobuf module (and the stubs); tests/test_wire.py fails when
# the module is stale.
protos: $(STAMP)
	$(BIN)/python -m extauth.wire.generate

# Throughput and latency as ratios against baselines measured in the same run, plus the
# micro-benchmarks. Installs h2load and hey with apt if missing. Not part of `make test`.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/pytest tests/test_bench_micro.py --benchmark-enable -q
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# extauth against kube-lite holding 100,000 API-key Secrets: time until ready, RSS, revoking
# a key, a relist after 410 Gone. Not part of `make test` (a small run of it is).
KUBE_BENCH_ARGS ?=
bench-kube: $(STAMP)
	$(BIN)/python bench/kube.py $(KUBE_BENCH_ARGS)

# The long fuzz pass (CI runs a bounded one inside `make test`).
fuzz: $(STAMP)
	EXTAUTH_FUZZ_PROFILE=long $(BIN)/pytest tests/test_fuzz.py -p no:randomly -q

# 10 minutes of load through Envoy at half capacity, with config reloads; prints a report.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python bench/soak.py --duration $(SOAK_SECONDS)

# Regenerate envoy/*.yaml from extauth/envoyconf.py; tests/test_envoyconf.py fails when stale.
envoy-configs: $(STAMP)
	$(BIN)/python -m extauth.envoyconf

# Regenerate deploy/kubernetes/base/crd.yaml from the models; tests/kube/test_crd.py fails when stale.
crd: $(STAMP)
	$(BIN)/python -m extauth.crds

clean:
	rm -rf $(VENV) .demo .mypy_cache .pytest_cache .ruff_cache
