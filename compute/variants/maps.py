"""Variant maps on demand for the app: the captured q/k/v of a text are cached, maps come back as numpy.

variant_maps(lm, text, specs, layer, head) gives the softmax map and each variant's map of one head,
side by side (a difference map is maps[spec] - softmax). Hedgehog fits are cached in hedgehog.py.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Optional, Sequence

import torch

from ..engine import capture, token_strings, tokenize
from ..errors import InputError
from .fidelity import MAP_MAX_ROWS, variant_map
from .registry import parse_specs

_CALLS: "OrderedDict[tuple, dict]" = OrderedDict()
_LOCK = threading.Lock()
CACHED_TEXTS = 2
ALL_LAYERS_MB = 256          # keep every layer's q/k/v of a text when they fit in this, else layer by layer


def _text_calls(lm, text: str, max_tokens: int, layer: int) -> dict:
    """Cached {"ids", "tokens", "calls": {layer: AttentionCall}} with `layer` present."""
    key = (lm.info.name, lm.info.source, lm.device, hashlib.sha1(text.encode()).hexdigest(), max_tokens)
    with _LOCK:
        entry = _CALLS.get(key)
        if entry is not None:
            _CALLS.move_to_end(key)
            if layer in entry["calls"]:
                return entry
    ids = entry["ids"] if entry is not None else tokenize(lm, text, max_tokens)
    info = lm.info
    per_layer = len(ids) * (info.n_heads + 2 * info.n_kv_heads) * info.head_dim * 4
    keep = True if per_layer * info.n_layers <= ALL_LAYERS_MB << 20 else {layer}
    sess, _ = capture(lm, torch.tensor([ids]), keep_qkv=keep, layers=set())
    with _LOCK:
        entry = _CALLS.get(key) or {"ids": ids, "tokens": token_strings(lm, ids), "calls": {}}
        entry["calls"].update(sess.calls)
        _CALLS[key] = entry
        _CALLS.move_to_end(key)
        while len(_CALLS) > CACHED_TEXTS:
            _CALLS.popitem(last=False)
    return entry


def layer_call(lm, text: str, layer: int, max_tokens: int = MAP_MAX_ROWS):
    """The AttentionCall (CPU q/k/v) of one layer on `text` (cached; all layers at once for short texts)."""
    if not 0 <= int(layer) < lm.info.n_layers:
        raise InputError(f"layer {layer} out of range: the model has layers 0..{lm.info.n_layers - 1}")
    return _text_calls(lm, text, max_tokens, int(layer))["calls"][int(layer)]


def variant_maps(lm, text: str, specs, layer: int, head: int, rows: Optional[Sequence[int]] = None,
                 max_tokens: int = MAP_MAX_ROWS) -> dict:
    """-> {"tokens": [str], "rows": [int], "softmax": float32 [R, N], "maps": {canonical spec: [R, N]}}.
    Full maps (rows=None) are built for texts up to MAP_MAX_ROWS tokens; give rows for longer ones."""
    call = layer_call(lm, text, layer, max_tokens)
    entry = _text_calls(lm, text, max_tokens, int(layer))
    nq = call.q.shape[2]
    rows_t = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    out = {"tokens": entry["tokens"], "rows": list(range(nq)) if rows_t is None else rows_t.tolist(),
           "softmax": variant_map(call, "softmax", head, rows_t), "maps": {}}
    for sp in parse_specs(specs):
        out["maps"][sp.text] = variant_map(call, sp, head, rows_t)
    return out
