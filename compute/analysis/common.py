"""Small helpers shared by the analysis modules: JSON-safe conversion, head ids, token classes."""
from __future__ import annotations

import math
import unicodedata
from typing import Any

import numpy as np


def head_id(layer: int, head: int) -> str:
    return f"{layer}.{head}"


def plain(x: Any) -> Any:
    """numpy -> lists/floats, NaN/inf -> None, recursively (report.json must be strict JSON)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            return plain(x.tolist())
        return x.tolist()
    if isinstance(x, np.generic):
        return plain(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def safe_mean(x: np.ndarray, axis=-1, where=None) -> np.ndarray:
    """Mean over axis (restricted to `where`); 0 where nothing is counted (never NaN)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x, dtype=bool) if where is None else np.broadcast_to(where, x.shape)
    n = w.sum(axis)
    s = np.where(w, x, 0.0).sum(axis)
    return np.where(n > 0, s / np.maximum(n, 1), 0.0)


def is_delimiter_string(s: str) -> bool:
    """Punctuation-only token, or whitespace containing a line break (separator between blocks)."""
    t = s.strip()
    if not t:
        return "\n" in s
    return all(unicodedata.category(c).startswith("P") or unicodedata.category(c) in ("Sm", "So") for c in t)


def delimiter_mask(tokens: list[str], token_ids: list[int], special_ids) -> np.ndarray:
    """[N] bool: tokens j >= 1 that are punctuation, line breaks, or special tokens ([SEP], <|im_end|>).
    Token 0 is never a delimiter here: its attention is the first-token sink."""
    special = set(int(i) for i in special_ids)
    m = np.array([(tid in special) or is_delimiter_string(tok) for tok, tid in zip(tokens, token_ids)], bool)
    if len(m):
        m[0] = False
    return m
