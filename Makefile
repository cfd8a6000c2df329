# jupyter-sac: `make up` runs the embedded stack, `make test` sets up and tests.
# Every install step lives here (or in scripts/), so a fresh machine needs only these.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := .npm/node_modules/.bin/configurable-http-proxy
CHP_VERSION := 4.6.3

.PHONY: up test test-fast install system-deps lint bench clean labextension

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The labextension is built and linked by `make labextension`, not by the build hook.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	SKIP_JUPYTER_BUILDER=1 $(BIN)/pip install -q -e ".[all,test]"
	touch $@

$(CHP):
	npm install --silent --no-fund --no-audit --prefix .npm configurable-http-proxy@$(CHP_VERSION)

# The JupyterLab extension: npm ci when the lock changes, build when its sources
# change (jupyter-builder comes from the venv), and link the output into the venv
# (the editable install's counterpart of the wheel's share/jupyter/labextensions).
LABEXT_NODE := labextension/node_modules/.installed
LABEXT_OUT := jupyter_sac/labextension/package.json
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/jupyter-sac
LABEXT_SRC := $(shell find labextension/src labextension/style labextension/schema -type f 2>/dev/null)

$(LABEXT_NODE): labextension/package-lock.json
	cd labextension && npm ci --no-fund --no-audit
	touch $@

$(LABEXT_OUT): $(LABEXT_SRC) labextension/package.json labextension/tsconfig.json $(LABEXT_NODE) | $(VENV)/.installed
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" npm run build:prod
	touch $@

labextension: $(LABEXT_OUT) | $(VENV)/.installed
	@if [ "$$(readlink $(LABEXT_LINK))" != "$(CURDIR)/jupyter_sac/labextension" ]; then \
		echo "linking $(LABEXT_LINK) -> $(CURDIR)/jupyter_sac/labextension"; \
		mkdir -p $(dir $(LABEXT_LINK)); \
		if [ -d $(LABEXT_LINK) ] && [ ! -L $(LABEXT_LINK) ]; then rm -rf $(LABEXT_LINK); fi; \
		ln -sfn $(CURDIR)/jupyter_sac/labextension $(LABEXT_LINK); \
	fi

install: $(VENV)/.installed $(CHP) labextension

system-deps:
	bash scripts/install-system-deps.sh

up: system-deps install
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/sac up

lint: install
	$(BIN)/ruff check jupyter_sac sac_testing tests bench hub_config
	$(BIN)/ruff format --check jupyter_sac sac_testing tests bench hub_config
	$(BIN)/deptry .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd labextension && npm run --silent lint

# What starts no stack runs first, on every core; the stack tests then run one at a
# time (they share session stacks and time their own processes). The slowest stack
# tests are listed at the end, to see where the suite's time goes.
test: system-deps lint
	cd labextension && npx tsc --noEmit && npm test
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not stack" -n auto
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python -m pytest -q -p no:cacheprovider -m stack --durations=25

# Everything that needs no whole stack (pure rules, the store on a real PostgreSQL,
# the extension in-process, manifests, the labextension's unit tests): the loop to
# run while changing code. Tests that start a stack are marked `stack` (conftest.py).
test-fast: install
	cd labextension && npm test --silent
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not stack" -n auto

bench: system-deps install
	SAC_CHP_COMMAND=$(CURDIR)/$(CHP) $(BIN)/python bench/spawn.py

clean:
	rm -rf $(VENV) .npm labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo jupyter_sac/labextension
