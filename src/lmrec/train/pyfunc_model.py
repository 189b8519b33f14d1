"""The MLflow pyfunc wrapper of a trained lmrec model (an MLflow "model from code").

MLflow stores this file itself with the model instead of a pickled object. Input: a
DataFrame with a ``history`` column (each row a list of item ids, oldest first; unknown ids
are ignored). Params: ``k`` (default 10) and ``exclude_seen`` (default True). Output: a
DataFrame with ``item_ids`` and ``scores`` lists, best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from lmrec.artifacts import item_index, read_item_ids
from lmrec.models.registry import load_model


class LmrecPyfunc(mlflow.pyfunc.PythonModel):
    """Top-k recommendations for item-id histories."""

    def load_context(self, context: Any) -> None:
        model_dir = Path(context.artifacts["model"])
        self.model = load_model(model_dir)
        self.item_ids = read_item_ids(model_dir)
        self.index = item_index(self.item_ids)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        k = min(int(params.get("k", 10)), len(self.item_ids))
        exclude_seen = bool(params.get("exclude_seen", True))
        rows = []
        for history in model_input["history"]:
            known = [self.index[i] for i in history if i in self.index]
            hist = np.asarray(known, dtype=np.int64)
            exclude = hist if exclude_seen else np.zeros(0, dtype=np.int64)
            top, scores = self.model.recommend(hist, k, exclude=exclude)
            rows.append({"item_ids": [self.item_ids[i] for i in top], "scores": scores.tolist()})
        return pd.DataFrame(rows)


mlflow.models.set_model(LmrecPyfunc())
