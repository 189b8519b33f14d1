"""One-figure PNG report of an evaluation comparison (candidate vs champion vs baselines).

The input is the ``comparison`` mapping the evaluate stage writes::

    {"stage": "test",
     "models": {"candidate": {"label": ..., "overall": {...}, "slices": {...},
                              "popularity_curve": [...]},
                "champion": {...},          # optional
                "baseline:mf": {...}, ...},
     "catalog_popularity_curve": [...]}

Metric values may be None or NaN (a slice with no users): they are drawn as absent bars
marked "n/a", never as zeros. The structure itself is checked before anything is drawn, so
a malformed comparison fails with a message naming the missing part and writes no file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmrec.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIG_SIZE = (15.0, 5.0)
DPI = 100
# (slice, metric) per bar group: new items ranked against the whole catalog (hr@10: few hits),
# and the cold-only diagnostic (recall among cold items).
SLICE_METRICS = [
    ("overall", "ndcg@10"),
    ("short_history", "ndcg@10"),
    ("long_tail", "ndcg@10"),
    ("new_items", "hr@10"),
    ("cold_items", "recall@10"),
]
CHAMPION_METRICS = ["hr@10", "ndcg@10", "mrr@10", "recall@20", "coverage@10"]
NO_CHAMPION = "no champion yet: first registration"
_CURVE = (list, tuple, np.ndarray)


def write_report(comparison: Mapping[str, Any], path: Path) -> None:
    """Render the comparison as a three-panel PNG and write it atomically to ``path``.

    Args:
        comparison: the evaluate stage's comparison (see the module docstring).
        path: where the PNG goes; left untouched if validation or rendering fails.

    Raises:
        ValueError: the comparison lacks a required part or has one of the wrong type.
    """
    validate_comparison(comparison)
    fig = render(comparison)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def validate_comparison(comparison: Any) -> None:
    """Raise ``ValueError`` naming the first missing or mistyped part of a comparison."""
    _require(comparison, "comparison", Mapping)
    _require(comparison.get("stage"), "comparison['stage']", str)
    models = _require(comparison.get("models"), "comparison['models']", Mapping)
    if models.get("candidate") is None:
        raise ValueError("comparison['models'] is missing 'candidate'")
    for name, model in _present(models).items():
        where = f"comparison['models'][{name!r}]"
        _require(model, where, Mapping)
        _require(model.get("overall"), f"{where}['overall']", Mapping)
        if model.get("slices") is not None:
            _require(model["slices"], f"{where}['slices']", Mapping)
        if model.get("popularity_curve") is not None:
            _require(model["popularity_curve"], f"{where}['popularity_curve']", _CURVE)
    if comparison.get("catalog_popularity_curve") is not None:
        curve = comparison["catalog_popularity_curve"]
        _require(curve, "comparison['catalog_popularity_curve']", _CURVE)


def _require(value: Any, where: str, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is present and of ``kind``, else a ``ValueError`` naming ``where``."""
    if value is None:
        raise ValueError(f"{where} is missing")
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{where} must be a {expected}, got {type(value).__name__}")
    return value


def render(comparison: Mapping[str, Any]) -> Figure:
    """Draw the three panels on a new figure (no pyplot, so no global backend state)."""
    from matplotlib.figure import Figure  # heavy: imported only when a report is drawn

    fig = Figure(figsize=FIG_SIZE, dpi=DPI, layout="constrained")
    ax_slices, ax_pop, ax_champ = fig.subplots(1, 3)
    models = _present(comparison["models"])
    colors = _colors(models)
    _slice_panel(ax_slices, models, colors)
    _popularity_panel(ax_pop, models, colors, comparison.get("catalog_popularity_curve"))
    _champion_panel(ax_champ, models, colors)
    fig.suptitle(f"lmrec evaluation: {comparison['stage']} split")
    return fig


def _present(models: Mapping[str, Any]) -> dict[str, Any]:
    """The models that are there: ``"champion": None`` means the same as no champion."""
    return {name: model for name, model in models.items() if model is not None}


def _colors(models: Mapping[str, Any]) -> dict[str, str]:
    """One colour per model, the champion's fixed so reports with and without it match."""
    baselines = [name for name in models if name not in ("candidate", "champion")]
    return {name: f"C{i}" for i, name in enumerate(["candidate", "champion", *baselines])}


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns and draws a box
        ax.legend(fontsize=8)


def _num(value: Any) -> float:
    """A metric value as a float; None and anything non-numeric become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _label(name: str, model: Mapping[str, Any]) -> str:
    return str(model.get("label") or name)


def _slice_value(model: Mapping[str, Any], slice_name: str, metric: str) -> float:
    if slice_name == "overall":
        block = model["overall"]
    else:
        block = (model.get("slices") or {}).get(slice_name)
    return _num(block.get(metric)) if isinstance(block, Mapping) else math.nan


def _bars(ax: Axes, pos: np.ndarray, values: list[float], horizontal: bool, **kw: Any) -> None:
    """Bars at ``pos``; a non-finite value draws no bar, only a small "n/a" mark."""
    values_arr = np.array(values, dtype=np.float64)
    finite = np.isfinite(values_arr)
    draw = ax.barh if horizontal else ax.bar
    draw(pos, np.where(finite, values_arr, 0.0), **kw)
    for p in pos[~finite]:
        xy = (0.0, p) if horizontal else (p, 0.0)
        ax.annotate(
            "n/a",
            xy,
            xytext=(3, 0) if horizontal else (0, 2),
            textcoords="offset points",
            ha="left" if horizontal else "center",
            va="center" if horizontal else "bottom",
            fontsize=7,
            color="gray",
        )


def _slice_panel(ax: Axes, models: Mapping[str, Any], colors: dict[str, str]) -> None:
    x = np.arange(len(SLICE_METRICS), dtype=np.float64)
    width = 0.8 / len(models)
    for i, (name, model) in enumerate(models.items()):
        values = [_slice_value(model, s, m) for s, m in SLICE_METRICS]
        pos = x - 0.4 + width * (i + 0.5)
        _bars(ax, pos, values, False, width=width, color=colors[name], label=_label(name, model))
    ax.set_xticks(x, [f"{s}\n({m})" for s, m in SLICE_METRICS])
    ax.set_ylabel("ndcg@10 (new_items: hr@10; cold_items: recall@10)")
    ax.set_title("Metric by slice")
    _legend(ax)


def _curve(values: Any) -> np.ndarray:
    """A curve as float64, None entries as NaN; a missing curve is empty."""
    return np.array([_num(v) for v in ([] if values is None else values)], dtype=np.float64)


def _popularity_panel(
    ax: Axes, models: Mapping[str, Any], colors: dict[str, str], catalog: Any
) -> None:
    for name, model in models.items():
        curve = _curve(model.get("popularity_curve"))
        if curve.size:
            ax.plot(
                np.arange(1, curve.size + 1),
                curve,
                marker="o",
                markersize=3,
                color=colors[name],
                label=_label(name, model),
            )
    catalog_curve = _curve(catalog)
    if catalog_curve.size:
        ax.plot(
            np.arange(1, catalog_curve.size + 1),
            catalog_curve,
            linestyle="--",
            color="black",
            label="catalog (training interactions)",
        )
    ax.set_xlabel("item-popularity bin (1 = most popular)")
    ax.set_ylabel("share of top-10 slots")
    ax.set_title("Popularity bias")
    _legend(ax)


def _champion_panel(ax: Axes, models: Mapping[str, Any], colors: dict[str, str]) -> None:
    ax.set_title("Champion vs candidate (overall)")
    if models.get("champion") is None:
        ax.text(0.5, 0.5, NO_CHAMPION, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    y = np.arange(len(CHAMPION_METRICS), dtype=np.float64)
    for offset, name in ((-0.2, "candidate"), (0.2, "champion")):
        model = models[name]
        values = [_num(model["overall"].get(m)) for m in CHAMPION_METRICS]
        _bars(
            ax, y + offset, values, True, height=0.4, color=colors[name], label=_label(name, model)
        )
    ax.set_yticks(y, CHAMPION_METRICS)
    ax.invert_yaxis()  # first metric on top
    ax.set_xlabel("value")
    _legend(ax)
