# lmrec — `make demo` runs the pipeline on MovieLens-100K; `make test` runs the test suite.
# Both set up the two environments first (idempotent: redone only when a lock file changes).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
AIRFLOW_VENV := .venv-airflow
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: help setup demo test test-fast mlflow-ui bench-setup bench lint format lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(AIRFLOW_VENV)/.installed  ## build .venv (lmrec) and .venv-airflow (Airflow)

$(VENV)/.installed: requirements/lmrec.lock.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements/lmrec.lock.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	@touch $@

$(AIRFLOW_VENV)/.installed: requirements/airflow.lock.txt
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet -r requirements/airflow.lock.txt
	@touch $@

demo: setup  ## ingest MovieLens-100K, snapshot it with DVC, run the pipeline
	lmrec ingest --snapshot
	dvc repro
	@echo; echo "Validation report: artifacts/validation/report.md"; \
	 echo "GX data docs:      artifacts/validation/data_docs/index.html"; \
	 echo "Split:             artifacts/preprocess/ (summary.json)"; \
	 echo "Model:             artifacts/train/model/ (metrics: artifacts/train/metrics.json)"; \
	 echo "Evaluation:        artifacts/evaluate/report.png (metrics.json, comparison.json)"; \
	 echo "Gate verdict:      artifacts/gate/gate.json"; \
	 echo "Registry:          lmrec versions   (MLflow UI: make mlflow-ui)"

test: setup  ## run the whole test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup  ## skip the slow (real DVC / subprocess) tests
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

MLFLOW_PORT ?= 5000
mlflow-ui: setup  ## the MLflow UI on the local store (runs, reports, versions): http://127.0.0.1:$(MLFLOW_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} \
	  --default-artifact-root ./mlruns --host 127.0.0.1 --port $(MLFLOW_PORT)

bench-setup: setup  ## install the benchmark peers: .[bench] into .venv, RecBole into .venv-recbole
	$(VENV)/bin/pip install --quiet -e ".[bench]"
	bash benchmarks/peers/setup_recbole.sh

bench: bench-setup  ## quality benchmark on MovieLens-100K (needs `make demo` first; ~1 h uncached)
	$(VENV)/bin/python benchmarks/quality.py

lint:  ## ruff check + format check
	$(VENV)/bin/ruff check src tests dags benchmarks
	$(VENV)/bin/ruff format --check src tests dags benchmarks

format:  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests dags benchmarks
	$(VENV)/bin/ruff format src tests dags benchmarks

lock:  ## re-resolve both environments and rewrite the lock files
	$(VENV)/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/lmrec.lock.txt
	$(AIRFLOW_VENV)/bin/pip freeze > requirements/airflow.lock.txt

clean:  ## remove pipeline outputs (not data/, not the environments)
	rm -rf artifacts
