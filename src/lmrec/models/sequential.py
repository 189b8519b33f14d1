"""The LM-powered sequential recommender: text-embedded items, causal-transformer users.

An item's vector is a learned projection of its (precomputed, frozen) text embedding, plus
an ID embedding when enabled. ID embeddings are dropped per item during training
(``id_dropout``) so that text alone must carry an item, and items without training
interactions never use theirs: a cold item is scored from its text alone. A user's vector is
the output of a causal transformer (SASRec-style, pre-LN) at the last of their most recent
``max_len`` items; a history is scored against every item by dot product.

Training is next-item prediction at every position of every training sequence. The loss is a
full softmax over the items seen in training while the catalog has at most
``full_softmax_max_items`` items, and beyond that a sampled softmax whose negatives are drawn
by training popularity and corrected by logQ (Yi et al., 2019). Items without training
interactions are left out of the training softmax: they play the part of items that did not
exist yet, as new items will in production.

The model is split as RecBole splits ``sasrec.py`` from ``trainer.py``:

- ``sequential`` (this module): ``SequentialRecommender``, the ``Recommender`` contract
  (fit, scoring, ``item_matrix``/``user_vectors``/``text_item_vectors``, save/restore).
  It re-exports the names that callers import from here (``__all__``).
- ``sequential_params``: ``resolve_device``, ``resolve_precision``. The hyperparameters,
  ``SequentialParams`` (the defaults, validated), are ``lmrec.config``'s ``train.sequential``
  block.
- ``sequential_net``: the torch network (item tower + causal transformer) and its tokens.
- ``sequential_loss``: ``history_tokens``, ``training_windows`` and ``NextItemObjective``,
  the loss DDP wraps.
- ``sequential_windows``: ``StreamedWindows``, the training windows built batch by batch
  (exactly ``training_windows``'s, without materialising them).
- ``sequential_fit``: the loop (``TrainingLoop``), ``TrainState`` checkpoints,
  ``DataParallel``, ``lr_factor`` and the fine-tuned encoder tower (``build_tower``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch

from lmrec.config import SequentialParams
from lmrec.features.dataset import SplitData
from lmrec.models.base import ModelLoadError, Recommender, params_from_dict
from lmrec.models.sequential_fit import DataParallel, TrainingLoop, TrainState, build_tower
from lmrec.models.sequential_loss import history_tokens, training_windows
from lmrec.models.sequential_net import SequentialNet
from lmrec.models.sequential_params import resolve_device
from lmrec.text.tuning import TextTower

# Names callers import from here, wherever they now live.
__all__ = [
    "DataParallel",
    "EpochCallback",
    "SequentialParams",
    "SequentialRecommender",
    "TrainState",
    "history_tokens",
    "resolve_device",
    "training_windows",
]

#: Called after each epoch with (epoch index from 0, the model); returning True stops training.
EpochCallback = Callable[[int, "SequentialRecommender"], bool]

# Histories scored per forward pass (bounds memory for [chunk, n_items] scores).
_SCORE_CHUNK = 256


class SequentialRecommender(Recommender):
    """Causal-transformer sequential recommender over text-embedded items.

    Args:
        params: hyperparameters.
        item_embeddings: [n_items, d_text] float32 item text embeddings, row = item index;
            None trains on ID embeddings only (then cold items all score alike).
        on_epoch_end: default per-epoch callback for ``fit`` (see ``EpochCallback``).
        item_texts: item text per item index; needed when ``encoder_finetune`` is not
            ``frozen`` (the encoder is then trained on them).
        encoder: the encoder to fine-tune (packaged name or local path).
    """

    name = "sequential"
    params_cls = SequentialParams

    def __init__(
        self,
        params: SequentialParams | None = None,
        item_embeddings: np.ndarray | None = None,
        on_epoch_end: EpochCallback | None = None,
        item_texts: Sequence[str] | None = None,
        encoder: str | None = None,
    ) -> None:
        super().__init__(params)
        self.item_embeddings = None
        if item_embeddings is not None:
            self.item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
            if self.item_embeddings.ndim != 2 or not np.isfinite(self.item_embeddings).all():
                raise ValueError("sequential: item_embeddings must be a finite 2-d array")
        self.item_texts = None if item_texts is None else list(item_texts)
        self.encoder = encoder
        self.on_epoch_end = on_epoch_end
        #: Show a per-epoch progress bar while fitting.
        self.progress = False
        self.net: SequentialNet | None = None
        #: The fine-tuned encoder tower after a ``lora``/``full`` fit (None otherwise).
        self.text_tower: TextTower | None = None
        #: Mean training loss of each epoch run by the last ``fit``.
        self.epoch_losses: list[float] = []
        self.epochs_trained = 0
        self._callback: EpochCallback | None = None
        self._item_cache: torch.Tensor | None = None
        self._loop: TrainingLoop | None = None
        self._resume: TrainState | None = None
        self._parallel = DataParallel()

    @classmethod
    def from_config(
        cls, values: Mapping[str, Any], item_embeddings: np.ndarray | None = None
    ) -> Self:
        """Build an unfitted model from a hyperparameter mapping and optional text embeddings."""
        return cls(params_from_dict(cls.params_cls, values), item_embeddings)

    def fit(
        self,
        split: SplitData,
        *,
        on_epoch_end: EpochCallback | None = None,
        resume: TrainState | None = None,
        parallel: DataParallel | None = None,
    ) -> Self:
        """Fit on ``split``'s training sequences.

        Args:
            split: the data.
            on_epoch_end: per-epoch callback for this call (overrides the constructor's);
                the model can score inside it (e.g. early stopping on validation) and
                ``train_state()`` gives a checkpoint.
            resume: a ``TrainState`` from an earlier fit of the same model on the same
                data; training continues after its last epoch and ends as the
                uninterrupted fit would.
            parallel: this process's part in data-parallel training.
        """
        self._callback = on_epoch_end or self.on_epoch_end
        self._resume, self._parallel = resume, parallel or DataParallel()
        try:
            return super().fit(split)
        finally:
            self._callback, self._resume, self._parallel = None, None, DataParallel()
            self._loop = None

    def train_state(self) -> TrainState:
        """A checkpoint of the fit in progress (valid inside ``on_epoch_end``)."""
        if self._loop is None:
            raise RuntimeError("sequential: train_state() is only available during fit()")
        return self._loop.state()

    # ----------------------------------------------------------------- hooks
    def _fit(self, split: SplitData) -> None:
        p = self.params
        if self.item_embeddings is None and not p.id_embeddings:
            raise ValueError("sequential: id_embeddings=False needs item_embeddings")
        if self.item_embeddings is not None and len(self.item_embeddings) != self.n_items:
            raise ValueError(
                f"sequential: item_embeddings has {len(self.item_embeddings)} rows, "
                f"the split has {self.n_items} items"
            )
        device = resolve_device(p.device)
        _, items = split.train_pairs()
        counts = np.bincount(items, minlength=self.n_items)
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # seed locally, leave the caller's RNG be
            torch.manual_seed(p.seed)
            self.net = self._build_net(torch.from_numpy(counts > 0))
            self.text_tower = build_tower(
                p, self.item_texts, self.encoder, self.item_embeddings, device
            )
            self._loop = TrainingLoop(self.net, self.text_tower, counts, p, device, self._parallel)
            if self._resume is not None:
                self._loop.load(self._resume)
                self._sync_text()
            self._sync_loop()
            self._loop.run(split.train, self._epoch_done, self.progress)

    def _build_net(self, id_known: torch.Tensor) -> SequentialNet:
        p = self.params
        text = None if self.item_embeddings is None else torch.from_numpy(self.item_embeddings)
        sizes = {"dim": p.dim, "heads": p.heads, "layers": p.layers, "max_len": p.max_len}
        return SequentialNet(
            self.n_items,
            **sizes,
            dropout=p.dropout,
            item_text=text,
            id_known=id_known,
            id_embeddings=p.id_embeddings,
        )

    def _sync_loop(self) -> None:
        """Take the loop's progress (completed epochs and their losses)."""
        self.epoch_losses, self.epochs_trained = self._loop.epoch_losses, self._loop.epochs_done

    def _epoch_done(self, epoch: int) -> bool:
        """After each epoch: take the loop's progress, refresh the text, ask the callback."""
        self._sync_loop()
        self._sync_text()
        return self._callback is not None and self._callback(epoch, self)

    def _sync_text(self) -> None:
        """Store the fine-tuned encoder's current item embeddings for scoring and saving."""
        self._item_cache = None
        if self.text_tower is not None:
            embedded = self.text_tower.embed_all()
            self.net.item_text.copy_(embedded)
            self.item_embeddings = embedded.cpu().numpy()

    @torch.no_grad()
    def item_matrix(self) -> np.ndarray:
        """Every item's output vector ``[n_items, dim]``: score = user vector · item vector."""
        self._require_fitted()
        if self._item_cache is None:
            self.net.eval()
            self._item_cache = self.net.item_vectors()
        return self._item_cache.float().cpu().numpy()

    @torch.no_grad()
    def text_item_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        """Output vectors ``[n, dim]`` of items known by their text embeddings alone.

        What the model gives an item with no ID embedding, as it gives its cold items in
        ``item_matrix``: the learned projection of its text. Items added after training can
        so be scored against ``user_vectors`` without refitting.

        Args:
            embeddings: [n, d_text] text embeddings from the encoder the model was fit with.

        Raises:
            ValueError: the model has no text projection, or ``embeddings`` are not a
                finite [n, d_text] array.
        """
        self._require_fitted()
        proj = self.net.text_proj
        if proj is None:
            raise ValueError("sequential: a model fit without item_embeddings has no text")
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != proj.in_features or not np.isfinite(emb).all():
            raise ValueError(
                f"sequential: need finite [n, {proj.in_features}] text embeddings, "
                f"got shape {emb.shape}"
            )
        return proj(torch.from_numpy(emb).to(proj.weight.device)).float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The user vector ``[len(histories), dim]`` of each ordered history (serving's
        two-tower path: an inner-product index over ``item_matrix``)."""
        n_items = self._require_fitted()
        checked = [self._check_history(h, n_items) for h in histories]
        return self._user_vectors(checked).float().cpu().numpy()

    def _user_vectors(self, histories: list[np.ndarray]) -> torch.Tensor:
        net = self.net
        if net.training:  # eval() walks every submodule: a cost per serving request
            net.eval()
        device = net.bos.device
        out = []
        for start in range(0, len(histories), _SCORE_CHUNK):
            chunk = histories[start : start + _SCORE_CHUNK]
            tokens, lengths = history_tokens(chunk, self.params.max_len)
            hidden = net.encode(torch.from_numpy(tokens).to(device))
            last = torch.from_numpy(lengths - 1).to(device)
            out.append(hidden[torch.arange(len(chunk), device=device), last])
        return torch.cat(out)

    @torch.no_grad()
    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        if self._item_cache is None:
            self.net.eval()
            self._item_cache = self.net.item_vectors()
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        for start in range(0, len(histories), _SCORE_CHUNK):
            chunk = histories[start : start + _SCORE_CHUNK]
            users = self._user_vectors(chunk)
            out[start : start + len(chunk)] = (users @ self._item_cache.T).cpu().numpy()
        return out

    def _state(self) -> dict[str, np.ndarray]:
        return {key: value.detach().cpu().numpy() for key, value in self.net.state_dict().items()}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        if "item_text" in state:
            self.item_embeddings = np.array(state["item_text"], dtype=np.float32)
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
        try:
            self.net = self._build_net(tensors["id_known"])
            self.net.load_state_dict(tensors, strict=True)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelLoadError(f"sequential: saved weights do not fit the config: {err}") from err
        self.net.to(resolve_device(self.params.device)).eval()
        self.epochs_trained = int(config.get("epochs_trained", 0))
        self._item_cache = None

    def _extra_config(self) -> dict[str, Any]:
        text_dim = None if self.item_embeddings is None else int(self.item_embeddings.shape[1])
        return {"text_dim": text_dim, "epochs_trained": self.epochs_trained}
