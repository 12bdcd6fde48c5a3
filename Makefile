# eddy's two entry points: `make demo` and `make test`. Each creates .venv when
# missing and installs the project into it (re-installing when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.eddy-installed

.PHONY: demo test test-chaos bench lint format clean

# The compiled kernels are built by the install: editing their sources re-installs.
$(STAMP): pyproject.toml setup.py $(wildcard models/kernels/*.pyx)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eddy up --demo --exit-when-done --fresh --data-dir eddy-data/demo --partitions 1

test: $(STAMP) lint
	$(BIN)/python -m pytest

test-chaos: $(STAMP)
	CHAOS_SEEDS=1,2,3 $(BIN)/python -m pytest tests/chaos -m chaos -s

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/maintenance_search.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) eddy-data .pytest_cache .ruff_cache .hypothesis
