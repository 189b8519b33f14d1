# syntax=docker/dockerfile:1
# lmrec serving image, the fallback to `bentoml containerize` (see docker/README.md, "Serving").
# It runs `lmrec serve --host 0.0.0.0` (BentoML 1.4, port 3000) on a serving bundle mounted
# at /bundle (LMREC_BUNDLE): `lmrec package` writes one per alias under
# artifacts/package/bundles/<alias>/, `lmrec bundle --model DIR --out DIR` builds one without
# the registry. The full lmrec lock is installed (CPU torch), as in `make setup`'s .venv (the
# image runs the `lmrec` CLI); the Bento built by `bentoml containerize` is slimmer: only
# what the serving code imports (lmrec.requirements.SERVING at the lock's versions).
# Like the Bento, the image carries its serve params: params.yaml's `serve` block is written
# into the installed package (lmrec/serving/serve_params.json) at build time; set
# LMREC_PARAMS to a mounted params file to override it. The user-id salt is not baked in:
# pass LMREC_USER_ID_SALT at run time (the one `lmrec ingest` used), or known users get the
# cold-start answer. LMREC_PRODUCTION=1: the service refuses to start without LMREC_API_TOKEN,
# LMREC_ADMIN_TOKEN (for /admin/reload) and a secret salt (src/lmrec/serving/production.py).
#
# Build from the repository root, then run with a bundle:
#   docker build -f docker/serving.Dockerfile -t lmrec-serving:dev .
#   docker run --rm -p 3000:3000 -e LMREC_API_TOKEN=... -e LMREC_ADMIN_TOKEN=... \
#     -e LMREC_USER_ID_SALT=... \
#     -v "$PWD/artifacts/package/bundles/champion":/bundle:ro lmrec-serving:dev
FROM python:3.11.14-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/lmrec/.venv \
    PATH=/opt/lmrec/.venv/bin:${PATH} \
    BENTOML_HOME=/var/lib/lmrec/bentoml \
    LMREC_BUNDLE=/bundle \
    LMREC_FEEDBACK_DB=/var/lib/lmrec/feedback/feedback.db \
    LMREC_PRODUCTION=1

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin lmrec \
 && mkdir -p /opt/lmrec /var/lib/lmrec/bentoml /var/lib/lmrec/feedback /bundle \
 && chown -R lmrec:lmrec /opt/lmrec /var/lib/lmrec

# uid 1000: the unprivileged user created above.
USER 1000
COPY --chown=1000:1000 requirements/lmrec.lock.txt /tmp/requirements/lmrec.lock.txt
RUN python -m venv "${VIRTUAL_ENV}" \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r /tmp/requirements/lmrec.lock.txt

COPY --chown=1000:1000 pyproject.toml README.md /tmp/lmrec-src/
COPY --chown=1000:1000 src/ /tmp/lmrec-src/src/
RUN pip install --no-cache-dir --no-deps /tmp/lmrec-src \
 && rm -rf /tmp/lmrec-src /tmp/requirements \
 && lmrec serve --help > /dev/null

# The repo's params.yaml's `serve` block, carried by the installed package as in the Bento
# (lmrec.serving.bento); LMREC_PARAMS=<a mounted params file> overrides it.
COPY --chown=1000:1000 params.yaml /tmp/params.yaml
RUN python -c "import pathlib, lmrec; from lmrec.config import load_params; \
from lmrec.serving.bento import write_serve_params; \
write_serve_params(load_params('/tmp/params.yaml').serve, pathlib.Path(lmrec.__file__).parent)" \
 && rm /tmp/params.yaml
WORKDIR /opt/lmrec
VOLUME ["/var/lib/lmrec/feedback"]
EXPOSE 3000

# /readyz is 503 until the model is loaded; urlopen raises on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]

ENTRYPOINT ["lmrec", "serve", "--host", "0.0.0.0", "--port", "3000"]
