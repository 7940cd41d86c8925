# make install:   .venv with torch (CPU build first: see pyproject) and the project.
# make demo:      a real study end to end on the embedded default (local Ray, sqlite MLflow).
# make test:      the whole test suite (what .ci/run calls, after make lint).
# make test-fast: the unit tests only (no sweep end to end), a few minutes.
# make browser-check-deps: Debian's chromium, for tests/test_mlflow_ui.py's check of MLflow's
#                 UI in a real headless browser (skipped, with the reason, without it).
# make lint:      ruff (lint and format check), mypy, and the layering contract (import-linter).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint bench studies clean browser-check-deps

$(BIN)/orch: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a bare "torch" requirement would fetch a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,lint]"
	touch $(BIN)/orch

install: $(BIN)/orch

demo: install
	$(BIN)/orch studies
	$(BIN)/orch sweep optimizers --quick
	$(BIN)/orch ls

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

browser-check-deps:
	apt-get update && apt-get install -y chromium

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every full study into one store, then dashboards/README.md's tables and dashboards/results/
# from it (hours on 2 CPUs). Fails first if a claim of the catalogue is unaccounted for.
studies: install
	$(BIN)/orch claims --catalog ../shared/claims.md > /dev/null
	$(BIN)/orch record --tracking-uri sqlite:///$(CURDIR)/studies/mlflow.db

# The bench extra (Ray Tune, Hydra) once per pyproject change; then every scenario (~15 min).
$(VENV)/.bench-extra: pyproject.toml $(BIN)/orch
	$(BIN)/python -m pip install -q -e ".[bench]"
	touch $@

bench: install $(VENV)/.bench-extra
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts
