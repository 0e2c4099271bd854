"""Exact reductions of attention rows that the engine's statistics do not hold, computed from the
probability blocks the engine's single forward already has in cache (kernels' RowObserver), so an
analysis never recomputes attention and never builds n x n for all heads.

Every reduction takes blocks `on_block(layer, a, e, p)`, p [H, e - a, kend] float32 the exact
probabilities of query rows a..e-1 (batch 0), and declares `rows`, the query range it needs
((start, end) or None for all), so backends that cannot hand over blocks recompute only those rows.
  PairMass        mass[l, h, i] = sum_{j in S(i)} A_ij for a sparse set of (query, key) pairs
                  (syntax: dependency-linked tokens; induction: the token after an earlier occurrence)
  DiagonalProfile sums[l, h, d] = sum_i A_{i, i-d} over keys j >= 1, only at the offsets d asked for
  RegionColsum    rc[l, h, j] = sum_{q0 <= i < q1} A_ij (basins: what the query region reads)
Accumulation is in float64; each dense reference is a line of numpy (tests/test_reductions.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class PairMass:
    def __init__(self, rows: np.ndarray, cols: np.ndarray, n_layers: int, n_heads: int, n_tokens: int):
        order = np.argsort(rows, kind="stable")
        self.r = torch.from_numpy(np.asarray(rows, np.int64)[order])
        self.c = torch.from_numpy(np.asarray(cols, np.int64)[order])
        self.mass = np.zeros((n_layers, n_heads, n_tokens))
        self.rows = (int(self.r.min()), int(self.r.max()) + 1) if len(self.r) else (0, 0)
        self._index: dict = {}            # (a, e, kend) -> (local rows, flat indices): same chunks every layer

    def _chunk(self, a: int, e: int, kend: int):
        key = (a, e, kend)
        if key not in self._index:
            lo, hi = torch.searchsorted(self.r, torch.tensor([a, e])).tolist()
            r = self.r[lo:hi] - a
            self._index[key] = (r, r * kend + self.c[lo:hi]) if hi > lo else None
        return self._index[key]

    def on_block(self, layer: int, a: int, e: int, p: torch.Tensor) -> None:
        idx = self._chunk(a, e, p.shape[-1])
        if idx is None:
            return
        r, flat = idx
        acc = torch.zeros(p.shape[0], e - a, dtype=torch.float64)
        acc.index_add_(1, r, p.reshape(p.shape[0], -1).index_select(1, flat).double())
        self.mass[layer, :, a:e] += acc.numpy()


class DiagonalProfile:
    def __init__(self, offsets: np.ndarray, n_layers: int, n_heads: int, n_tokens: int):
        self.offsets = np.unique(np.asarray(offsets, np.int64))
        self.d = torch.from_numpy(self.offsets)
        self.sums = np.zeros((n_layers, n_heads, len(self.offsets)))
        self.rows = None if len(self.offsets) else (0, 0)
        self._index: dict = {}

    def _chunk(self, a: int, e: int, kend: int):
        key = (a, e, kend)
        if key not in self._index:
            i = torch.arange(a, e)
            j = i[None, :] - self.d[:, None]                              # [n_offsets, rr]
            ok = (j >= 1) & (j < kend)
            which = torch.arange(len(self.offsets))[:, None].expand_as(j)[ok]
            self._index[key] = (which, ((i[None, :] - a) * kend + j)[ok]) if bool(ok.any()) else None
        return self._index[key]

    def on_block(self, layer: int, a: int, e: int, p: torch.Tensor) -> None:
        if not len(self.offsets):
            return
        idx = self._chunk(a, e, p.shape[-1])
        if idx is None:
            return
        which, flat = idx
        h = p.shape[0]
        acc = torch.zeros(h, len(self.offsets), dtype=torch.float64)
        acc.index_add_(1, which, p.reshape(h, -1).index_select(1, flat).double())
        self.sums[layer] += acc.numpy()

    def full(self, n_tokens: int) -> np.ndarray:
        """[L, H, 2n - 1] with the sum at offset d in column d + n - 1 (offsets not asked for are 0)."""
        out = np.zeros(self.sums.shape[:2] + (max(1, 2 * n_tokens - 1),))
        out[..., self.offsets + n_tokens - 1] = self.sums
        return out


class RegionColsum:
    def __init__(self, q0: int, q1: int, n_layers: int, n_heads: int, n_tokens: int):
        self.q0, self.q1 = q0, q1
        self.rc = np.zeros((n_layers, n_heads, n_tokens))
        self.rows = (q0, q1)

    def on_block(self, layer: int, a: int, e: int, p: torch.Tensor) -> None:
        lo, hi = max(a, self.q0), min(e, self.q1)
        if lo < hi:
            self.rc[layer, :, :p.shape[-1]] += p[:, lo - a:hi - a].sum(1, dtype=torch.float64).numpy()


def union_rows(reductions: list) -> Optional[tuple[int, int]]:
    """The query range every reduction together needs (None: all rows)."""
    spans = [r.rows for r in reductions]
    if any(s is None for s in spans):
        return None
    spans = [s for s in spans if s[1] > s[0]]
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)


class Observer:
    """The session's row observer: hands batch 0 of each block to every reduction."""

    def __init__(self, reductions: list):
        self.reductions = reductions

    def __call__(self, layer: int, a: int, e: int, p: torch.Tensor) -> None:
        blk = p[0]
        for red in self.reductions:
            red.on_block(layer, a, e, blk)
