# Two entry points a new user needs: `make quickstart` and `make test`.
# Both create .venv if it is missing and install the project into it (editable).
# On a machine busy with other work: `make quickstart THREADS=1` (torch threads for the run;
# empty: the run's default, one per core).
VENV ?= .venv
THREADS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-slow lint format

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,launchers,search]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) train.py experiment=quickstart $(if $(THREADS),threads=$(THREADS))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow
