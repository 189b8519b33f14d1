"""The text an item is represented by: what the pretrained encoder reads."""

from __future__ import annotations

import pandas as pd


def assemble(title: str, text: str, categories: str) -> str:
    """Title, then the free text, then the categories unless the text already names them."""
    parts = [p.strip() for p in (title, text) if p and p.strip()]
    cats = [c.strip() for c in (categories or "").split("|") if c.strip()]
    if cats and not all(c in (text or "") for c in cats):
        parts.append("Categories: " + ", ".join(cats) + ".")
    joined = ". ".join(p.rstrip(".") for p in parts[:-1]) if len(parts) > 1 else ""
    return (joined + ". " + parts[-1]) if joined else (parts[-1] if parts else "")


def item_texts(items: pd.DataFrame) -> pd.Series:
    """Assembled text for every row of a contract items table."""
    return pd.Series(
        [
            assemble(t or "", x or "", c or "")
            for t, x, c in zip(items["title"], items["text"], items["categories"], strict=True)
        ],
        index=items.index,
        dtype=object,
    )
