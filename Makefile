# The two commands of the README: `make run` and `make test`. Both set up what they
# need, idempotently; slow one-time builds are cached under ~/.cache/aiplane.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/aiplane
STAMP := $(VENV)/.installed
EXTRAS ?= local,embeddings,batch,train,observe,kubernetes,dev

.PHONY: run test install lint typecheck unit e2e k8s bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/llama-wheel.sh scripts/llama-server.sh scripts/prometheus.sh $(wildcard scripts/llama-server-patches/*.patch)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	AIPLANE_CACHE=$(CACHE) scripts/llama-server.sh $(PY) $(VENV)/bin/llama-server
	AIPLANE_CACHE=$(CACHE) scripts/prometheus.sh $(VENV)/bin/prometheus
	@if [[ ",$(EXTRAS)," == *,llamacpp-python,* ]]; then AIPLANE_CACHE=$(CACHE) scripts/llama-wheel.sh $(PY); fi
	$(PY) -m pip install -q --find-links $(CACHE)/wheels -e ".[$(EXTRAS)]"
	@touch $(STAMP)

run: install
	$(VENV)/bin/aiplane up

lint: install
	$(VENV)/bin/ruff check aiplane tests bench
	$(VENV)/bin/ruff format --check aiplane tests bench

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

e2e: install
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

k8s: install
	$(PY) -m pytest -q -p no:cacheprovider tests/k8s

test: install lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
