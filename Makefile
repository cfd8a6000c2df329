# jupyter-sac: `make up` runs the embedded stack, `make test` sets up and tests.
# Every install step lives here (or in scripts/), so a fresh machine needs only these.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := .npm/node_modules/.bin/configurable-http-proxy
CHP_VERSION := 4.6.3

.PHONY: up test install system-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(CHP):
	npm install --silent --no-fund --no-audit --prefix .npm configurable-http-proxy@$(CHP_VERSION)

labextension:
	@if [ -f labextension/package.json ]; then $(BIN)/jupyter-builder build labextension; fi

install: $(VENV)/.installed $(CHP) labextension

system-deps:
	bash scripts/install-system-deps.sh

up: system-deps install
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/sac up

lint: install
	$(BIN)/ruff check jupyter_sac tests bench hub_config

test: system-deps install
	$(BIN)/ruff check jupyter_sac tests bench hub_config
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python -m pytest -q -p no:cacheprovider

bench: system-deps install
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python bench/spawn.py

clean:
	rm -rf $(VENV) .npm
