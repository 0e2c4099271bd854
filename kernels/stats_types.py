"""Typed inputs and outputs shared by every attention-statistics backend.

Definitions (per batch b, query head h, query row i, key column j):
  visible(i, j)  key j is valid, and j <= i + offset when causal, and any variant mask allows it
  p_ij           softmax over visible keys of scale * q_i . k_j
  positions      qpos/kpos count valid keys only (cumsum of key validity - 1), so left padding
                 does not shift token 0 or distances
Rows with no visible key get zero statistics, lse = -inf and top1_idx = -1 (never NaN).
Column statistics, pooled maps and distance histograms sum over valid query rows only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import torch


@dataclass(frozen=True)
class StatsConfig:
    """What to compute. Everything here is a plain value so it can key caches."""

    sink_tokens: int = 4          # S: "first S tokens" sink mass
    local_window: int = 8         # keys with |qpos - kpos| < local_window count as local
    n_dist_bins: int = 17         # bin 0: d = 0; bin k: 2^(k-1) <= d < 2^k; last bin open-ended
    pool_size: int = 0            # P for pooled maps; 0 = automatic (see auto_pool_size)
    pool_cells: int = 128         # automatic P keeps the pooled side near this many cells
    full_maps: bool = False       # return the dense [B,H,Nq,Nk] map (short inputs only)
    mem_budget_mb: int = 256      # bound on the transient score buffers of one query chunk

    def pool_for(self, n_keys: int) -> int:
        return self.pool_size if self.pool_size > 0 else auto_pool_size(n_keys, self.pool_cells)


def auto_pool_size(n: int, cells: int = 128) -> int:
    """Smallest power of two P with ceil(n / P) <= cells."""
    p = 1
    while math.ceil(n / p) > cells:
        p *= 2
    return p


def dist_bin_edges(n_bins: int) -> list[tuple[int, int]]:
    """[lo, hi) distance ranges of each histogram bin; hi of the last bin is 'infinity'."""
    edges = [(0, 1)]
    for k in range(1, n_bins):
        edges.append((2 ** (k - 1), 2 ** k))
    lo, _ = edges[-1]
    edges[-1] = (lo, 1 << 62)
    return edges


@dataclass
class VariantMask:
    """Masking variants applied on top of causal/padding masks (all optional).

    window:     keep keys with qpos - kpos < window (and, bidirectional, kpos - qpos < window)
    sink_keep:  with a window, also keep keys with kpos < sink_keep (StreamingLLM)
    row_threshold: [B, H, Nq] keep keys whose scaled logit >= threshold (top-k / Top-theta)
    block_mask: [B, H, ceil(Nq/block_q), ceil(Nk/block_k)] bool, True = key block kept
    lse_full:   [B, H, Nq] natural-log lse of the unmasked softmax; gives retained mass R
    """

    window: Optional[int] = None
    sink_keep: int = 0
    row_threshold: Optional[torch.Tensor] = None
    block_mask: Optional[torch.Tensor] = None
    block_q: int = 64
    block_k: int = 64
    lse_full: Optional[torch.Tensor] = None

    @property
    def active(self) -> bool:
        return self.window is not None or self.row_threshold is not None or self.block_mask is not None


@dataclass
class AttentionStats:
    """Outputs of one attention call. Row stats are [B,H,Nq], column stats [B,H,Nk]."""

    out: Optional[torch.Tensor]            # [B,H,Nq,D] in the input dtype (None in stats-only mode)
    lse: torch.Tensor                      # natural-log logsumexp of scaled logits
    entropy: torch.Tensor                  # nats
    n_visible: torch.Tensor                # number of visible keys (float32)
    sink0: torch.Tensor                    # mass on the key at position 0
    sink_s: torch.Tensor                   # mass on keys at positions < sink_tokens
    top1_idx: torch.Tensor                 # int64 key index of the largest weight (-1 if none)
    top1_prob: torch.Tensor
    prev_mass: torch.Tensor                # mass on the key at position qpos - 1
    local_mass: torch.Tensor               # mass on keys with |qpos - kpos| < local_window
    exp_dist: torch.Tensor                 # sum_j p_ij |qpos - kpos|
    colsum: torch.Tensor                   # [B,H,Nk] attention received from valid queries
    n_queries: torch.Tensor                # [B,H,Nk] valid queries that can see the key (float32)
    pooled_mean: torch.Tensor              # [B,H,ceil(Nq/P),ceil(Nk/P)] mean over valid rows x keys
    pooled_max: torch.Tensor
    dist_hist: torch.Tensor                # [B,H,n_bins] attention mass by distance bin, summed over rows
    pool: int = 1
    maps: Optional[torch.Tensor] = None    # [B,H,Nq,Nk] float32 when requested
    retained: Optional[torch.Tensor] = None  # [B,H,Nq] exp(lse_variant - lse_full) when lse_full given

    def to(self, device) -> "AttentionStats":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return AttentionStats(**kw)


ROW_FIELDS = ("lse", "entropy", "n_visible", "sink0", "sink_s", "top1_idx", "top1_prob",
              "prev_mass", "local_mass", "exp_dist")
COL_FIELDS = ("colsum", "n_queries")
