# The two commands: `make run` (the whole platform on its embedded default) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-containers unit lint bench clean-data install catalogue tools deploy-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# checkov in a virtualenv of its own: its pins conflict with requirements.lock (docs/decisions/0042)
TOOLS := .venv-tools

tools: $(TOOLS)/.installed

$(TOOLS)/.installed: requirements-tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.lock
	touch $@

run: install
	$(BIN)/python -m devstack

test: install tools
	$(BIN)/python -m pytest

# the integration and end-to-end suite against PostgreSQL 16 and Apache Kafka in Docker containers
# (testcontainers, tests/backends.py) instead of the embedded PostgreSQL and Tansu; needs a Docker engine
test-containers: install
	MEMBERSHIP_TEST_BACKEND=containers $(BIN)/python -m pytest -m "integration or e2e"

# the deployment checks alone: every overlay renders, validates (Kubernetes 1.30 and the newest known) and
# passes checkov; the compose file validates against the compose specification (tests/deploy)
deploy-check: install tools
	$(BIN)/python -m pytest tests/deploy -q

# the gate CI runs before the tests: lint and format (ruff), types (mypy --strict where it reaches)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install tools
	$(BIN)/python -m pytest -m "not integration and not e2e"

# every budget of SPEC §10 on an embedded stack of its own, beside pgbench (bench/run.py; about 20 minutes;
# make bench BENCH_ARGS=--quick is a five-minute smoke test)
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# the event catalogue (AsyncAPI 3.0), generated from shared/events.py and the services' definitions
# (through a temporary file, so a failing generator leaves the committed one as it was)
catalogue: install
	$(BIN)/python -m shared.catalogue > docs/asyncapi.yaml.tmp && mv docs/asyncapi.yaml.tmp docs/asyncapi.yaml

clean-data:
	rm -rf .data
