"""Induction and duplicate-token patterns measured on the user's own text (beside the synthetic probe).

Wherever the text repeats itself, an induction head at query i attends to the token that followed an
earlier occurrence of i's context. With t the token ids:
  induction targets   T(i) = {i' + 1 : i' < i - 1, t[i'] = t[i], t[i' - 1] = t[i - 1]}  (a repeated
                      bigram ends at i: the query sits inside a repeated span, as in Olsson et al.'s
                      repeated-sequence setting; a lone repeated word is not enough context)
  duplicate targets   D(i) = {j < i : t[j] = t[i]}  (previous occurrences of the same token)
  score[l, h]         mean over queries with a non-empty set of sum_{j in set} A_ij   (exact, from the
                      engine's probability blocks through reductions.PairMass)
Token 0 is never a target (it is the sink). Each query keeps its MAX_EARLIER most recent earlier
occurrences, and pairs are capped at MAX_PAIRS (queries kept in order), so a text that repeats itself
many times costs bounded work; the count of queries used is reported.
"""
from __future__ import annotations

import numpy as np

MAX_PAIRS = 200_000
MAX_EARLIER = 32          # most recent earlier occurrences per query


def _bounded(rows: list, cols: list) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if len(r) > MAX_PAIRS:                       # keep whole queries: cut at a query boundary
        cut = np.searchsorted(r, r[MAX_PAIRS], side="left")
        r, c = r[:cut], c[:cut]
    return r, c


def induction_pairs(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, key cols) of every induction target, rows ascending."""
    seen: dict[tuple, list[int]] = {}
    rows, cols = [], []
    for i in range(1, len(ids)):
        key = (ids[i - 1], ids[i])
        for ip in seen.get(key, ())[-MAX_EARLIER:]:
            if 1 <= ip + 1 < i:
                rows.append(i)
                cols.append(ip + 1)
        seen.setdefault(key, []).append(i)
        if len(rows) > MAX_PAIRS:
            break
    return _bounded(rows, cols)


def duplicate_pairs(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, key cols) of every earlier occurrence of the query's token (keys >= 1)."""
    seen: dict[int, list[int]] = {}
    rows, cols = [], []
    for i, t in enumerate(ids):
        for j in seen.get(t, ())[-MAX_EARLIER:]:
            rows.append(i)
            cols.append(j)
        if i >= 1:
            seen.setdefault(t, []).append(i)
        if len(rows) > MAX_PAIRS:
            break
    return _bounded(rows, cols)


def pair_score(mass: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Pure: per-row mass [L, H, N] and the pairs' query rows -> (mean over those queries [L, H], count)."""
    q = np.unique(rows)
    if not len(q):
        return np.zeros(mass.shape[:2]), 0
    return mass[..., q].mean(-1), int(len(q))
