"""Attention entropy per head and per query, and the entropy-collapse flag.

H_i = -sum_j A_ij log A_ij (nats, exact from the engine's online softmax statistics)
Hn_i = H_i / log(n_i), n_i = keys visible to query i; undefined (skipped) when n_i < 2
entropy_mean[l,h]       = mean_i H_i over all query rows
entropy_norm_mean[l,h]  = mean_i Hn_i over rows with n_i >= 2
collapsed[l,h]          = entropy_norm_mean < collapse_threshold (0.1 by default): "pathologically
                          low attention entropy" (Zhai et al., entropy collapse). Pure sink heads
                          collapse by this definition: nearly all their mass sits on token 0.
query_profile[i]        = mean over layers and heads of Hn_i (None where n_i < 2)
layer_profile[l][c]     = mean over heads of Hn_i, per layer; rows are averaged in blocks of
                          `profile_pool` queries so the section stays small at long lengths.
"""
from __future__ import annotations

import numpy as np

from ..result import AttentionResult
from ..summary import entropy_norm, head_summary
from .common import head_id, plain

MAX_PROFILE_POINTS = 1024


def nanmean_or_nan(x: np.ndarray, axis) -> np.ndarray:
    ok = np.isfinite(x)
    cnt = ok.sum(axis)
    s = np.where(ok, x, 0.0).sum(axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def block_mean(x: np.ndarray, pool: int) -> np.ndarray:
    """Mean of the last axis in blocks of `pool` (NaN-aware, ragged tail allowed)."""
    n = x.shape[-1]
    m = -(-n // pool)
    pad = m * pool - n
    xp = np.concatenate([x, np.full(x.shape[:-1] + (pad,), np.nan)], -1) if pad else x
    return nanmean_or_nan(xp.reshape(x.shape[:-1] + (m, pool)), -1)


def entropy_section(res: AttentionResult, collapse_threshold: float = 0.1) -> dict:
    """report.json 'entropy': {
        definitions, collapse_threshold,
        entropy_mean [L][H] (nats), entropy_norm_mean [L][H] in [0, 1], collapsed [L][H] bool,
        collapsed_heads ['L.H'], layer_mean [L] (mean normalised entropy per layer),
        query_profile [N] (None where < 2 keys), profile_pool (int),
        layer_profile [L][ceil(N / profile_pool)]}"""
    summ = head_summary(res)
    en = entropy_norm(res)                                     # [L, H, N]
    em, enm = summ["entropy_mean"], summ["entropy_norm_mean"]
    collapsed = enm < collapse_threshold
    L, H = em.shape
    n = res.n_tokens
    pool = max(1, -(-n // MAX_PROFILE_POINTS))
    by_layer = nanmean_or_nan(en, 1)                           # [L, N]
    return plain({
        "definitions": {
            "entropy_mean": "mean over queries of -sum_j A_ij log A_ij (nats)",
            "entropy_norm_mean": "mean over queries with >= 2 visible keys of H_i / log(n_visible_i)",
            "collapsed": "entropy_norm_mean < collapse_threshold",
        },
        "collapse_threshold": collapse_threshold,
        "entropy_mean": em, "entropy_norm_mean": enm, "collapsed": collapsed,
        "collapsed_heads": [head_id(l, h) for l in range(L) for h in range(H) if collapsed[l, h]],
        "layer_mean": enm.mean(1),
        "query_profile": nanmean_or_nan(en, (0, 1)),
        "profile_pool": pool,
        "layer_profile": block_mean(by_layer, pool) if pool > 1 else by_layer,
    })
