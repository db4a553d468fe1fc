# Every target that runs code depends on the venv stamp, which is rebuilt whenever
# pyproject.toml changes: `make test` and `make serve` work on a fresh clone as-is.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GRPC_ADDRESS ?= 127.0.0.1:9001

.PHONY: test lint typecheck unit serve validate protos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

serve: $(STAMP)
	$(BIN)/extauth serve --config-dir authconfigs --grpc-address $(GRPC_ADDRESS) \
		--default-config agentgateway-system.apikey-auth

validate: $(STAMP)
	$(BIN)/extauth validate authconfigs

# Regenerate the committed protobuf modules; tests/test_wire.py fails when they are stale.
protos: $(STAMP)
	$(BIN)/python -m extauth.wire.generate

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
