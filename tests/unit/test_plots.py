"""The evaluate stage's DVC plot files: wide, a series per model, in step with dvc.yaml."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmrec.evaluation.plots import CURVE_COLUMNS, slice_column, write_curve_csv, write_slices_csv

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
SLICES = ("new_items", "cold_items", "short_history", "long_tail", "worst_user_group")


def model(label: str, scale: float, bins: int = 4) -> dict[str, Any]:
    """A model's results shaped like the evaluate stage's comparison entry."""
    return {
        "label": label,
        "overall": {"ndcg@10": 0.4 * scale, "hr@10": 0.6 * scale},
        "slices": {
            "new_items": {"hr@10": 0.2 * scale, "ndcg@10": 0.1},
            "cold_items": {"recall@10": 0.5 * scale},
            "short_history": {"ndcg@10": 0.3 * scale},
            "long_tail": {"ndcg@10": 0.1 * scale},
            "worst_user_group": {"ndcg@10": 0.05 * scale},
        },
        "popularity_curve": [scale / bins] * bins,
    }


def comparison(baselines: list[str], champion: bool = False) -> dict[str, Any]:
    models = {"candidate": model("candidate (sequential)", 1.0)}
    if champion:
        models["champion"] = model("champion v3", 0.9)
    models |= {f"baseline:{name}": model(f"baseline {name}", 0.5) for name in baselines}
    return {"models": models, "catalog_popularity_curve": [0.4, 0.3, 0.2, 0.1]}


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_slices_one_row_per_model_one_column_per_slice(tmp_path):
    path = tmp_path / "slices.csv"
    write_slices_csv(path, comparison(["mf"], champion=True))
    rows = read(path)
    assert [r["model"] for r in rows] == ["candidate", "champion", "baseline:mf"]
    assert rows[1]["label"] == "champion v3"
    assert list(rows[0]) == ["model", "label", *(slice_column(s) for s in ("overall", *SLICES))]
    assert slice_column("overall") == "overall ndcg@10"
    assert slice_column("new_items") == "new_items hr@10"  # new items: few hits over the catalog
    assert slice_column("cold_items") == "cold_items recall@10"
    assert float(rows[0]["overall ndcg@10"]) == pytest.approx(0.4)
    assert float(rows[2]["cold_items recall@10"]) == pytest.approx(0.25)


def test_missing_values_are_nan_never_empty(tmp_path):
    """An empty cell would draw as 0 in Vega-Lite; nan is left out."""
    comp = comparison(["mf"])
    comp["models"]["candidate"]["slices"]["long_tail"]["ndcg@10"] = None
    comp["models"]["candidate"]["slices"]["short_history"]["ndcg@10"] = float("inf")
    del comp["models"]["baseline:mf"]["slices"]["worst_user_group"]  # a slice one model lacks
    comp["models"]["baseline:mf"]["popularity_curve"][2] = None
    write_slices_csv(tmp_path / "slices.csv", comp)
    write_curve_csv(tmp_path / "curve.csv", comp)
    cand, mf = read(tmp_path / "slices.csv")
    assert cand["long_tail ndcg@10"] == "nan" and cand["short_history ndcg@10"] == "nan"
    assert mf["worst_user_group ndcg@10"] == "nan"
    assert [r["baseline:mf"] for r in read(tmp_path / "curve.csv")][2] == "nan"


def test_curve_one_row_per_bin_one_column_per_model(tmp_path):
    path = tmp_path / "popularity_curve.csv"
    write_curve_csv(path, comparison(["popularity", "mf"]))
    rows = read(path)
    assert [r["bin"] for r in rows] == ["1", "2", "3", "4"]  # bin 1: the most popular items
    assert list(rows[0]) == ["bin", *CURVE_COLUMNS, "baseline:popularity", "baseline:mf"]
    assert [float(r["catalog"]) for r in rows] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert [float(r["candidate"]) for r in rows] == pytest.approx([0.25] * 4)
    # no champion yet: the column dvc.yaml names is there, and nothing in it is drawn
    assert all(math.isnan(float(r["champion"])) for r in rows)


def _plot_fields(definition: dict[str, Any]) -> dict[str, set[str]]:
    """File -> the columns a top-level plot definition of dvc.yaml reads from it."""
    ((plot_id, props),) = definition.items()
    fields: dict[str, set[str]] = {}
    y = props["y"]
    if not isinstance(y, dict):
        y = {plot_id: y}
    for file, columns in y.items():
        columns = [columns] if isinstance(columns, str) else columns
        fields.setdefault(file, set()).update(columns)
        if isinstance(props.get("x"), str):
            fields[file].add(props["x"])
    return fields


@pytest.mark.parametrize("params_file", ["params.yaml", "profiles/tiny.yaml"])
@pytest.mark.parametrize("champion", [False, True])
def test_dvc_yaml_plots_read_columns_the_writers_write(tmp_path, params_file, champion):
    """dvc.yaml names the models of train.baselines as columns: a column it names that the
    file lacks fails `dvc plots show`, one it leaves out is never drawn."""
    params = yaml.safe_load((REPO / params_file).read_text())
    comp = comparison(list(params["train"]["baselines"]), champion=champion)
    out = tmp_path / "artifacts" / "evaluate"
    write_slices_csv(out / "slices.csv", comp)
    write_curve_csv(out / "popularity_curve.csv", comp)
    definitions = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    read_from: dict[str, set[str]] = {}
    for definition in definitions:
        for file, columns in _plot_fields(definition).items():
            read_from.setdefault(file, set()).update(columns)
    assert set(read_from) == {
        "artifacts/evaluate/slices.csv",
        "artifacts/evaluate/popularity_curve.csv",
    }
    for file, columns in read_from.items():
        header = next(csv.reader((tmp_path / file).open()))
        assert columns <= set(header), f"{file}: no column {columns - set(header)}"
    curve_header = next(csv.reader((out / "popularity_curve.csv").open()))
    assert read_from["artifacts/evaluate/popularity_curve.csv"] == set(curve_header)


@pytest.mark.slow
def test_dvc_plots_show_draws_a_series_per_model(tmp_path):
    """The real `dvc plots show --json` on the repository's plot definitions: the curve has a
    line per model (DVC's ``field``), each slice chart a bar per model (its ``model`` rows)."""
    ws = tmp_path / "ws"
    out = ws / "artifacts" / "evaluate"
    comp = comparison(["popularity", "itemknn", "mf"])  # no champion yet: first run
    write_slices_csv(out / "slices.csv", comp)
    write_curve_csv(out / "popularity_curve.csv", comp)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=ws, check=True, timeout=120)
    done = subprocess.run(
        [str(DVC), "plots", "show", "--json"], cwd=ws, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert not shown.get("errors"), shown["errors"]
    data = shown["data"]
    curve = data["artifacts/evaluate/popularity_curve.csv"][0]["content"]
    assert curve["encoding"]["color"]["field"] == "rev"  # colour: the revision
    assert curve["encoding"]["strokeDash"]["field"] == "field"  # a line per column
    points = curve["data"]["values"]
    lines = {p["field"] for p in points}
    assert lines == {"catalog", "candidate", "champion", *comp["models"]}
    drawn = {p["field"] for p in points if p["dvc_inferred_y_value"] != "nan"}
    assert drawn == lines - {"champion"}
    assert len(points) == len(lines) * 4  # 4 bins each
    slice_charts = [key for key in data if key.startswith("evaluate: ")]
    assert len(slice_charts) == 6
    for key in slice_charts:
        chart = data[key][0]["content"]
        assert chart["encoding"]["y"]["field"] == "model"
        assert [p["model"] for p in chart["data"]["values"]] == list(comp["models"])
