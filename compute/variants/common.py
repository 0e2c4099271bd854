"""Shared plumbing for attention variants: GQA expansion, visibility and scores for a set of query rows.

All variants read an AttentionCall (q [B,H,Nq,D], k/v [B,Hkv,Nk,D], already RoPE-rotated) and follow the
kernels' conventions: queries are the last Nq keys, positions count valid keys only (kernels.positions),
and `visible` means valid, causal (when the call is causal) and inside the model's own sliding window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kernels.positions import key_validity, positions, query_positions

NEG_INF = float("-inf")


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B,Hkv,N,D] -> [B,H,N,D]: query head h reads kv head h // (H / Hkv) (the kernels' grouping)."""
    g = n_heads // x.shape[1]
    return x if g == 1 else x.repeat_interleave(g, dim=1)


@dataclass
class Geometry:
    """Positions and validity of one call (batch-wise), computed once."""

    kvalid: torch.Tensor     # [B, Nk] bool
    kpos: torch.Tensor       # [B, Nk] int64
    qpos: torch.Tensor       # [B, Nq] int64
    off: int                 # Nk - Nq: query row i is key i + off
    causal: bool
    window: Optional[int]    # the model's own sliding window (None for our models)

    @classmethod
    def of(cls, call) -> "Geometry":
        b, nq, nk = call.q.shape[0], call.q.shape[2], call.k.shape[2]
        kvalid = key_validity(call.key_valid, b, nk, call.q.device)
        kpos = positions(kvalid)
        return cls(kvalid, kpos, query_positions(kpos, nq), nk - nq, call.causal, call.window)

    @property
    def qvalid(self) -> torch.Tensor:
        return self.kvalid[:, self.off:]

    def visible(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, 1, R, Nk] bool: keys that query rows `rows` (int64 [R]) see under plain softmax."""
        nk = self.kvalid.shape[1]
        vis = self.kvalid[:, None, None, :].expand(-1, 1, rows.numel(), nk)
        j = torch.arange(nk, device=rows.device)
        if self.causal:
            vis = vis & (j[None, :] <= (rows[:, None] + self.off))[None, None]
        if self.window is not None:
            d = self.qpos[:, rows][:, :, None] - self.kpos[:, None, :]
            vis = vis & ((d < self.window) & (-d < self.window))[:, None]
        return vis & self.qvalid[:, None, rows, None]


def scores(call, rows: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """[B, H, R, Nk] scaled logits of query rows `rows` against every key."""
    q = call.q[:, :, rows].to(dtype)
    k = repeat_kv(call.k, call.q.shape[1]).to(dtype)
    return torch.matmul(q, k.transpose(-1, -2)) * call.scale


def masked_softmax(s: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Softmax over visible keys; rows with no visible key are all zero (never NaN)."""
    sm = s.masked_fill(~vis, NEG_INF)
    m = sm.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(sm - m)
    z = e.sum(-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z))


def row_chunks(n: int, per_row_bytes: int, budget_mb: int = 128):
    """Yield (a, e) ranges of query rows whose transient buffers fit in the budget."""
    rows = max(1, (budget_mb << 20) // max(1, per_row_bytes))
    for a in range(0, n, rows):
        yield a, min(n, a + rows)


def sample_rows(valid_rows: torch.Tensor, limit: int) -> torch.Tensor:
    """All of `valid_rows` (int64, sorted) if at most `limit`, else `limit` evenly spaced ones that
    include the first and the last (deterministic, so reruns agree)."""
    n = valid_rows.numel()
    if limit <= 0 or n <= limit:
        return valid_rows
    idx = torch.linspace(0, n - 1, limit).round().long().unique()
    return valid_rows[idx]
