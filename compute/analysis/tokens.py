"""Character offsets of the model's tokens, for mapping spans and words (spaCy, items) onto tokens."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def token_char_spans(lm, text: str, token_ids: list[int]) -> np.ndarray:
    """[N, 2] int (start, end) character span of each token, leading whitespace stripped; (-1, -1)
    for tokens without text (special tokens). Raises InputError when the tokenizer cannot give
    offsets or does not reproduce the analysed ids."""
    tok = lm.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError(f"{lm.info.name}'s tokenizer gives no character offsets (not a fast tokenizer)")
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    if list(enc["input_ids"]) != list(token_ids):
        raise InputError("re-tokenising the text did not reproduce the analysed tokens")
    return spans_from_offsets(text, enc["offset_mapping"])


def spans_from_offsets(text: str, offsets) -> np.ndarray:
    """Pure: the tokenizer's offset mapping -> the spans token_char_spans describes."""
    out = np.full((len(offsets), 2), -1, dtype=np.int64)
    for t, (s0, e) in enumerate(offsets):
        s = s0
        if e <= s:
            continue
        while s < e and text[s].isspace():
            s += 1
        out[t] = (s, e) if s < e else (s0, e)   # whitespace-only token: keep its span (it has no word)
    return out
