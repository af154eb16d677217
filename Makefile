# Two commands matter on a fresh machine (Python 3.11): `make demo` and `make test`.
# Both create .venv and install the pinned requirements on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint install stop-serving clean

$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	@touch $(STAMP)

install: $(STAMP)

## Run the full retraining DAG on the bundled demo data (embedded default: SQLite + local MLflow).
demo: $(STAMP)
	@bin/demo

## The test suite (what CI runs): everything but the tests marked slow (the native stack, the fault suite).
test: $(STAMP)
	@source bin/env.sh && $(PY) -m pytest -m "not slow"

## Every test, the native stack (real Airflow scheduler, MLflow, PostgreSQL) and the fault suite included.
test-all: $(STAMP)
	@source bin/env.sh && $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## Stop the model server `make demo` left running on 127.0.0.1.
stop-serving: $(STAMP)
	@source bin/env.sh && $(PY) -c "from ml.deploy.local import stop_server; \
	  print('stopped' if stop_server('employee-attrition') else 'nothing was serving')"

clean:
	rm -rf .ct

.PHONY: stack stack-status stack-down

## The docker-compose services as local processes on 127.0.0.1, for machines without Docker (docs/stack.md):
## PostgreSQL from the machine (127.0.0.1:5432), MLflow with basic-auth, Airflow api-server, scheduler,
## dag-processor and triggerer. Prints the URLs and where the admin passwords are.
stack: $(STAMP)
	@bin/stack up

stack-status: $(STAMP)
	@bin/stack status

stack-down: $(STAMP)
	@bin/stack down
