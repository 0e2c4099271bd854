"""The interface every attention variant implements (see registry.py for the catalogue).

A variant is built from a parsed spec. On one AttentionCall (the q/k/v of one layer) it is used as:
  state = variant.prepare(call)   calibration/fit on the *softmax* model's q/k/v of that layer: static
                                  state (Top-theta thresholds, ACT sink sets, Hedgehog feature maps);
                                  None for most variants
  bound = variant.bind(call, state)
  bound.output()                  the variant's attention output [B,H,Nq,Dv], computed efficiently (chunked,
                                  never n x n for all heads): the output error and the model swap use it
  bound.weights(rows, s, vis)     the variant's attention weights of a few query rows [B,H,R,Nk] (float64):
                                  row metrics and maps use it; s are the softmax logits of those rows and
                                  vis their visible keys (common.scores / Geometry.visible)
Dynamic selections (top-k thresholds, MoBA / XAttention blocks) are recomputed in bind() from the call's
own q/k, so a swapped model selects from its own activations; calibrated state comes from the softmax run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from kernels.stats_types import AttentionStats

from .common import Geometry

Progress = Callable[[float, str], None]


@dataclass
class VariantOutput:
    out: torch.Tensor                          # [B,H,Nq,Dv] in the dtype of q
    retained: Optional[torch.Tensor] = None    # [B,H,Nq] softmax mass on kept keys (masking, lse_full given)
    kept: Optional[torch.Tensor] = None        # [B,H,Nq] keys kept per row (masking)
    degenerate: Optional[torch.Tensor] = None  # [B,H,Nq] bool: normaliser ~ 0, row output ~ 0 (linear)
    stats: Optional[AttentionStats] = None     # kernels' statistics when computed through attention_stats


class Variant:
    family = "base"          # reference | masking | linear | fitted | reweight

    def __init__(self, spec):
        self.spec = spec
        self.p = dict(spec.params)

    def prepare(self, call, progress: Optional[Progress] = None, cancel=None):
        return None

    def bind(self, call, state=None) -> "Bound":
        raise NotImplementedError


class Bound:
    """A variant applied to one call (per-call selections are computed once, here or lazily)."""

    def __init__(self, variant: Variant, call, state):
        self.variant, self.call, self.state = variant, call, state
        self.geo = Geometry.of(call)

    def output(self, lse_full: Optional[torch.Tensor] = None, backend: str = "torch") -> VariantOutput:
        raise NotImplementedError

    def weights(self, rows: torch.Tensor, s: torch.Tensor, vis: torch.Tensor):
        """-> (a [B,H,R,Nk] float64 with zeros off its support, degenerate [B,H,R] bool or None)."""
        raise NotImplementedError
