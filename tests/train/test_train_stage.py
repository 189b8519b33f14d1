"""The train stage on the tiny profile: real MLflow (SQLite), real checkpoints, real torchrun.

Covers: outputs and the MLflow run (params, per-epoch metrics, tags, a loadable pyfunc model
with a signature); kill mid-run + ``--resume`` == an uninterrupted run; ``torchrun
--nproc_per_node 2`` (gloo, CPU) == one process; refusing a checkpoint of other params;
LoRA fine-tuning of the encoder (CPU here; bf16 on CUDA in the GPU test).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lmrec import artifacts
from lmrec.cli.dvc_stages import stage_argv
from lmrec.models.registry import load_model
from lmrec.stages import embed

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
torch.set_num_threads(1)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_split_dir, tiny_params) -> Path:
    """A directory holding the tiny profile's preprocess and embed outputs."""
    root = tmp_path_factory.mktemp("train")
    shutil.copytree(tiny_split_dir, root / "artifacts/preprocess")
    embed.run(tiny_params.embed, root / "artifacts/preprocess", root / "artifacts/embed", False)
    return root


def write_params(root: Path, name: str, **train: object) -> Path:
    """The tiny profile with ``train.sequential`` (and other train keys) overridden."""
    raw = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    sequential = train.pop("sequential", {})
    raw["train"]["sequential"].update(sequential)
    raw["train"].update(train)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def lmrec_train(
    root: Path, params: Path, tag: str, *extra: str, launcher=None, popen: dict | None = None
):
    options = ["--params", str(params), "--out", f"out-{tag}", "--checkpoints", f"ckpt-{tag}"]
    argv = stage_argv("train", *options, "--no-progress", *extra, dvc_yaml=REPO / "dvc.yaml")
    cmd = [*(launcher or [str(BIN / "lmrec")]), *argv[1:]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow-{tag}.db"}
    if popen:
        return subprocess.Popen(cmd, cwd=root, env=env, **popen)
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def history(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_train_writes_model_baselines_metrics_and_an_mlflow_run(workspace):
    params = write_params(workspace, "basic", sequential={"epochs": 3})
    done = lmrec_train(workspace, params, "basic")
    assert done.returncode == 0, done.stderr[-3000:]
    out = workspace / "out-basic"
    assert {p.name for p in (out / "model").iterdir()} == {
        "config.json",
        "weights.safetensors",
        "item_ids.json",
        "encoder.json",
        "training.json",
    }
    assert sorted(p.name for p in (out / "baselines").iterdir()) == ["itemknn", "mf", "popularity"]
    model = load_model(out / "model")
    item_ids = json.loads((out / "model" / "item_ids.json").read_text())
    assert model.n_items == len(item_ids) == 80
    scores = model.score([np.array([0, 1, 2]), np.array([], dtype=np.int64)])
    assert scores.shape == (2, 80) and np.isfinite(scores).all()
    metrics = json.loads((out / "metrics.json").read_text())
    rows = history(out / "history.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    best = max(rows, key=lambda r: r["val_ndcg@10"])
    assert metrics["model"]["best_epoch"] == best["epoch"]
    assert metrics["model"]["val"]["ndcg@10"] == pytest.approx(best["val_ndcg@10"], abs=1e-6)
    assert set(metrics["baselines"]) == {"popularity", "itemknn", "mf"}
    run_facts = json.loads((out / "run.json").read_text())

    # The MLflow run: params, per-epoch metrics, tags, and a pyfunc model with a signature.
    mlflow.set_tracking_uri(f"sqlite:///{workspace}/mlflow-basic.db")
    run = mlflow.get_run(run_facts["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["sequential.epochs"] == "3"
    assert run.data.params["early_stopping.metric"] == "ndcg@10"
    assert run.data.tags["data_dvc_md5"] and run.data.tags["git_commit"]
    assert run.data.tags["encoder"] == "all-MiniLM-L6-v2"
    client = mlflow.MlflowClient()
    curve = client.get_metric_history(run.info.run_id, "val_ndcg_at_10")
    assert [m.step for m in curve] == [0, 1, 2]
    assert [m.value for m in curve] == pytest.approx([r["val_ndcg@10"] for r in rows], abs=1e-6)
    assert "baseline.itemknn.val_ndcg_at_10" in run.data.metrics
    pyfunc = mlflow.pyfunc.load_model(run_facts["mlflow_model_uri"])
    assert pyfunc.metadata.signature is not None
    answer = pyfunc.predict(
        pd.DataFrame({"history": [item_ids[:3], ["no-such-item"]]}), params={"k": 5}
    )
    assert [len(x) for x in answer["item_ids"]] == [5, 5]
    assert not set(answer["item_ids"][0]) & set(item_ids[:3])  # seen items excluded


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(workspace):
    # 8 batches per epoch so that the kill lands inside an epoch; patience high enough
    # that all 8 epochs run.
    params = write_params(
        workspace,
        "resume",
        sequential={"epochs": 8, "batch_size": 16},
        early_stopping={"metric": "ndcg@10", "patience": 8, "min_delta": 0.0},
        mlflow={"tracking_uri": "sqlite:///unused.db", "experiment": "lmrec", "log_model": False},
    )
    full = lmrec_train(workspace, params, "full")
    assert full.returncode == 0, full.stderr[-3000:]

    proc = lmrec_train(
        workspace, params, "cut", popen={"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    )
    meta = workspace / "ckpt-cut" / "last" / "checkpoint.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if meta.is_file() and json.loads(meta.read_text())["epochs_done"] >= 2:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    # Killed as soon as epoch 2's checkpoint is seen: inside epoch 3 (epochs take ~0.1 s here,
    # so any fixed sleep could outlast the whole run).
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = json.loads(meta.read_text())["epochs_done"]
    assert 2 <= killed_after < 8
    assert not (workspace / "out-cut").exists()  # nothing half-written

    resumed = lmrec_train(workspace, params, "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {killed_after}" in resumed.stdout
    a, b = history(workspace / "out-full/history.csv"), history(workspace / "out-cut/history.csv")
    assert len(a) == len(b) == 8
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("loss", "val_ndcg@10", "val_hr@10", "val_mrr@10"):
            assert row_a[key] == pytest.approx(row_b[key], abs=1e-6), key
    full_metrics = json.loads((workspace / "out-full/metrics.json").read_text())
    cut_metrics = json.loads((workspace / "out-cut/metrics.json").read_text())
    assert cut_metrics["model"]["val"] == pytest.approx(full_metrics["model"]["val"], abs=1e-6)
    # Same seed, same data: the resumed model is the uninterrupted one, byte for byte.
    for name in ("weights.safetensors", "config.json", "training.json"):
        full_bytes = (workspace / "out-full/model" / name).read_bytes()
        assert (workspace / "out-cut/model" / name).read_bytes() == full_bytes, name
    training = json.loads((workspace / "out-cut/run.json").read_text())
    assert training["resumed_from"] == killed_after
    # The resumed run is the same MLflow run, with one metric point per epoch.
    mlflow.set_tracking_uri(f"sqlite:///{workspace}/mlflow-cut.db")
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1
    curve = mlflow.MlflowClient().get_metric_history(training["mlflow_run_id"], "loss")
    assert sorted({m.step for m in curve}) == list(range(8))

    # A checkpoint of other params is refused, never continued.
    other = write_params(workspace, "other", sequential={"epochs": 8, "batch_size": 16, "lr": 0.01})
    refused = lmrec_train(workspace, other, "cut", "--resume")
    assert refused.returncode == 1
    assert "written for other params or data" in refused.stderr + refused.stdout


def test_torchrun_two_gloo_processes_match_one_process(workspace):
    # Without dropout both runs compute the same gradients (DDP averages the shares), so
    # validation metrics agree to float tolerance.
    params = write_params(
        workspace,
        "ddp",
        sequential={"epochs": 4, "batch_size": 32, "dropout": 0.0, "id_dropout": 0.0},
        mlflow={"tracking_uri": "sqlite:///unused.db", "experiment": "lmrec", "log_model": False},
    )
    one = lmrec_train(workspace, params, "one")
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "lmrec.cli"]
    two = lmrec_train(workspace, params, "two", launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = history(workspace / "out-one/history.csv"), history(workspace / "out-two/history.csv")
    assert len(a) == len(b) == 4
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a["loss"] == pytest.approx(row_b["loss"], abs=0.05)
        for key in ("val_ndcg@10", "val_hr@10"):
            assert row_a[key] == pytest.approx(row_b[key], abs=2e-3), key
    training = json.loads((workspace / "out-two/model/training.json").read_text())
    assert training["world_size"] == 2


def test_lora_finetuning_changes_item_embeddings_and_saves_the_adapter(workspace):
    params = write_params(
        workspace,
        "lora",
        sequential={
            "epochs": 1,
            "encoder_finetune": "lora",
            "text_max_length": 16,
            "encoder_lr": 1e-3,
        },
        mlflow={"tracking_uri": "sqlite:///unused.db", "experiment": "lmrec", "log_model": False},
    )
    done = lmrec_train(workspace, params, "lora")
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = workspace / "out-lora" / "model"
    assert (model_dir / "encoder_adapter" / "adapter_model.safetensors").is_file()
    model = load_model(model_dir)
    frozen, _ = artifacts.load_embeddings(workspace / "artifacts/embed")
    assert model.item_embeddings.shape == frozen.shape
    assert not np.allclose(model.item_embeddings, frozen, atol=1e-4)  # the encoder moved
    assert np.isfinite(model.score([np.array([0, 1])])).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_lora_on_cuda(workspace):
    params = write_params(
        workspace,
        "gpu",
        device="cuda",
        sequential={"epochs": 2, "encoder_finetune": "lora", "precision": "bf16"},
        mlflow={"tracking_uri": "sqlite:///unused.db", "experiment": "lmrec", "log_model": False},
    )
    done = lmrec_train(workspace, params, "gpu")
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((workspace / "out-gpu/model/config.json").read_text())
    assert config["params"]["precision"] == "bf16"
    assert (workspace / "out-gpu/model/encoder_adapter/adapter_model.safetensors").is_file()
