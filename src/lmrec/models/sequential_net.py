"""The torch network behind ``SequentialRecommender``: item tower + causal transformer.

Tokens are item indices shifted by two: ``PAD`` (0) fills sequences on the right, ``BOS`` (1)
starts every sequence, item ``i`` is token ``i + 2``. Starting every sequence with ``BOS``
means an empty history is just ``[BOS]``: it gets a learned user vector (trained to predict
first items) and no attention row is ever fully masked, so there are no NaNs to guard.
"""

from __future__ import annotations

import torch
from torch import nn

PAD = 0
BOS = 1
N_SPECIAL = 2


class SequentialNet(nn.Module):
    """Item vectors from text (+ masked ID embeddings); user vectors from a causal transformer.

    Args:
        n_items: catalog size.
        dim: model width (item and user vectors).
        heads: attention heads; must divide ``dim``.
        layers: transformer layers.
        dropout: dropout on the input embeddings and inside every layer.
        max_len: most history items a user vector is computed from.
        item_text: [n_items, d_text] float32 text embeddings (a frozen buffer), or None.
        id_known: [n_items] bool, True for items with training interactions. Only these
            items' ID embeddings are ever used, so a cold item is scored from text alone.
        id_embeddings: whether to learn an ID embedding per item.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        heads: int,
        layers: int,
        dropout: float,
        max_len: int,
        item_text: torch.Tensor | None,
        id_known: torch.Tensor,
        id_embeddings: bool,
    ) -> None:
        super().__init__()
        if item_text is None and not id_embeddings:
            raise ValueError("an item needs text embeddings, ID embeddings, or both")
        self.n_items = n_items
        self.register_buffer("id_known", id_known.to(torch.bool))
        if item_text is not None:
            self.register_buffer("item_text", item_text.to(torch.float32))
            self.text_proj: nn.Linear | None = nn.Linear(item_text.shape[1], dim)
        else:
            self.item_text = None
            self.text_proj = None
        self.item_id: nn.Embedding | None = None
        if id_embeddings:
            self.item_id = nn.Embedding(n_items, dim)
            nn.init.normal_(self.item_id.weight, std=0.02)
        self.bos = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.position = nn.Embedding(max_len + 1, dim)  # BOS + max_len items
        nn.init.normal_(self.position.weight, std=0.02)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-LN layers cannot use nested tensors; saying so avoids a warning per model.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    def item_vectors(
        self,
        index: torch.Tensor | None = None,
        id_keep: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vectors of the items in ``index`` (any shape; all items when None): [..., dim].

        Args:
            index: item indices.
            id_keep: [n_items] 0/1 mask of ID embeddings kept this step (ID dropout);
                None keeps every known item's ID embedding.
            text: [n_items, d_text] text embeddings to use instead of the stored ones (the
                output of an encoder being fine-tuned).
        """
        keep = self.id_known.to(self.bos.dtype)
        if id_keep is not None:
            keep = keep * id_keep
        vectors = 0
        if self.text_proj is not None:
            table = self.item_text if text is None else text
            vectors = self.text_proj(table if index is None else table[index])
        if self.item_id is not None:
            ids = self.item_id.weight if index is None else self.item_id(index)
            vectors = vectors + ids * (keep if index is None else keep[index]).unsqueeze(-1)
        return vectors

    def encode(
        self,
        tokens: torch.Tensor,
        id_keep: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states [batch, T, dim] for right-padded ``tokens`` [batch, T].

        Position ``t`` sees tokens ``0..t`` only (causal mask), so its state predicts the
        item after token ``t``. ``id_keep`` and ``text`` are as in ``item_vectors``.
        """
        is_item = tokens >= N_SPECIAL
        items = self.item_vectors((tokens - N_SPECIAL).clamp(min=0), id_keep, text)
        x = torch.where(is_item.unsqueeze(-1), items, self.bos.expand_as(items))
        x = x * is_item.logical_or(tokens == BOS).unsqueeze(-1)  # PAD embeds to zero
        length = tokens.shape[1]
        x = self.input_dropout(x + self.position.weight[:length])
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        hidden = self.encoder(x, mask=causal, src_key_padding_mask=tokens == PAD, is_causal=True)
        return self.final_norm(hidden)
