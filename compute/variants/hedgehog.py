"""Hedgehog / LoLCATs-style learnable feature maps, fitted on the fly by attention transfer.

Per query head, separate maps for queries and keys: phi(x) = [softmax(x W + b), softmax(-(x W + b))]
(softmax over the F = head_dim features, W initialised to the identity, b to zero), used as linear
attention (linear.py). The fit matches the softmax model's own attention on the current text, layer by
layer (LoLCATs stage 1): loss = cross-entropy between the softmax rows and the linear rows (Hedgehog)
+ mse_weight * relative output MSE (LoLCATs' output matching), full batch, Adam.
The fit uses the first `tokens` tokens of batch item 0 (a causal prefix is self-contained); each Adam step
uses `rows` random query rows (all rows when there are fewer; seeded, so fits are reproducible) against
all their keys, and the fit stops early when `budget_s` seconds are spent (so a layer fits in under a
minute even on a loaded CPU; the summary says how many steps ran). Fits are cached per (layer q/k/v
fingerprint, parameters), i.e. per (model, text, layer). Features are clamped at 1e-12 as in LoLCATs
(this also keeps denormal floats, which are very slow on CPUs, out of the products).
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..capture import check_cancel
from .common import repeat_kv
from .linear import FeatureMapVariant

_CACHE: "OrderedDict[tuple, HedgehogFit]" = OrderedDict()
CACHE_SIZE = 128
FEATURE_EPS = 1e-12


@dataclass
class HedgehogFit:
    wq: torch.Tensor            # [H, D, F]
    bq: torch.Tensor            # [H, 1, F]
    wk: torch.Tensor
    bk: torch.Tensor
    layer: int
    tokens: int                 # tokens the fit saw
    steps: int                  # Adam steps run (fewer than asked when the time budget ran out)
    seconds: float
    kl_before: float            # mean row KL(linear || softmax) at the identity initialisation
    kl_after: float
    loss_before: float          # KL(softmax || linear) + mse_weight * relative output MSE
    loss_after: float
    kl_before_heads: list = field(default_factory=list)
    kl_after_heads: list = field(default_factory=list)
    stopped_early: bool = False
    cached: bool = False

    def summary(self) -> dict:
        return {"layer": self.layer, "tokens": self.tokens, "steps": self.steps, "seconds": self.seconds,
                "stopped_early": self.stopped_early,
                "kl_before": self.kl_before, "kl_after": self.kl_after, "loss_before": self.loss_before,
                "loss_after": self.loss_after, "kl_before_heads": self.kl_before_heads,
                "kl_after_heads": self.kl_after_heads, "cached": self.cached}


def feature_map(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [B,H,N,D] (or [H,N,D]) -> [.., N, 2F]."""
    y = torch.matmul(x, w) + b
    return torch.cat([torch.softmax(y, -1), torch.softmax(-y, -1)], -1).clamp(min=FEATURE_EPS)


def _fingerprint(call, n: int) -> str:
    h = hashlib.sha1()
    for t in (call.q[0, :, :n], call.k[0, :, :n], call.v[0, :, :n]):
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    h.update(repr((call.layer, tuple(call.q.shape), call.causal, call.scale)).encode())
    return h.hexdigest()


class _Problem:
    """The softmax targets of one layer (batch item 0, first n tokens)."""

    def __init__(self, call, n: int):
        h = call.q.shape[1]
        self.causal = call.causal
        self.q = call.q[0, :, :n].float()
        self.k = repeat_kv(call.k[:1, :, :n], h)[0].float()
        self.v = repeat_kv(call.v[:1, :, :n], h)[0].float()
        self.mask = torch.ones(n, n, dtype=torch.bool).tril() if call.causal \
            else torch.ones(n, n, dtype=torch.bool)
        if call.key_valid is not None:
            self.mask = self.mask & call.key_valid[0, :n].cpu()[None, :]
        self.fmask = self.mask.float()
        with torch.no_grad():
            s = torch.matmul(self.q, self.k.transpose(-1, -2)) * call.scale
            self.logp = torch.log_softmax(s.masked_fill(~self.mask, float("-inf")), -1)
            self.p = torch.exp(self.logp)
            self.neg_ent = (self.p * self.logp.masked_fill(~self.mask, 0)).sum(-1)   # -H(p) [H, n]
            self.o = torch.matmul(self.p, self.v)
        self.rows = self.mask.any(-1)

    def terms(self, wq, bq, wk, bk, r=None):
        """-> (KL(p||a) per head [H], relative output MSE, linear weights a [H,R,n]) on query rows r
        (all when None)."""
        r = slice(None) if r is None else r
        kmax = self.q.shape[1] if isinstance(r, slice) else int(r.max()) + 1
        kmax = kmax if self.causal else self.q.shape[1]
        fq = feature_map(self.q[:, r], wq, bq)
        fk = feature_map(self.k[:, :kmax], wk, bk)
        a = torch.matmul(fq, fk.transpose(-1, -2)) * self.fmask[r, :kmax]
        z = a.sum(-1, keepdim=True).clamp(min=1e-30)
        p = self.p[:, r, :kmax]
        xent = -(p * torch.log(a.clamp(min=1e-30))).sum(-1) + torch.log(z.squeeze(-1))
        rows = self.rows[r]
        kl = ((xent + self.neg_ent[:, r]) * rows).sum(-1) / rows.sum().clamp(min=1)
        a = a / z
        o = self.o[:, r]
        mse = ((torch.matmul(a, self.v[:, :kmax]) - o) ** 2).sum() / (o ** 2).sum().clamp(min=1e-30)
        return kl, mse, a

    def kl_linear_vs_softmax(self, a) -> torch.Tensor:
        """Per head mean over rows of KL(a || p), the fidelity metric's direction."""
        la = torch.log(a.clamp(min=1e-30))
        t = torch.where(self.mask & (a > 0), a * (la - self.logp.clamp(min=-1e30)), torch.zeros_like(a))
        return (t.sum(-1) * self.rows).sum(-1) / self.rows.sum().clamp(min=1)


def fit_hedgehog(call, steps: int = 100, lr: float = 0.02, mse_weight: float = 1.0, tokens: int = 1024,
                 rows: int = 256, budget_s: float = 45.0, progress=None, cancel=None,
                 use_cache: bool = True) -> HedgehogFit:
    """Fit the per-head feature maps of one layer on its captured q/k/v (see the module docstring).
    progress(frac, message) is called every few steps; cancel() -> True aborts (raises Cancelled).
    budget_s <= 0: no time limit."""
    n = min(call.q.shape[2], call.k.shape[2], tokens)
    if call.q.shape[2] != call.k.shape[2]:
        raise ValueError("Hedgehog fits on prefill calls (as many queries as keys)")
    key = (_fingerprint(call, n), steps, lr, mse_weight, rows, budget_s)
    if use_cache and key in _CACHE:
        _CACHE.move_to_end(key)
        hit = _CACHE[key]
        return HedgehogFit(**{**hit.__dict__, "cached": True})
    t0 = time.perf_counter()
    prob = _Problem(call, n)
    h, d = prob.q.shape[0], prob.q.shape[-1]
    eye = torch.eye(d).repeat(h, 1, 1)
    params = [eye.clone().requires_grad_(), torch.zeros(h, 1, d, requires_grad=True),
              eye.clone().requires_grad_(), torch.zeros(h, 1, d, requires_grad=True)]
    with torch.no_grad():
        kl0, mse0, a0 = prob.terms(*params)
        kl_lin0 = prob.kl_linear_vs_softmax(a0)
    del a0
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(0)
    done, early = 0, False
    torch.set_flush_denormal(True)
    try:
        with torch.enable_grad():
            for i in range(steps):
                check_cancel(cancel)
                if budget_s > 0 and time.perf_counter() - t0 > budget_s:
                    early = True
                    break
                r = None if (rows <= 0 or n <= rows) else torch.randperm(n, generator=gen)[:rows].sort().values
                kl, mse, _ = prob.terms(*params, r=r)
                loss = kl.mean() + mse_weight * mse
                opt.zero_grad()
                loss.backward()
                opt.step()
                done = i + 1
                if progress is not None and (i % 5 == 4 or i == steps - 1):
                    progress((i + 1) / steps, f"Hedgehog layer {call.layer}: step {i + 1}/{steps}, "
                                              f"loss {loss.item():.4f}")
    finally:
        torch.set_flush_denormal(False)
    with torch.no_grad():
        kl1, mse1, a1 = prob.terms(*params)
        kl_lin1 = prob.kl_linear_vs_softmax(a1)
    fit = HedgehogFit(*(p.detach() for p in params), layer=call.layer, tokens=n, steps=done,
                      stopped_early=early,
                      seconds=time.perf_counter() - t0,
                      kl_before=float(kl_lin0.mean()), kl_after=float(kl_lin1.mean()),
                      loss_before=float(kl0.mean() + mse_weight * mse0),
                      loss_after=float(kl1.mean() + mse_weight * mse1),
                      kl_before_heads=[float(x) for x in kl_lin0], kl_after_heads=[float(x) for x in kl_lin1])
    if use_cache:
        _CACHE[key] = fit
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return fit


def identity_fit(call) -> HedgehogFit:
    """The unfitted initialisation (W = I, b = 0), for comparisons."""
    h, d = call.q.shape[1], call.q.shape[-1]
    eye = torch.eye(d).repeat(h, 1, 1)
    z = torch.zeros(h, 1, d)
    return HedgehogFit(eye, z, eye.clone(), z.clone(), layer=call.layer, tokens=0, steps=0, seconds=0.0,
                       kl_before=float("nan"), kl_after=float("nan"), loss_before=float("nan"),
                       loss_after=float("nan"))


class Hedgehog(FeatureMapVariant):
    family = "fitted"

    def prepare(self, call, progress=None, cancel=None) -> HedgehogFit:
        return fit_hedgehog(call, steps=self.p["steps"], lr=self.p["lr"], mse_weight=self.p["mse"],
                            tokens=self.p["tokens"], rows=self.p["rows"], budget_s=self.p["budget"],
                            progress=progress, cancel=cancel)

    def features(self, call, fit: Optional[HedgehogFit]):
        if fit is None:
            raise ValueError("Hedgehog needs its fitted feature maps (prepare) before use")
        dev = call.q.device
        fq = feature_map(call.q.float(), fit.wq.to(dev), fit.bq.to(dev))
        fk = feature_map(repeat_kv(call.k, call.q.shape[1]).float(), fit.wk.to(dev), fit.bk.to(dev))
        return fq, fk
