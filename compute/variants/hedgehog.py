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

Bounded and reported: steps, tokens, rows and the time budget are capped (CAPS, the same values the
registry's spec parser enforces; a direct call past a cap is an InputError before any work). A fit
times its first Adam step and reports an estimate for the layer (setup + min(steps x step time,
budget)) before the rest of the fit runs; fit_layers (and the Hedgehog variant across its prepare
calls) reports each fitted layer in order with the time left for the planned layers.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..capture import check_cancel
from ..errors import InputError
from .common import repeat_kv
from .linear import FeatureMapVariant

_CACHE: "OrderedDict[tuple, HedgehogFit]" = OrderedDict()
CACHE_SIZE = 128
FEATURE_EPS = 1e-12
# Largest allowed fit parameters: bound a fit's work (issue 15); registry.py's hedgehog params use them.
CAPS = {"steps": 2000, "tokens": 8192, "rows": 8192, "budget": 600.0}


def check_caps(steps: int, tokens: int, rows: int, budget_s: float) -> None:
    """One clear line for a parameter past its cap (or not a sensible value), before any work."""
    for name, v, lo in (("steps", steps, 1), ("tokens", tokens, 2), ("rows", rows, 0), ("budget", budget_s, 0)):
        if v != v or v < lo or v > CAPS[name]:
            raise InputError(f"hedgehog: {name} must be between {lo} and {CAPS[name]:g}, got {v:g}")


@dataclass
class FitEstimate:
    """Expected seconds of one layer's fit, from its first timed Adam step."""
    layer: int
    setup_s: float              # building the softmax targets of the layer
    step_s: float               # one Adam step
    steps: int
    budget_s: float

    @property
    def per_layer_s(self) -> float:
        fit = self.steps * self.step_s
        return self.setup_s + (min(fit, self.budget_s) if self.budget_s > 0 else fit)

    def total_s(self, n_layers: int) -> float:
        return self.per_layer_s * max(1, int(n_layers))

    def message(self, n_layers: int = 1) -> str:
        capped = self.budget_s > 0 and self.steps * self.step_s > self.budget_s
        how = f"{self.steps} steps x {1000 * self.step_s:.0f} ms" + (", capped by the time budget" if capped else "")
        many = f", about {self.total_s(n_layers):.0f} s for {n_layers} layers" if n_layers > 1 else ""
        return f"Hedgehog: about {self.per_layer_s:.1f} s per layer ({how}){many}"


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
    estimate_s: Optional[float] = None   # the estimate made after the first step

    def summary(self) -> dict:
        return {"layer": self.layer, "tokens": self.tokens, "steps": self.steps, "seconds": self.seconds,
                "stopped_early": self.stopped_early, "estimate_s": self.estimate_s,
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
                 use_cache: bool = True, on_estimate: Optional[Callable[[FitEstimate], None]] = None) -> HedgehogFit:
    """Fit the per-head feature maps of one layer on its captured q/k/v (see the module docstring).
    progress(frac, message) is called every few steps; cancel() -> True aborts (raises Cancelled).
    on_estimate(FitEstimate) is called once, after the first step (timed), before the rest of the fit;
    without it the estimate goes to progress.
    budget_s <= 0: no time limit. Parameters past CAPS raise InputError."""
    check_caps(steps, tokens, rows, budget_s)
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
    setup_s, est = time.perf_counter() - t0, None
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
                if i == 0:
                    est = FitEstimate(layer=call.layer, setup_s=setup_s,
                                      step_s=time.perf_counter() - t0 - setup_s, steps=steps, budget_s=budget_s)
                    if on_estimate is not None:          # the caller reports it (for all its layers)
                        on_estimate(est)
                    elif progress is not None:
                        progress(1 / steps, f"{est.message()} (layer {call.layer})")
                if progress is not None and (i % 5 == 4 or i == steps - 1):
                    progress((i + 1) / steps, f"Hedgehog layer {call.layer}: step {i + 1}/{steps}, "
                                              f"loss {loss.item():.4f} (about {est.per_layer_s:.0f} s per layer)")
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
                      kl_before_heads=[float(x) for x in kl_lin0], kl_after_heads=[float(x) for x in kl_lin1],
                      estimate_s=est.per_layer_s if est is not None else None)
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


LayerDone = Callable[[int, int, HedgehogFit, Optional[float]], None]


class LayerTracker:
    """Per-layer reporting across the fits of one comparison: the estimate before the first fit, then
    each fitted layer in order as (index, planned layers, fit, seconds left)."""

    def __init__(self, n_layers: Optional[int] = None, layer_done: Optional[LayerDone] = None):
        self.n_layers = n_layers
        self.layer_done = layer_done
        self.seconds: list[float] = []
        self.estimate: Optional[FitEstimate] = None

    def remaining_s(self) -> Optional[float]:
        if not self.n_layers:
            return None
        left = max(0, self.n_layers - len(self.seconds))
        per = (sum(self.seconds) / len(self.seconds)) if self.seconds else \
            (self.estimate.per_layer_s if self.estimate else None)
        return None if per is None else per * left

    def on_estimate(self, est: FitEstimate) -> None:
        if self.estimate is None:
            self.estimate = est

    def done(self, fit: HedgehogFit, progress=None, elapsed: Optional[float] = None) -> None:
        """Record a fitted layer; elapsed = wall time of the call (a cached fit costs ~0, not its
        original fit time)."""
        self.seconds.append(fit.seconds if elapsed is None else elapsed)
        k, eta = len(self.seconds), self.remaining_s()
        if self.layer_done is not None:
            self.layer_done(k - 1, self.n_layers or k, fit, eta)
        if progress is not None:
            of = f"{k}/{self.n_layers}" if self.n_layers else f"{k}"
            left = f"; about {eta:.0f} s left" if eta is not None and self.n_layers and k < self.n_layers else ""
            progress(1.0, f"Hedgehog layer {fit.layer} fitted ({of}) in {self.seconds[-1]:.1f} s"
                          f"{' (cached)' if fit.cached else ''}{left}")


def fit_layers(calls: Sequence, *, steps: int = 100, lr: float = 0.02, mse_weight: float = 1.0,
               tokens: int = 1024, rows: int = 256, budget_s: float = 45.0, progress=None, cancel=None,
               layer_done: Optional[LayerDone] = None, use_cache: bool = True) -> dict:
    """Fit several layers in order ({layer: HedgehogFit}). progress(frac, message) gets the estimate for
    all layers before the first layer's fit goes on, then one message per fitted layer; layer_done(index,
    n_layers, fit, seconds_left) is called once per layer, in order."""
    check_caps(steps, tokens, rows, budget_s)
    calls = list(calls)
    n = len(calls)
    track = LayerTracker(n, layer_done)
    out = {}

    def announce(est: FitEstimate) -> None:
        track.on_estimate(est)
        if progress is not None and len(track.seconds) == 0:
            progress(0.0, est.message(n))

    for i, call in enumerate(calls):
        sub = None if progress is None else (lambda f, m, i=i: progress((i + min(f, 1.0)) / n, m))
        t0 = time.perf_counter()
        fit = fit_hedgehog(call, steps=steps, lr=lr, mse_weight=mse_weight, tokens=tokens, rows=rows,
                           budget_s=budget_s, progress=sub, cancel=cancel, use_cache=use_cache,
                           on_estimate=announce)
        out[call.layer] = fit
        track.done(fit, sub, time.perf_counter() - t0)
    return out


class Hedgehog(FeatureMapVariant):
    family = "fitted"
    tracker: Optional[LayerTracker] = None

    def plan(self, layers: Sequence[int], layer_done: Optional[LayerDone] = None) -> None:
        """Tell the variant which layers the comparison will fit (in order), so its messages carry
        'k/N' and the time left; optional layer_done(index, n_layers, fit, seconds_left) per layer."""
        self.tracker = LayerTracker(len(list(layers)), layer_done)

    def prepare(self, call, progress=None, cancel=None) -> HedgehogFit:
        """Fit one layer (called per layer by the comparison). The first fit reports its estimate
        (for every planned layer when plan() was called) before fitting on; each fit reports itself."""
        if self.tracker is None:
            self.tracker = LayerTracker()
        track = self.tracker

        def announce(est: FitEstimate) -> None:
            first = track.estimate is None and not track.seconds
            track.on_estimate(est)
            if first and progress is not None:
                progress(0.0, est.message(track.n_layers or 1))

        t0 = time.perf_counter()
        fit = fit_hedgehog(call, steps=self.p["steps"], lr=self.p["lr"], mse_weight=self.p["mse"],
                           tokens=self.p["tokens"], rows=self.p["rows"], budget_s=self.p["budget"],
                           progress=progress, cancel=cancel, on_estimate=announce)
        track.done(fit, progress, time.perf_counter() - t0)
        return fit

    def features(self, call, fit: Optional[HedgehogFit]):
        if fit is None:
            raise ValueError("Hedgehog needs its fitted feature maps (prepare) before use")
        dev = call.q.device
        fq = feature_map(call.q.float(), fit.wq.to(dev), fit.bq.to(dev))
        fk = feature_map(repeat_kv(call.k, call.q.shape[1]).float(), fit.wk.to(dev), fit.bk.to(dev))
        return fq, fk
