# syntax=docker/dockerfile:1
# lmrec Airflow image (api-server, scheduler, dag-processor, triggerer, Celery workers).
#
# Two environments, as in `make setup` (Airflow and BentoML pin OpenTelemetry differently):
#   * Airflow 3.1.8 from requirements/airflow.lock.txt, in the base image's own environment;
#   * the lmrec package (requirements/lmrec.lock.txt) in a second venv, /opt/lmrec/.venv.
#     DAG tasks call its CLI (${LMREC_VENV}/bin/lmrec, ${LMREC_VENV}/bin/dvc) or run in it
#     through @task.external_python(python="/opt/lmrec/.venv/bin/python"); Airflow never
#     imports torch.
#
# Build from the repository root (the context must be the repo root):
#   docker build -f docker/airflow.Dockerfile -t lmrec-airflow:dev .
# GPU Celery worker: the same image with the CUDA torch build in the lmrec venv
# (the wheels bring their own CUDA runtime; the host needs the NVIDIA driver and the
# NVIDIA Container Toolkit):
#   docker build -f docker/airflow.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t lmrec-airflow-gpu:dev .
FROM apache/airflow:3.1.8-python3.11

ARG AIRFLOW_VERSION=3.1.8
ARG TORCH_VERSION=2.13.0
# cpu for the scheduler/default workers; https://download.pytorch.org/whl/cu128 for the GPU worker.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The DVC S3 plugin (MinIO remote) is not in lmrec.lock.txt; these versions resolve against it
# (s3fs is released in lockstep with the locked fsspec 2026.9.0).
ARG DVC_S3_VERSION=3.3.0
ARG S3FS_VERSION=2026.9.0

USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# git: DVC and lmrec's MLflow tags (git_commit) read the workspace checkout, which may be
# owned by another uid when bind-mounted, hence safe.directory. /opt/airflow/auth holds the
# SimpleAuthManager's generated passwords (a volume in compose). Group 0 may write, as in the
# base image, so the containers can run as any uid with gid 0 (AIRFLOW_UID).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && apt-get autoremove -yqq --purge \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*' \
 && mkdir -p /opt/lmrec/workspace /opt/airflow/auth \
 && chown -R airflow:0 /opt/lmrec /opt/airflow/auth \
 && chmod -R g+rwX /opt/lmrec /opt/airflow/auth
# 50000 is the base image's airflow user.
USER 50000

# 1. Airflow itself, from the lock (apache-airflow pinned again, as the image docs advise, so
#    nothing in the lock can move Airflow). The base image's Celery and Postgres providers stay.
COPY --chown=50000:0 requirements/airflow.lock.txt /tmp/requirements/airflow.lock.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements/airflow.lock.txt \
 && python -c "import airflow.providers.celery, airflow.providers.postgres, psycopg2"

# 2. The lmrec venv: torch first from the chosen PyTorch index (2.13.0+cpu or +cu128 both
#    satisfy the lock's torch==2.13.0), then the lock, then the S3 plugin for DVC.
ENV LMREC_VENV=/opt/lmrec/.venv \
    LMREC_WORKSPACE=/opt/lmrec/workspace
COPY --chown=50000:0 requirements/lmrec.lock.txt /tmp/requirements/lmrec.lock.txt
RUN python -m venv "${LMREC_VENV}" \
 && export PIP_USER=false \
 && "${LMREC_VENV}/bin/pip" install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && "${LMREC_VENV}/bin/pip" install --no-cache-dir -r /tmp/requirements/lmrec.lock.txt \
 && "${LMREC_VENV}/bin/pip" install --no-cache-dir -c /tmp/requirements/lmrec.lock.txt \
      "dvc-s3==${DVC_S3_VERSION}" "s3fs==${S3FS_VERSION}"

# 3. The lmrec package itself (not editable), then a smoke test of both CLIs.
COPY --chown=50000:0 pyproject.toml README.md /tmp/lmrec-src/
COPY --chown=50000:0 src/ /tmp/lmrec-src/src/
RUN PIP_USER=false "${LMREC_VENV}/bin/pip" install --no-cache-dir --no-deps /tmp/lmrec-src \
 && rm -rf /tmp/lmrec-src /tmp/requirements \
 && "${LMREC_VENV}/bin/lmrec" --help > /dev/null \
 && "${LMREC_VENV}/bin/dvc" version > /dev/null \
 && airflow version

# 4. The DAGs (dags/ in the repo) into the image's DAGs folder.
COPY --chown=50000:0 dags/ /opt/airflow/dags/
