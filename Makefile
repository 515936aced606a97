# Usage Portal: `make run` serves the portal with a worker and demo data; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# make test runs the suite twice: on PostgreSQL with Redis, then on the embedded default.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/usage_portal
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
PYTEST_ARGS ?=

.PHONY: run test test-postgres test-embedded lint format install demo migrate bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --no-input

demo: migrate
	$(BIN)/python manage.py demo_data

run: demo
	@echo "Serving http://127.0.0.1:$${USAGE_PORTAL_PORT:-8000} with a Celery worker (Ctrl-C to stop)."
	$(BIN)/honcho start

test: install
	$(BIN)/python -m usage_portal.check_services "$(TEST_DATABASE_URL)" "$(TEST_BROKER_URL)"
	$(MAKE) test-postgres
	$(MAKE) test-embedded

test-postgres: install
	DATABASE_URL="$(TEST_DATABASE_URL)" CELERY_BROKER_URL="$(TEST_BROKER_URL)" \
		$(BIN)/pytest $(PYTEST_ARGS)

# The embedded default: SQLite and the filesystem broker. Browser tests ran above already.
test-embedded: install
	env -u DATABASE_URL -u CELERY_BROKER_URL USAGE_PORTAL_VAR_DIR=var/test-embedded \
		$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports --no-logo

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	DATABASE_URL="$(TEST_DATABASE_URL)" $(BIN)/python bench/ingest.py

clean:
	rm -rf var/test-embedded .pytest_cache
