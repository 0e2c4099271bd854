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
                  Distance = Jensen-Shannon distance (base 2, so in [0, 1]; equal to
                  scipy.spatial.distance.jensenshannon) between the two heads' attention rows, averaged over
                  the query rows. Rows come from the full maps when both have them and N <= JS_FULL_MAX, else
                  from the pooled maps coarsened to JS_CELLS blocks per side (the head graph's distributions,
                  rows weighted by the queries they hold), which bounds the all-pairs cost.
                  Two texts, or two tokenizers, give no matching, with the reason in matching.reason.
Heads are named "L.H" as in report.json.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import InputError
from .result import AttentionResult

JS_FULL_MAX = 64           # full maps up to this many tokens (270 x 270 heads: ~3 s on one core) ...
JS_CELLS = 32              # ... above, pooled maps coarsened to this many blocks per side (as the head graph)


def _analyze(lm, text: str, opts):
    """The one call into the analysis: the pipeline (statistics only: the maps are what is compared)."""
    from .pipeline import analyze
    return analyze(lm, text, opts, None)


def head_name(layer: int, head: int) -> str:
    return f"{layer}.{head}"


def row_distributions(res: AttentionResult, source: str, cells: int = JS_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """(rows [L*H, R, C] float64, row weights [R]): 'full' = the full maps' rows (weight 1 each);
    'pooled' = the pooled maps as distributions over key blocks coarsened to <= cells per side, weighted
    by the query rows each row block holds (compute/analysis/graphs.row_distributions, the head graph's)."""
    if source == "full":
        m = np.asarray(res.maps, np.float64)
        w = np.ones(m.shape[-2])
    else:
        from .analysis.graphs import row_distributions as pooled_rows
        m, w = pooled_rows(np.asarray(res.pooled_mean, np.float64), res.pool, res.n_tokens, cells)
    L, H = m.shape[:2]
    return m.reshape(L * H, *m.shape[2:]), np.asarray(w, np.float64)


def js_matrix(rows_a: np.ndarray, rows_b: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """[nA, nB] weighted mean over rows of the base-2 Jensen-Shannon distance between head a's and head
    b's rows (each row normalised to sum 1). Rows where either side has no mass are left out.

    Same quantity as scipy.spatial.distance.jensenshannon(p, q, base=2) (the tests check it against it),
    computed as sqrt(H(m) - (H(p) + H(q)) / 2) with m = (p + q) / 2 and each row's own entropy computed
    once: scipy's function recomputes both relative entropies for every pair (several times slower for
    the 270 x 270 pairs of SmolLM2). The clip guards the rounding of near-identical rows."""
    from scipy.special import entr

    if rows_a.shape[1:] != rows_b.shape[1:]:
        raise InputError(f"attention maps of shapes {rows_a.shape[1:]} and {rows_b.shape[1:]} cannot be compared")
    w = np.ones(rows_a.shape[1]) if weights is None else np.asarray(weights, np.float64)

    def norm(x):
        s = x.sum(-1, keepdims=True)
        return np.divide(x, s, out=np.zeros_like(x), where=s > 0), s[..., 0] > 0

    pa, ok_a = norm(np.asarray(rows_a, np.float64))
    pb, ok_b = norm(np.asarray(rows_b, np.float64))
    ha, hb = entr(pa).sum(-1), entr(pb).sum(-1)                          # [nA, R], [nB, R] (nats)
    out = np.empty((pa.shape[0], pb.shape[0]))
    for i in range(pa.shape[0]):
        m = 0.5 * (pa[i][None] + pb)                                      # [nB, R, C]
        hm = -(m * np.log(m + 1e-300)).sum(-1)       # = entr(m).sum(-1): m = 0 gives 0; 4x faster than entr
        d = np.sqrt(np.clip((hm - 0.5 * (ha[i][None] + hb)) / np.log(2.0), 0.0, 1.0))
        wr = (ok_b & ok_a[i][None]) * w[None]
        out[i] = (d * wr).sum(-1) / np.maximum(wr.sum(-1), 1e-300)
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
    if a.pooled_mean.shape[2:] == b.pooled_mean.shape[2:] and a.pool == b.pool:
        return "pooled", (f"pooled maps coarsened to at most {JS_CELLS} blocks per side "
                          f"({a.n_tokens} tokens, pooled {a.pool} tokens per block)")
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
        rows_a, w = row_distributions(a, source)
        rows_b, _ = row_distributions(b, source)                 # same tokens and options: same weights
        dist = js_matrix(rows_a, rows_b, w)
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
