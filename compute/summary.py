"""Per-head summaries of an AttentionResult: pure numpy, shared by the CLI report, the app and tests.

entropy_mean       mean over valid query rows of the row entropy (nats)
entropy_norm_mean  mean over rows with >= 2 visible keys of entropy / log(visible keys)
sink_mass_mean     mean over queries at position >= 1 of the attention on token 0
sink_metric        mean attention received by token 0 from the queries that see it
                   ("When Attention Sink Emerges": colsum / n_queries); sink rate counts heads > eps
"""
from __future__ import annotations

import numpy as np

from .result import AttentionResult


def entropy_norm(res: AttentionResult) -> np.ndarray:
    """Row entropy / log(visible keys); NaN where fewer than 2 keys are visible."""
    nv = res.n_visible
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nv >= 2, res.entropy / np.log(np.maximum(nv, 2)), np.nan)


def received_mean(res: AttentionResult) -> np.ndarray:
    """[L, H, N] mean attention each key receives from the queries that can see it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(res.n_queries > 0, res.colsum / np.maximum(res.n_queries, 1), 0.0)


def _finite_mean(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    return np.where(ok.any(-1), np.where(ok, x, 0).sum(-1) / np.maximum(ok.sum(-1), 1), 0.0)


def head_summary(res: AttentionResult) -> dict[str, np.ndarray]:
    """[L, H] arrays keyed by metric name."""
    n = res.n_tokens
    rows_ge1 = slice(1, n) if n > 1 else slice(0, 0)
    en = entropy_norm(res)

    def mean_rows(x, rows=slice(None)):
        x = x[..., rows]
        if x.shape[-1] == 0:
            return np.zeros(x.shape[:-1])
        return x.mean(-1)

    return {
        "entropy_mean": mean_rows(res.entropy),
        "entropy_norm_mean": _finite_mean(en),
        "sink_mass_mean": mean_rows(res.sink0, rows_ge1),
        "sink_s_mass_mean": mean_rows(res.sink_s, rows_ge1),
        "sink_metric": received_mean(res)[..., 0],
        "prev_token_mean": mean_rows(res.prev_mass, rows_ge1),
        "local_mean": mean_rows(res.local_mass),
        "exp_dist_mean": mean_rows(res.exp_dist),
        "top1_prob_mean": mean_rows(res.top1_prob),
    }


def sink_rate(res: AttentionResult, eps: float = 0.3) -> float:
    """Fraction of (layer, head) whose mean received attention on token 0 exceeds eps."""
    return float((received_mean(res)[..., 0] > eps).mean())
