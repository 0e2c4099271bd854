"""Softmax (the reference) and re-weighted softmax: same support, attention mass moved.

temperature   softmax(s / t)
ACT           hidden-sink calibration (Yu et al. 2024): on non-initial tokens that soak up attention
              ("hidden sinks"), keep only beta of their weight and give the removed mass to the other keys
              in proportion to their weights. Sinks are found per head on the softmax run: keys at
              position >= 1 whose column sum exceeds alpha times the mean column sum (mean received
              attention > alpha / N). ACT's head filter, tuned on labelled data, is not applied.
ZeroTuning    scale the first token's attention by gamma and renormalise (Han et al. 2025):
              a0' = gamma a0 / D, aj' = aj / D, D = 1 + (gamma - 1) a0.
Outputs use the kernels' exact softmax output and lse plus O(N x |sinks|) corrections.
"""
from __future__ import annotations

import torch

from kernels import StatsConfig, VariantMask, attention_stats
from kernels.positions import positions, query_validity

from .base import Bound, Variant, VariantOutput
from .common import masked_softmax, repeat_kv, row_chunks

STATS_CONFIG = StatsConfig(pool_cells=16)


def softmax_stats(call, scale=None, backend="torch"):
    return attention_stats(call.q, call.k, call.v, scale=call.scale if scale is None else scale,
                           causal=call.causal, key_valid=call.key_valid, config=STATS_CONFIG, backend=backend)


class Softmax(Variant):
    family = "reference"

    def bind(self, call, state=None):
        return SoftmaxBound(self, call, state)


class SoftmaxBound(Bound):
    def output(self, lse_full=None, backend="torch"):
        st = softmax_stats(self.call, backend=backend)
        return VariantOutput(out=st.out, stats=st)

    def weights(self, rows, s, vis):
        return masked_softmax(s, vis), None


class Temperature(Variant):
    family = "reweight"

    def bind(self, call, state=None):
        return TemperatureBound(self, call, state)


class TemperatureBound(Bound):
    def output(self, lse_full=None, backend="torch"):
        st = softmax_stats(self.call, scale=self.call.scale / self.variant.p["t"], backend=backend)
        return VariantOutput(out=st.out, stats=st)

    def weights(self, rows, s, vis):
        return masked_softmax(s / self.variant.p["t"], vis), None


def first_key(call) -> torch.Tensor:
    """[B] index of the key at position 0 (the first valid key)."""
    if call.key_valid is None:
        return torch.zeros(call.q.shape[0], dtype=torch.long, device=call.q.device)
    return call.key_valid.long().argmax(-1)


class ZeroTuning(Variant):
    family = "reweight"

    def bind(self, call, state=None):
        return ZeroTuningBound(self, call, state)


class ZeroTuningBound(Bound):
    def output(self, lse_full=None, backend="torch"):
        c, g = self.call, self.variant.p["gamma"]
        st = softmax_stats(c, backend=backend)
        j0 = first_key(c)
        bidx = torch.arange(c.q.shape[0], device=c.q.device)
        k0 = repeat_kv(c.k, c.q.shape[1])[bidx, :, j0].float()                 # [B,H,D]
        v0 = repeat_kv(c.v, c.q.shape[1])[bidx, :, j0].float()
        s0 = torch.einsum("bhnd,bhd->bhn", c.q.float() * c.scale, k0)
        a0 = torch.where(torch.isfinite(st.lse), torch.exp(s0 - st.lse), torch.zeros_like(s0))
        out = (st.out.float() + (g - 1) * a0[..., None] * v0[:, :, None]) / (1 + (g - 1) * a0)[..., None]
        return VariantOutput(out=out.to(c.q.dtype), stats=st)

    def weights(self, rows, s, vis):
        g = self.variant.p["gamma"]
        p = masked_softmax(s, vis)
        j0 = first_key(self.call)
        bidx = torch.arange(p.shape[0], device=p.device)
        scale = torch.ones_like(p)
        scale[bidx, :, :, j0] = g
        p = p * scale
        return p / p.sum(-1, keepdim=True).clamp(min=1e-300), None


class ACT(Variant):
    family = "reweight"

    def prepare(self, call, progress=None, cancel=None):
        """-> [B,H,Nk] bool hidden sinks per head, from the softmax run's column sums."""
        st = softmax_stats(call)
        nk = call.k.shape[2]
        kvalid = torch.ones(call.q.shape[0], nk, dtype=torch.bool) if call.key_valid is None \
            else call.key_valid.cpu()
        kpos = positions(kvalid)
        rows = query_validity(kvalid, call.q.shape[2]).sum(-1).float()         # [B] valid query rows
        mean_col = rows / kvalid.sum(-1).clamp(min=1).float()
        colsum = st.colsum.cpu()
        return (colsum > self.p["alpha"] * mean_col[:, None, None]) & (kpos >= 1)[:, None] & kvalid[:, None]

    def bind(self, call, state=None):
        if state is None:
            raise ValueError("ACT needs its calibrated sink sets (prepare) before use")
        return ACTBound(self, call, state)


class ACTBound(Bound):
    def output(self, lse_full=None, backend="torch"):
        """out' = beta O_S + (1 - beta A_S) O_rest, O_S = sum over sinks of p v, A_S their mass, O_rest the
        softmax output over the other keys. O_rest and 1 - A_S come from the kernels (a key mask with one
        query block, retained mass), so nothing is computed as a difference of nearly equal numbers."""
        c, beta = self.call, self.variant.p["beta"]
        st = softmax_stats(c, backend=backend)
        sinks = self.state.to(c.q.device)                                     # [B,H,Nk]
        u = torch.nonzero(sinks.any(0).any(0)).flatten()
        if u.numel() == 0:
            return VariantOutput(out=st.out, stats=st)
        nq = c.q.shape[2]
        rest = attention_stats(c.q, c.k, c.v, scale=c.scale, causal=c.causal, key_valid=c.key_valid,
                               config=STATS_CONFIG, backend="torch",
                               variant=VariantMask(block_mask=~sinks[:, :, None, :], block_q=nq, block_k=1,
                                                   lse_full=st.lse))
        h = c.q.shape[1]
        ku = repeat_kv(c.k[:, :, u], h).float()                               # [B,H,U,D]
        vu = repeat_kv(c.v[:, :, u], h).float()
        su = sinks[:, :, u]                                                   # [B,H,U]
        out = st.out.float().clone()
        for a, e in row_chunks(nq, c.q.shape[0] * h * u.numel() * 16, 64):
            rows = torch.arange(a, e, device=c.q.device)
            vis = self.geo.visible(rows)[..., u]                              # [B,1,R,U]
            s = torch.matmul(c.q[:, :, a:e].float() * c.scale, ku.transpose(-1, -2))
            lse = st.lse[:, :, a:e, None]
            w = torch.where(vis & su[:, :, None] & torch.isfinite(lse), torch.exp(s - lse), torch.zeros_like(s))
            o_s = torch.matmul(w, vu)                                          # O_S
            r = rest.retained[:, :, a:e, None]                                 # 1 - A_S
            new = beta * o_s + (1 - beta * (1 - r)) * rest.out[:, :, a:e].float()
            out[:, :, a:e] = torch.where(r > 1e-12, new, out[:, :, a:e])
        return VariantOutput(out=out.to(c.q.dtype), stats=st)

    def weights(self, rows, s, vis):
        beta = self.variant.p["beta"]
        p = masked_softmax(s, vis)
        sk = self.state.to(p.device)[:, :, None, :] & vis                     # [B,H,R,Nk]
        mass = (p * sk).sum(-1, keepdim=True)
        rest = 1 - mass
        ok = rest > 1e-9
        factor = torch.where(ok, (1 - beta * mass) / torch.where(ok, rest, torch.ones_like(rest)),
                             torch.ones_like(rest))
        new = torch.where(sk, beta * p, p * factor)
        return torch.where(ok, new, p), None
