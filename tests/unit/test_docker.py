"""docker/ read statically (no Docker engine here): the serving service and image get what
the service needs to answer known users with their own history."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lmrec.data.contract import SALT_ENV

DOCKER = Path(__file__).resolve().parents[2] / "docker"
REQUIRED_SALT = "${LMREC_USER_ID_SALT:?set LMREC_USER_ID_SALT in docker/.env}"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # `<<:` merges resolved


def test_serving_gets_the_same_required_salt_as_ingest():
    services = _compose()["services"]
    serving = services["lmrec"]["environment"]
    assert serving[SALT_ENV] == REQUIRED_SALT  # no default: compose refuses to start without
    for name in ("airflow-worker", "airflow-worker-gpu", "airflow-scheduler"):
        assert services[name]["environment"][SALT_ENV] == serving[SALT_ENV], name
    example = (DOCKER / ".env.example").read_text()
    assert re.search(rf"^{SALT_ENV}=\S+$", example, re.MULTILINE)


def test_the_serving_image_carries_its_serve_params():
    dockerfile = (DOCKER / "serving.Dockerfile").read_text()
    env_block = dockerfile.split("ENV ", 1)[1].split("\n\n", 1)[0]
    assert "LMREC_PARAMS" not in env_block  # the baked-in serve params are in effect
    assert "write_serve_params(load_params('/tmp/params.yaml').serve" in dockerfile
    assert "lmrec.serving.bento" in dockerfile
    assert "LMREC_PARAMS" not in _compose()["services"]["lmrec"]["environment"]


def test_every_deployment_default_is_production_mode_with_both_tokens_required():
    serving = _compose()["services"]["lmrec"]["environment"]
    assert serving["LMREC_PRODUCTION"] == "1"
    for name in ("LMREC_API_TOKEN", "LMREC_ADMIN_TOKEN"):
        assert serving[name] == f"${{{name}:?set {name} in docker/.env}}"  # no default
        assert re.search(rf"^{name}=\S+$", (DOCKER / ".env.example").read_text(), re.MULTILINE)
    dockerfile = (DOCKER / "serving.Dockerfile").read_text()
    assert "LMREC_PRODUCTION=1" in dockerfile.split("ENV ", 1)[1].split("\n\n", 1)[0]
    bentofile = yaml.safe_load((DOCKER.parent / "bentofile.yaml").read_text())
    assert {"name": "LMREC_PRODUCTION", "value": "1"} in bentofile["envs"]  # the Bento's image
