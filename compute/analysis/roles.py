"""Head roles: one score per role and head, and a label.

All scores are attention masses or fractions in [0, 1]. Notation as in sinks.py; W = local window
(the engine's local_window, 8 by default); rows are query positions.

  sink            mean_{i >= 1} A_i0                                     threshold 0.5
  previous-token  mean_{i >= 2} A_{i,i-1} (row 1's previous token is token 0, the sink)  0.4
  local           mean_{i >= 1} sum_{|i-j| < W, j != 0} A_ij (token 0 excluded)     0.6
  broad           mean normalised entropy H_i / log(n_i) over rows with n_i >= W keys (rows with
                  n_i >= 2 if the text is shorter)                                 0.8
  delimiter       mean over all rows of sum_{j in D} A_ij, D = tokens j >= 1 that are punctuation,
                  line breaks or special tokens ([SEP], <|im_end|>); exact from colsum   0.3
  syntactic       syntax.py: mean over queries of the attention on tokens whose words are the
                  query word's dependency head or children (spaCy parse, token 0 excluded) minus
                  what the head's own offset profile puts there (so previous-token heads do not
                  count as syntactic just because English links are short)               0.1
  induction       probes.py: on random tokens repeated once (period T), mean_{i in 2nd copy}
                  A_{i, i-T+1}, the token after the earlier occurrence             0.3
  retrieval       probes.py: needle copy score (Wu et al. 2024), the fraction of copied needle
                  tokens on which the head's argmax attention sits on that token in the needle  0.1

Label: among the roles whose score >= threshold, the one with the largest score / threshold
(how far past its own bar a head goes; scores of different roles are not on one scale); 'mixed'
when no role passes. Roles whose score is unavailable (probe not run, no spaCy) are skipped.
Thresholds are AnalysisSettings.role_thresholds (CLI --role-threshold NAME=VALUE).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..result import AttentionResult
from ..summary import entropy_norm
from .common import head_id, plain, safe_mean
from .settings import DEFAULT_ROLE_THRESHOLDS, ROLES
from .sinks import first_token_mass

MIXED = "mixed"


def previous_token_score(prev_mass: np.ndarray) -> np.ndarray:
    """[L, H] mean over rows i >= 2 of the mass on key i-1."""
    return safe_mean(prev_mass[..., 2:], -1) if prev_mass.shape[-1] > 2 else np.zeros(prev_mass.shape[:-1])


def local_score(local_mass: np.ndarray, sink0: np.ndarray, window: int) -> np.ndarray:
    """[L, H] mean over rows i >= 1 of the local-window mass without token 0 (rows i < W see it
    inside their window; their sink mass is subtracted)."""
    n = local_mass.shape[-1]
    if n < 2:
        return np.zeros(local_mass.shape[:-1])
    i = np.arange(n)
    loc = local_mass - sink0 * (i < window)
    return safe_mean(np.clip(loc[..., 1:], 0.0, 1.0), -1)


def broad_score(ent_norm: np.ndarray, n_visible: np.ndarray, window: int) -> np.ndarray:
    """[L, H] mean normalised entropy over rows seeing >= window keys (>= 2 if none do)."""
    ok = np.isfinite(ent_norm) & (n_visible >= window)
    if not ok.any():
        ok = np.isfinite(ent_norm)
    return safe_mean(np.where(ok, ent_norm, 0.0), -1, where=ok)


def delimiter_score(colsum: np.ndarray, mask: np.ndarray, n_rows: int) -> np.ndarray:
    """[L, H] mean over the n_rows query rows of the mass on keys where mask [N] is True."""
    if n_rows <= 0:
        return np.zeros(colsum.shape[:-1])
    return colsum[..., mask].sum(-1) / n_rows


def stat_role_scores(res: AttentionResult, delim_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The roles computed from the engine's statistics alone: {role: [L, H]}."""
    w = int(res.options.get("local_window", 8))
    return {
        "sink": first_token_mass(res.sink0),
        "previous-token": previous_token_score(res.prev_mass),
        "local": local_score(res.local_mass, res.sink0, w),
        "broad": broad_score(entropy_norm(res), res.n_visible, w),
        "delimiter": delimiter_score(res.colsum, delim_mask, res.n_tokens),
    }


def label_heads(scores: dict[str, np.ndarray], thresholds: Optional[dict] = None) -> np.ndarray:
    """[L, H] array of role names (see the module docstring for the rule)."""
    thr = dict(DEFAULT_ROLE_THRESHOLDS)
    thr.update(thresholds or {})
    names = [r for r in ROLES if r in scores]
    if not names:
        raise ValueError("no role scores")
    shape = np.asarray(scores[names[0]]).shape
    ratio = np.stack([np.asarray(scores[r], dtype=np.float64) / thr[r] for r in names])   # [R, L, H]
    passed = ratio >= 1.0
    ratio = np.where(passed, ratio, -np.inf)
    best = ratio.argmax(0)
    labels = np.array(names, dtype=object)[best]
    labels[~passed.any(0)] = MIXED
    return labels.reshape(shape)


def roles_section(scores: dict[str, np.ndarray], labels: np.ndarray, thresholds: dict,
                  unavailable: dict[str, str]) -> dict:
    """report.json 'roles': {thresholds, labels [L][H], counts {role: n}, heads_by_role {role: ['L.H']},
    scores {role: [L][H]}, unavailable {role: reason}, rule}"""
    L, H = labels.shape
    names = sorted(set(labels.ravel().tolist()))
    return plain({
        "rule": "label = argmax over roles with score >= threshold of score / threshold, else 'mixed'",
        "thresholds": {r: thresholds[r] for r in ROLES},
        "labels": labels.tolist(),
        "counts": {n: int((labels == n).sum()) for n in names},
        "heads_by_role": {n: [head_id(l, h) for l in range(L) for h in range(H) if labels[l, h] == n] for n in names},
        "scores": scores,
        "unavailable": unavailable,
    })
