# lmrec — `make demo` runs the pipeline on MovieLens-100K; `make test` runs the test suite.
# Both set up the two environments first (idempotent: redone only when a lock file changes).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
AIRFLOW_VENV := .venv-airflow
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
# `make test` runs the suite's files on this many pytest-xdist workers (one file per worker at
# a time, so a module's fixtures are built once); TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2

.PHONY: help setup demo serve stop test test-fast mlflow-ui airflow cluster-up cluster-serve cluster-screenshot cluster-down bench-setup bench lint format lock clean

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

demo: setup  ## ingest MovieLens-100K, run the pipeline (train -> gate -> refit -> register -> package), serve it
	lmrec ingest --snapshot
	dvc repro
	@echo; echo "Validation report: artifacts/validation/report.md"; \
	 echo "Split:             artifacts/preprocess/ (summary.json)"; \
	 echo "Candidate model:   artifacts/train/model/ (metrics: artifacts/train/metrics.json)"; \
	 echo "Evaluation:        artifacts/evaluate/report.png (metrics.json, comparison.json)"; \
	 echo "Gate verdict:      artifacts/gate/gate.json"; \
	 echo "Served model:      artifacts/refit/model/ (refit on every event: artifacts/refit/refit.json)"; \
	 echo "Registry:          lmrec versions   (MLflow UI: make mlflow-ui)"; \
	 echo "Bento:             artifacts/package/package.json"
	@$(MAKE) --no-print-directory serve

SERVE_PORT ?= 3000
serve: setup  ## start the packaged champion in the background on SERVE_PORT and answer a sample request
	@if [ -f artifacts/serve.pid ] && kill -0 $$(cat artifacts/serve.pid) 2>/dev/null; then \
	  echo "already serving (pid $$(cat artifacts/serve.pid)); make stop first"; exit 0; fi; \
	mkdir -p artifacts; \
	setsid nohup lmrec serve --port $(SERVE_PORT) > artifacts/serve.log 2>&1 & echo $$! > artifacts/serve.pid; \
	for i in $$(seq 1 120); do \
	  [ "$$(curl -s -o /dev/null -w '%{http_code}' localhost:$(SERVE_PORT)/readyz)" = 200 ] && break; \
	  grep -q "loading the model failed" artifacts/serve.log && break; sleep 1; \
	done; \
	if [ "$$(curl -s -o /dev/null -w '%{http_code}' localhost:$(SERVE_PORT)/readyz)" != 200 ]; then \
	  echo "the service did not become ready; artifacts/serve.log says:"; grep -E "Error|error" artifacts/serve.log | tail -3; \
	  $(MAKE) --no-print-directory stop; exit 1; fi; \
	echo; echo "Service on http://localhost:$(SERVE_PORT) (log: artifacts/serve.log; stop: make stop)"; \
	echo '$$ curl -X POST localhost:$(SERVE_PORT)/recommend -H "content-type: application/json" -d '"'"'{"user_id": "1", "k": 3, "explain": true}'"'"; \
	curl -sf -X POST localhost:$(SERVE_PORT)/recommend -H 'content-type: application/json' \
	  -d '{"user_id": "1", "k": 3, "explain": true}' | python3 -m json.tool

stop:  ## stop the service started by make serve / make demo
	@if [ -f artifacts/serve.pid ]; then kill -- -$$(cat artifacts/serve.pid) 2>/dev/null || kill $$(cat artifacts/serve.pid) 2>/dev/null; rm -f artifacts/serve.pid; echo stopped; else echo "not running"; fi

test: setup  ## run the whole test suite (on TEST_WORKERS workers)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup  ## skip the slow (real DVC / subprocess) tests
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

MLFLOW_PORT ?= 5000
mlflow-ui: setup  ## the MLflow UI on the local store (runs, reports, versions): http://127.0.0.1:$(MLFLOW_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} \
	  --default-artifact-root ./mlruns --host 127.0.0.1 --port $(MLFLOW_PORT)

AIRFLOW_HOME_DIR := $(CURDIR)/.airflow
AIRFLOW_PASSWORDS := $(AIRFLOW_HOME_DIR)/simple_auth_manager_passwords.json.generated
airflow: setup  ## Airflow standalone with dags/ (lmrec_retrain, lmrec_monitor): http://localhost:8080
	@mkdir -p $(AIRFLOW_HOME_DIR)
	@echo "Airflow UI: http://localhost:8080 (user admin; password printed below and kept in $(AIRFLOW_PASSWORDS))"
	@( for i in $$(seq 1 300); do [ -s $(AIRFLOW_PASSWORDS) ] && break; sleep 1; done; \
	   [ -s $(AIRFLOW_PASSWORDS) ] && echo "==> Airflow login (user: password): $$(cat $(AIRFLOW_PASSWORDS))" ) &
	PATH=$(CURDIR)/$(AIRFLOW_VENV)/bin:$$PATH AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) \
	  AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  LMREC_VENV=$(CURDIR)/$(VENV) $(AIRFLOW_VENV)/bin/airflow standalone

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

cluster-up: setup  ## the production topology as processes (Postgres, Redis, S3 remote, MLflow server, Airflow Celery): cluster/cluster.py
	$(VENV)/bin/python cluster/cluster.py up

cluster-serve:  ## serve the newest champion Bento on the cluster, from a virtualenv of its own requirements
	$(VENV)/bin/python cluster/cluster.py serve

cluster-screenshot:  ## docs/airflow-trigger-form.png: the cluster UI's trigger form (headless Debian chromium)
	$(VENV)/bin/python cluster/screenshot.py

cluster-down:  ## stop what cluster-up started
	$(VENV)/bin/python cluster/cluster.py down

lock:  ## re-resolve both environments and rewrite the lock files
	$(VENV)/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/lmrec.lock.txt
	$(AIRFLOW_VENV)/bin/pip freeze > requirements/airflow.lock.txt

clean:  ## remove pipeline outputs (not data/, not the environments)
	rm -rf artifacts
