# syntax=docker/dockerfile:1
# lmrec CUDA trainer: `torchrun --nproc_per_node ${NPROC:-1} -m lmrec.cli train ...` on one or
# more GPUs (DDP over NCCL), for a `docker run --gpus`, a Kubernetes Job, an Airflow
# DockerOperator/KubernetesPodOperator, or `docker compose --profile train run --rm trainer`.
#
# Assumption (not checked here: this machine reaches PyPI only): torch 2.13.0 is published on
# the PyTorch CUDA 12.8 index as 2.13.0+cu128. If it is not, pass another CUDA flavour,
# e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (any 12.x <= the
# host driver's CUDA version works: the wheels bring their own CUDA runtime, cuDNN and NCCL,
# so the base image only has to expose the driver, which the -base- image does).
#
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t lmrec-trainer:dev .
# Run on a checkout with the preprocess and embed outputs (dvc pull, or a shared volume):
#   docker run --rm --gpus all -e NPROC=2 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#     -v "$PWD":/workspace lmrec-trainer:dev
FROM nvidia/cuda:12.8.1-base-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DVC_S3_VERSION=3.3.0
ARG S3FS_VERSION=2026.9.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11 (lmrec requires >=3.11,<3.12; Ubuntu 22.04 ships 3.10) from the deadsnakes PPA.
# Packages come from a PPA whose versions move, so they are not pinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*' \
 && useradd --create-home --uid 1000 --shell /bin/bash lmrec \
 && mkdir -p /opt/lmrec /workspace \
 && chown lmrec:lmrec /opt/lmrec /workspace

# uid 1000: the unprivileged user created above.
USER 1000
ENV VIRTUAL_ENV=/opt/lmrec/.venv \
    PATH=/opt/lmrec/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# torch (CUDA build) first, then the lock (torch==2.13.0 is already satisfied by +cu128),
# then the DVC S3 plugin so a job can `dvc pull`/`dvc push` against the MinIO/S3 remote.
COPY --chown=1000:1000 requirements/lmrec.lock.txt /tmp/requirements/lmrec.lock.txt
RUN python3.11 -m venv "${VIRTUAL_ENV}" \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r /tmp/requirements/lmrec.lock.txt \
 && pip install --no-cache-dir -c /tmp/requirements/lmrec.lock.txt \
      "dvc-s3==${DVC_S3_VERSION}" "s3fs==${S3FS_VERSION}"

COPY --chown=1000:1000 pyproject.toml README.md /tmp/lmrec-src/
COPY --chown=1000:1000 src/ /tmp/lmrec-src/src/
RUN pip install --no-cache-dir --no-deps /tmp/lmrec-src \
 && rm -rf /tmp/lmrec-src /tmp/requirements \
 && lmrec --help > /dev/null \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY --chown=root:root --chmod=0755 docker/trainer-entrypoint.sh /usr/local/bin/lmrec-train

WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/lmrec-train"]
# The dvc.yaml train stage's arguments; override them (or pass a command such as
# `lmrec evaluate ...`, `dvc pull`, `bash`) after the image name.
CMD ["--params", "params.yaml", "--no-progress", "--split", "artifacts/preprocess", "--embeddings", "artifacts/embed", "--out", "artifacts/train", "--checkpoints", "artifacts/checkpoints/train"]
