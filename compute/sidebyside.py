"""Two analyses side by side: the same text on two models, or two texts on one model.

compare(a, b) takes two AttentionResults and returns diff.json's content:
  deltas          {metric: [L][H]} = B - A of every per-head summary (compute/summary.head_summary),
                  only when the layer x head grids match (None otherwise: cells of two architectures
                  are not the same heads)
  layer_profiles  {metric: {'a': [L_A], 'b': [L_B]}}: the mean over heads per layer, always given (the
                  comparison for different shapes), with relative depth (l + 0.5) / L to plot them on
  matches         when both analyses have the same tokens (a second checkpoint or a model with the same
                  tokenizer): every head of A with its one-to-one partner in B (Hungarian assignment,
                  scipy.optimize.linear_sum_assignment on the distance matrix) and its nearest head in B.
                  Distance = Jensen-Shannon distance (scipy.spatial.distance.jensenshannon, base 2, so in
                  [0, 1]) between the two heads' attention rows, averaged over the query rows. Rows come from
                  the full maps when both have them and N <= JS_FULL_MAX, else from the pooled mean maps
                  (same token count -> same pooled size), each block row renormalised to a distribution.
                  Two texts, or two tokenizers, give no matching, with the reason in matching.reason.
Heads are named "L.H" as in report.json.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import InputError
from .result import AttentionResult

JS_FULL_MAX = 256          # full maps up to this many tokens; above, the pooled maps bound the cost


def _analyze(lm, text: str, opts):
    """The one call into the analysis (switches to compute.pipeline.analyze when it lands)."""
    from .limits import analyze_limited
    return analyze_limited(lm, text, opts)


def head_name(layer: int, head: int) -> str:
    return f"{layer}.{head}"


def row_distributions(res: AttentionResult, source: str) -> np.ndarray:
    """[L*H, R, C] float64 attention rows per head: 'full' maps or renormalised 'pooled' block rows."""
    if source == "full":
        m = np.asarray(res.maps, np.float64)
    else:
        m = np.asarray(res.pooled_mean, np.float64)
        s = m.sum(-1, keepdims=True)
        m = np.divide(m, s, out=np.zeros_like(m), where=s > 0)
    L, H = m.shape[:2]
    return m.reshape(L * H, *m.shape[2:])


def js_matrix(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """[nA, nB] mean over rows of the base-2 Jensen-Shannon distance between head a's and head b's rows.
    Rows where either side has no mass (nothing visible) are left out of the mean."""
    from scipy.spatial.distance import jensenshannon

    if rows_a.shape[1:] != rows_b.shape[1:]:
        raise InputError(f"attention maps of shapes {rows_a.shape[1:]} and {rows_b.shape[1:]} cannot be compared")
    ok_b = rows_b.sum(-1) > 0                                             # [nB, R]
    out = np.empty((rows_a.shape[0], rows_b.shape[0]))
    for i, ra in enumerate(rows_a):
        ok = ok_b & (ra.sum(-1) > 0)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = jensenshannon(ra[None], rows_b, base=2, axis=-1)         # [nB, R]
        d = np.where(ok, np.nan_to_num(d), 0.0)
        out[i] = d.sum(-1) / np.maximum(ok.sum(-1), 1)
    return out


def match_heads(dist: np.ndarray, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> list[dict]:
    """Per head of A: its Hungarian partner in B ('b', 'js'; None when B has fewer heads and A's head is
    left out) and its nearest head in B ('nearest', 'nearest_js')."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(dist)
    partner = dict(zip(rows.tolist(), cols.tolist()))
    Hb = shape_b[1]
    out = []
    for i in range(dist.shape[0]):
        la, ha = divmod(i, shape_a[1])
        j = partner.get(i)
        near = int(np.argmin(dist[i]))
        out.append({"a": head_name(la, ha),
                    "b": None if j is None else head_name(*divmod(j, Hb)),
                    "js": None if j is None else float(dist[i, j]),
                    "nearest": head_name(*divmod(near, Hb)), "nearest_js": float(dist[i, near])})
    return out


def matching_source(a: AttentionResult, b: AttentionResult) -> tuple[Optional[str], str]:
    """('full' | 'pooled' | None, reason)."""
    if list(a.token_ids) != list(b.token_ids):
        return None, ("the two analyses have different tokens (two texts or two tokenizers): heads are "
                      "compared by their metrics and layer profiles, not by their maps")
    if a.maps is not None and b.maps is not None and a.n_tokens <= JS_FULL_MAX:
        return "full", f"full maps ({a.n_tokens} tokens)"
    if a.pooled_mean.shape[2:] == b.pooled_mean.shape[2:]:
        return "pooled", f"pooled maps ({a.pooled_mean.shape[-1]} blocks of {a.pool} tokens per side)"
    return None, "the pooled maps differ in size (different pooling options)"


def describe(res: AttentionResult, label: str) -> dict:
    return {"label": label, "model": res.model, "n_layers": res.n_layers, "n_heads": res.n_heads,
            "n_tokens": res.n_tokens, "loss": res.loss, "text": res.text[:2000]}


def compare(a: AttentionResult, b: AttentionResult, label_a: str = "A", label_b: str = "B") -> dict:
    """diff.json (see the module docstring)."""
    from .analysis.common import plain
    from .summary import head_summary

    sa, sb = head_summary(a), head_summary(b)
    grid = (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads)
    deltas = {k: (sb[k] - sa[k]).tolist() for k in sa} if grid else None
    profiles = {k: {"a": sa[k].mean(1).tolist(), "b": sb[k].mean(1).tolist()} for k in sa}
    source, reason = matching_source(a, b)
    matches: list[dict] = []
    if source is not None:
        dist = js_matrix(row_distributions(a, source), row_distributions(b, source))
        matches = match_heads(dist, (a.n_layers, a.n_heads), (b.n_layers, b.n_heads))
    return plain({
        "a": describe(a, label_a), "b": describe(b, label_b),
        "grid_match": grid, "same_tokens": list(a.token_ids) == list(b.token_ids),
        "metrics": list(sa),
        "delta": "B - A per head",
        "deltas": deltas,
        "values": {"a": {k: v.tolist() for k, v in sa.items()}, "b": {k: v.tolist() for k, v in sb.items()}},
        "layer_profiles": profiles,
        "depth": {"a": [(l + 0.5) / a.n_layers for l in range(a.n_layers)],
                  "b": [(l + 0.5) / b.n_layers for l in range(b.n_layers)]},
        "matching": {"available": source is not None, "source": source, "reason": reason,
                     "distance": "Jensen-Shannon distance (base 2), mean over query rows",
                     "assignment": "scipy.optimize.linear_sum_assignment (one-to-one), plus nearest"},
        "matches": matches,
    })


def diff_texts(lm_a, text_a: str, lm_b, text_b: str, opts, label_a: str = "A", label_b: str = "B",
               progress=None) -> dict:
    """Analyse (lm_a, text_a) and (lm_b, text_b), then compare them."""
    if progress is not None:
        progress(0.0, f"analysing {label_a}")
    a = _analyze(lm_a, text_a, opts)
    if progress is not None:
        progress(0.45, f"analysing {label_b}")
    b = _analyze(lm_b, text_b, opts)
    if progress is not None:
        progress(0.9, "matching heads")
    out = compare(a, b, label_a, label_b)
    if progress is not None:
        progress(1.0, "done")
    return out
