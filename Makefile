# Two commands do all set-up (both install into .venv/ first, idempotently):
#   make demo   – the CoD job on the embedded default (local Ray, vLLM teacher pool on CPU)
#   make test   – the test suite (real Ray, Serve, Train + DeepSpeed, vLLM on tiny models)
PY := .venv/bin/python
RECIPE ?= recipes/sst2-cod.yaml
PYTEST_ARGS ?=

.PHONY: install demo smoke test test-slow test-faults test-all lint format

install:
	@bash scripts/install.sh

demo: install
	.venv/bin/raydistill run $(RECIPE) $(ARGS)

smoke: install
	.venv/bin/raydistill run recipes/smoke-cod.yaml $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Ray 2.60 turns token auth on once ~/.ray/auth_token exists; `ray start` heads and
# cluster_utils nodes then need clients in token mode, and Ray reads this at import.
test-slow: install
	RAY_AUTH_MODE=token $(PY) -m pytest -m "slow and not fault_bench" $(PYTEST_ARGS)

# vLLM replica / engine killed mid-generation (6-21 min each on 2 cores).
test-faults: install
	RAY_AUTH_MODE=token $(PY) -m pytest -m fault_bench $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: install
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: install
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
