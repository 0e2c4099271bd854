"""Attention sinks: first-token mass, sink rate, hidden sinks, per-layer sink curves.

Notation: A = softmax attention of one (layer, head); rows i are queries, columns j keys; for a
causal model query i sees keys j <= i. colsum_j = sum_i A_ij and n_queries_j = #queries that see j
come straight from the engine (exact, any length).

first_token_mass[l,h] = mean_{i >= 1} A_i0             (queries that have a choice; row 0 is always 1
                                                         in a causal model)
sink_metric[l,h]      = a_0 = colsum_0 / n_queries_0  ("When Attention Sink Emerges": mean over all
                                                         queries i >= 0 of A_i0; the "~64% on a
                                                         12-token sentence" of SmolLM2 is this number)
sink_rate(eps)        = (1 / LH) sum_{l,h} 1[a_0 > eps], eps = 0.3 by default
hidden sinks (ACT)    : key j >= 1 is a sink of head (l,h) when a_j = colsum_j / n_queries_j > tau
                        (tau = 0.1 as in the ACT calibration script), with two guards for short and
                        causal inputs: a_j must also exceed uniform_ratio (3) x u_j, where u_j = mean
                        over the queries seeing j of 1 / n_visible_i is what uniform attention gives
                        (on a 12-token sentence u_j is about 0.13, above tau); and j must be seen by at
                        least min_query_frac (0.25) of the query rows, since a_j of the last tokens of a
                        causal model is mostly the local attention of a few rows.
layer curves          : per layer, the mean over heads of first_token_mass and of sink_metric, and
                        the fraction of heads whose sink_metric > eps.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..result import AttentionResult
from .common import head_id, plain, safe_mean


def received_mean(colsum: np.ndarray, n_queries: np.ndarray) -> np.ndarray:
    """[..., N] mean attention each key receives from the queries that see it (0 where none do)."""
    return np.where(n_queries > 0, colsum / np.maximum(n_queries, 1), 0.0)


def first_token_mass(sink0: np.ndarray) -> np.ndarray:
    """[L, H] mean over query rows i >= 1 of A_i0 (sink0 is the engine's [L, H, N] row statistic)."""
    return safe_mean(sink0[..., 1:], -1) if sink0.shape[-1] > 1 else np.zeros(sink0.shape[:-1])


def sink_rate(sink_metric: np.ndarray, eps: float = 0.3) -> float:
    return float((np.asarray(sink_metric) > eps).mean())


def uniform_received(n_visible: np.ndarray, n_queries: np.ndarray, causal: bool) -> np.ndarray:
    """[..., N] u_j: mean over the queries that see key j of 1 / n_visible_i (uniform attention).
    Causal rows are the keys' own positions (one unpadded text): rows i >= j see key j."""
    inv = np.where(n_visible > 0, 1.0 / np.maximum(n_visible, 1), 0.0)
    if causal:
        tail = np.cumsum(inv[..., ::-1], -1)[..., ::-1]
        return np.where(n_queries > 0, tail / np.maximum(n_queries, 1), 0.0)
    return np.broadcast_to(inv.sum(-1, keepdims=True) / np.maximum(n_queries, 1), n_queries.shape)


def hidden_sinks(colsum: np.ndarray, n_queries: np.ndarray, tau: float = 0.1, min_query_frac: float = 0.25,
                 uniform: Optional[np.ndarray] = None, uniform_ratio: float = 3.0) -> np.ndarray:
    """[L, H, N] bool: key j >= 1 is a hidden sink of head (l, h) (see the module docstring);
    uniform = uniform_received(...) ([..., N]) enables the uniform-attention guard."""
    a = received_mean(colsum, n_queries)
    n_rows = n_queries.max(-1, keepdims=True)
    enough = n_queries >= np.maximum(1, np.ceil(min_query_frac * n_rows))
    out = (a > tau) & enough
    if uniform is not None:
        out &= a > uniform_ratio * uniform
    out[..., 0] = False
    return out


def hidden_sink_list(mask: np.ndarray, colsum: np.ndarray, n_queries: np.ndarray, tokens: list[str],
                     max_heads: Optional[int] = None) -> list[dict]:
    """One record per key that sinks in at least one head, most heads first:
    {index, token, n_heads, frac_heads, heads ['L.H' ...], mean_received (over those heads), max_received}."""
    a = received_mean(colsum, n_queries)
    L, H, N = mask.shape
    out = []
    for j in np.nonzero(mask.any((0, 1)))[0]:
        ls, hs = np.nonzero(mask[:, :, j])
        vals = a[ls, hs, j]
        order = np.argsort(-vals)
        out.append({"index": int(j), "token": tokens[j], "n_heads": int(len(ls)),
                    "frac_heads": len(ls) / (L * H),
                    "heads": [head_id(int(ls[k]), int(hs[k])) for k in order[:max_heads]],
                    "mean_received": float(vals.mean()), "max_received": float(vals.max())})
    out.sort(key=lambda r: (-r["n_heads"], r["index"]))
    return out


def sinks_section(res: AttentionResult, eps: float = 0.3, tau: float = 0.1,
                  min_query_frac: float = 0.25, uniform_ratio: float = 3.0) -> dict:
    """report.json 'sinks': {
        definitions, eps, tau, min_query_frac,
        first_token_mass [L][H], sink_metric [L][H], sink_rate (float), mean_first_token_mass,
        mean_sink_metric (floats: mean over heads), sink_heads ['L.H' with sink_metric > eps],
        layer_curve {first_token_mass [L], sink_metric [L], sink_rate [L]},
        hidden_sinks [{index, token, n_heads, frac_heads, heads, mean_received, max_received}],
        hidden_sink_count [L][H] (number of hidden sinks per head)}"""
    ftm = first_token_mass(res.sink0)
    sm = received_mean(res.colsum[..., 0], res.n_queries[..., 0])
    uni = uniform_received(res.n_visible, res.n_queries, res.causal)
    hmask = hidden_sinks(res.colsum, res.n_queries, tau, min_query_frac, uni, uniform_ratio)
    L, H = sm.shape
    return plain({
        "definitions": {
            "first_token_mass": "mean over queries i >= 1 of A[i, 0]",
            "sink_metric": "colsum[0] / n_queries[0]: mean over all queries of A[i, 0]",
            "sink_rate": "fraction of heads with sink_metric > eps",
            "hidden_sink": "key j >= 1 with colsum[j] / n_queries[j] > tau and > uniform_ratio x the uniform-"
                           "attention value, seen by >= min_query_frac of the rows",
        },
        "eps": eps, "tau": tau, "min_query_frac": min_query_frac, "uniform_ratio": uniform_ratio,
        "first_token_mass": ftm, "sink_metric": sm,
        "sink_rate": sink_rate(sm, eps),
        "mean_first_token_mass": float(ftm.mean()), "mean_sink_metric": float(sm.mean()),
        "sink_heads": [head_id(l, h) for l in range(L) for h in range(H) if sm[l, h] > eps],
        "layer_curve": {"first_token_mass": ftm.mean(1), "sink_metric": sm.mean(1),
                        "sink_rate": (sm > eps).mean(1)},
        "hidden_sinks": hidden_sink_list(hmask, res.colsum, res.n_queries, res.tokens),
        "hidden_sink_count": hmask.sum(-1),
    })
