# Hyperblock: `make run` serves the portal with demo data; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
export PORT

.PHONY: run test install migrate lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependencies change, so a second `make run` starts in seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	@mkdir -p var
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py createcachetable

# bin/run.py seeds the demo data first, with the local Stripe up, then starts everything.
run: migrate
	$(BIN)/python bin/run.py

test: install
	env -u DATABASE_URL $(BIN)/python manage.py makemigrations --check --dry-run --settings=portal.settings.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	env -u DATABASE_URL $(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && env -u DATABASE_URL $(BIN)/mypy

# Benchmarks (bench/): offerings search on SQLite and PostgreSQL, reservation throughput.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf var $(VENV) *.egg-info
