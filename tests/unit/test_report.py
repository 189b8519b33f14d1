"""The PNG evaluation report: renders every shape of comparison, writes atomically."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg
from matplotlib.figure import Figure

from lmrec.evaluation import report as R

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Figure 15 x 5 inches at dpi 100; imread gives [height, width, RGBA].
EXPECTED_SHAPE = (500, 1500, 4)


def model_block(label: str, scale: float, seed: int) -> dict[str, Any]:
    """Metrics shaped like the evaluate stage's, scaled so models differ visibly."""
    overall = {
        "hr@10": 0.30 * scale,
        "ndcg@10": 0.15 * scale,
        "mrr@10": 0.10 * scale,
        "recall@20": 0.40 * scale,
        "coverage@10": 0.25 * scale,
        "novelty@10": 9.0,
        "popularity_bias@10": 0.6,
        "n_users": 500,
        "n_nonfinite": 0,
    }
    curve = np.random.default_rng(seed).dirichlet(np.linspace(3, 0.5, 10))
    return {
        "label": label,
        "overall": overall,
        "slices": {
            "new_items": {"hr@10": 0.03 * scale, "ndcg@10": 0.01, "n_users": 40},
            "cold_items": {"hr@10": 0.1, "ndcg@10": 0.05, "recall@10": 0.08 * scale, "n_users": 40},
            "short_history": {**overall, "ndcg@10": 0.12 * scale},
            "long_tail": {**overall, "ndcg@10": 0.05 * scale},
        },
        "popularity_curve": curve.tolist(),
    }


@pytest.fixture
def comparison() -> dict[str, Any]:
    return {
        "stage": "test",
        "models": {
            "candidate": model_block("candidate (sequential)", 1.2, 0),
            "champion": model_block("champion v3", 1.0, 1),
            "baseline:mf": model_block("baseline mf", 0.7, 2),
            "baseline:pop": model_block("baseline popularity", 0.4, 3),
        },
        "catalog_popularity_curve": np.linspace(0.3, 0.01, 10).tolist(),
    }


def without_champion(comparison: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(comparison)
    del out["models"]["champion"]
    return out


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return mpimg.imread(path)


def leftovers(directory: Path) -> list[str]:
    """Temporary files ``atomic_path`` would leave if it failed to clean up."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- rendering


def test_writes_png_of_expected_size(comparison, tmp_path):
    path = tmp_path / "plots" / "report.png"  # parent is created
    R.write_report(comparison, path)
    pixels = read_png(path)
    assert pixels.shape == EXPECTED_SHAPE
    assert pixels[..., :3].std() > 0  # something was drawn
    assert leftovers(path.parent) == []


def test_different_inputs_give_different_images(comparison, tmp_path):
    R.write_report(comparison, tmp_path / "a.png")
    R.write_report(without_champion(comparison), tmp_path / "b.png")
    changed = copy.deepcopy(comparison)
    changed["models"]["candidate"]["overall"]["ndcg@10"] = 0.9
    R.write_report(changed, tmp_path / "c.png")
    a, b, c = (read_png(tmp_path / f"{n}.png") for n in "abc")
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_same_input_gives_same_image(comparison, tmp_path):
    R.write_report(comparison, tmp_path / "a.png")
    R.write_report(copy.deepcopy(comparison), tmp_path / "b.png")
    assert np.array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png"))


def test_panels_titles_and_no_champion_text(comparison):
    fig = R.render(comparison)
    assert "test" in fig.get_suptitle()
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[0] == "Metric by slice"
    assert titles[1] == "Popularity bias"
    assert titles[2].startswith("Champion vs candidate")
    assert R.NO_CHAMPION not in [t.get_text() for t in fig.axes[2].texts]
    # four models -> four lines plus the dashed catalog line
    assert len(fig.axes[1].get_lines()) == 5
    assert fig.axes[1].get_lines()[-1].get_linestyle() == "--"

    fig = R.render(without_champion(comparison))
    assert R.NO_CHAMPION in [t.get_text() for t in fig.axes[2].texts]


def test_champion_none_is_the_same_as_no_champion(comparison, tmp_path):
    none_champion = copy.deepcopy(comparison)
    none_champion["models"]["champion"] = None
    R.write_report(none_champion, tmp_path / "a.png")
    R.write_report(without_champion(comparison), tmp_path / "b.png")
    assert np.array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png"))


def test_none_and_nan_values_are_absent_bars(comparison, tmp_path):
    broken = copy.deepcopy(comparison)
    cand = broken["models"]["candidate"]
    cand["slices"]["cold_items"] = {"hr@10": None, "ndcg@10": None, "recall@10": None}
    cand["slices"]["long_tail"]["ndcg@10"] = math.nan
    cand["overall"]["mrr@10"] = None
    cand["popularity_curve"][3] = None
    del broken["models"]["champion"]["slices"]["short_history"]
    broken["models"]["baseline:mf"]["popularity_curve"] = []

    fig = R.render(broken)
    slice_bars = [p.get_height() for p in fig.axes[0].patches]
    assert all(math.isfinite(h) for h in slice_bars)
    # candidate: long_tail + cold_items; champion: short_history
    assert [t.get_text() for t in fig.axes[0].texts].count("n/a") == 3
    assert [t.get_text() for t in fig.axes[2].texts].count("n/a") == 1

    R.write_report(broken, tmp_path / "r.png")
    assert read_png(tmp_path / "r.png").shape == EXPECTED_SHAPE


def test_numpy_curves_and_missing_optional_parts(comparison, tmp_path):
    minimal = {
        "stage": "val",
        "models": {"candidate": {"overall": {"ndcg@10": np.float64(0.2)}}},
        "catalog_popularity_curve": np.full(10, 0.1),
    }
    R.write_report(minimal, tmp_path / "m.png")
    assert read_png(tmp_path / "m.png").shape == EXPECTED_SHAPE
    del minimal["catalog_popularity_curve"]
    R.write_report(minimal, tmp_path / "m.png")  # overwrites in place
    assert read_png(tmp_path / "m.png").shape == EXPECTED_SHAPE


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("models"), r"comparison\['models'\] is missing"),
        (lambda c: c.pop("stage"), r"comparison\['stage'\] is missing"),
        (lambda c: c["models"].pop("candidate"), "missing 'candidate'"),
        (lambda c: c["models"]["baseline:mf"].pop("overall"), r"'baseline:mf'\]\['overall'\]"),
        (lambda c: c["models"].__setitem__("champion", [1, 2]), "must be a Mapping"),
        (lambda c: c["models"]["candidate"].__setitem__("slices", 3), r"\['slices'\] must be"),
        (lambda c: c.__setitem__("catalog_popularity_curve", "x"), "catalog_popularity_curve"),
    ],
)
def test_malformed_comparison_raises_and_writes_nothing(comparison, tmp_path, mutate, message):
    mutate(comparison)
    path = tmp_path / "report.png"
    with pytest.raises(ValueError, match=message):
        R.write_report(comparison, path)
    assert not path.exists()
    assert leftovers(tmp_path) == []


def test_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="comparison must be a Mapping"):
        R.write_report([1, 2, 3], tmp_path / "report.png")  # type: ignore[arg-type]


def test_failure_while_saving_keeps_the_old_file(comparison, tmp_path, monkeypatch):
    path = tmp_path / "report.png"
    R.write_report(comparison, path)
    before = path.read_bytes()

    def half_write(self: Figure, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG_SIGNATURE + b"truncated")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        R.write_report(without_champion(comparison), path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_baseline_colours_do_not_depend_on_the_champion(comparison):
    def line_colours(comp: dict[str, Any]) -> dict[str, Any]:
        lines = R.render(comp).axes[1].get_lines()
        return {line.get_label(): line.get_color() for line in lines}

    with_champ, without = line_colours(comparison), line_colours(without_champion(comparison))
    assert without.items() <= with_champ.items()
