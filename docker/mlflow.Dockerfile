# syntax=docker/dockerfile:1
# MLflow tracking server for docker/compose.yaml: the lmrec lock's MLflow (3.17.2) plus the
# Postgres driver (backend store) and boto3 (artifacts proxied to MinIO/S3 with
# --serve-artifacts, so clients need no S3 credentials for MLflow).
# Build context: docker/ (nothing is copied).
#   docker build -f docker/mlflow.Dockerfile -t lmrec-mlflow:dev docker
FROM python:3.11.14-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5

ENV PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/mlflow \
    PATH=/opt/mlflow/bin:${PATH}

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin mlflow \
 && mkdir -p /opt/mlflow \
 && chown mlflow:mlflow /opt/mlflow

# uid 1000: the unprivileged user created above.
USER 1000
RUN python -m venv "${VIRTUAL_ENV}" \
 && pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" \
      "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
 && mlflow --version

WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
