"""Linear attention: a_ij = phi(q_i) . phi(k_j) / sum_j' phi(q_i) . phi(k_j') over the visible keys.

Three equivalent evaluations (tests check they agree):
  linear_parallel   quadratic: materialises the [Nq, Nk] weights (maps of short inputs, tests)
  linear_recurrent  one token at a time with the running state sum_j phi(k_j) v_j^T (tests)
  linear_chunked    the production path: causal prefix sums of phi(k) v^T across chunks plus a small
                    quadratic block inside each chunk; O(N) memory, never n x n
A normaliser z_i ~ 0 (e.g. ReLU features with no overlap) would divide by ~0: it is clamped at EPS and
the row is flagged `degenerate` (its output is ~0 and it is left out of the row metrics).

Efficient Attention (Shen et al.) is softmax over q's features times softmax over the keys' positions;
its causal form normalises each key feature over the prefix j <= i, so it is computed by its own prefix
sums (efficient_*).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Bound, Variant, VariantOutput
from .common import repeat_kv

EPS = 1e-12
CHUNK = 64


def _prep(call, fk, dtype):
    """Zero the features of padding keys and expand v to query heads."""
    h = call.q.shape[1]
    v = repeat_kv(call.v, h).to(dtype)
    if call.key_valid is not None:
        fk = fk * call.key_valid[:, None, :, None].to(fk)
    return fk, v


def linear_chunked(fq, fk, v, causal: bool, chunk: int = CHUNK):
    """fq [B,H,Nq,F], fk [B,H,Nk,F], v [B,H,Nk,Dv] -> (out [B,H,Nq,Dv], z [B,H,Nq]).
    Queries are the last Nq keys (query row i is key i + Nk - Nq)."""
    nq, nk = fq.shape[2], fk.shape[2]
    if not causal:
        s = torch.einsum("bhnf,bhnd->bhfd", fk, v)
        return torch.matmul(fq, s), torch.matmul(fq, fk.sum(2).unsqueeze(-1)).squeeze(-1)
    off = nk - nq
    s = torch.einsum("bhnf,bhnd->bhfd", fk[:, :, :off], v[:, :, :off])
    z = fk[:, :, :off].sum(2)
    outs, zs = [], []
    tri = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).tril()
    for a in range(0, nq, chunk):
        e = min(nq, a + chunk)
        c = e - a
        qc, kc, vc = fq[:, :, a:e], fk[:, :, a + off:e + off], v[:, :, a + off:e + off]
        intra = torch.matmul(qc, kc.transpose(-1, -2)) * tri[:c, :c]
        outs.append(torch.matmul(qc, s) + torch.matmul(intra, vc))
        zs.append(torch.matmul(qc, z.unsqueeze(-1)).squeeze(-1) + intra.sum(-1))
        s = s + torch.einsum("bhnf,bhnd->bhfd", kc, vc)
        z = z + kc.sum(2)
    return torch.cat(outs, 2), torch.cat(zs, 2)


def linear_parallel(fq, fk, v, causal: bool):
    """Quadratic form: -> (out [B,H,Nq,Dv], z [B,H,Nq], unnormalised weights [B,H,Nq,Nk])."""
    nq, nk = fq.shape[2], fk.shape[2]
    a = torch.matmul(fq, fk.transpose(-1, -2))
    if causal:
        i = torch.arange(nq, device=fq.device)[:, None] + (nk - nq)
        a = a * (torch.arange(nk, device=fq.device)[None, :] <= i)
    return torch.matmul(a, v), a.sum(-1), a


def linear_recurrent(fq, fk, v, causal: bool):
    """One token at a time (causal): the RNN view of linear attention. -> (out, z)."""
    if not causal:
        return linear_chunked(fq, fk, v, False)
    nq, nk = fq.shape[2], fk.shape[2]
    off = nk - nq
    s = torch.zeros(*fq.shape[:2], fq.shape[-1], v.shape[-1], dtype=fq.dtype, device=fq.device)
    z = torch.zeros(*fq.shape[:2], fq.shape[-1], dtype=fq.dtype, device=fq.device)
    outs, zs = [], []
    for j in range(nk):
        s = s + fk[:, :, j, :, None] * v[:, :, j, None, :]
        z = z + fk[:, :, j]
        i = j - off
        if i >= 0:
            outs.append(torch.einsum("bhf,bhfd->bhd", fq[:, :, i], s))
            zs.append((fq[:, :, i] * z).sum(-1))
    return torch.stack(outs, 2), torch.stack(zs, 2)


def normalise(num, z):
    degenerate = z <= EPS
    return num / z.clamp(min=EPS).unsqueeze(-1), degenerate


class FeatureMapVariant(Variant):
    """Linear attention with a feature map phi; subclasses define features(call, state)."""

    family = "linear"

    def features(self, call, state):
        """-> (phi(q) [B,H,Nq,F], phi(k) [B,H,Nk,F]) in float32 (k expanded to query heads)."""
        raise NotImplementedError

    def bind(self, call, state=None):
        return LinearBound(self, call, state)


class LinearBound(Bound):
    def __init__(self, variant, call, state):
        super().__init__(variant, call, state)
        fq, fk = variant.features(call, state)
        self.fk, self.v = _prep(call, fk, fq.dtype)
        self.fq = fq

    def output(self, lse_full=None, backend="torch") -> VariantOutput:
        num, z = linear_chunked(self.fq, self.fk, self.v, self.call.causal)
        out, deg = normalise(num, z)
        out = out * self.geo.qvalid[:, None, :, None]
        return VariantOutput(out=out.to(self.call.q.dtype), degenerate=deg)

    def weights(self, rows, s, vis):
        a = torch.matmul(self.fq[:, :, rows].double(), self.fk.double().transpose(-1, -2)) * vis
        z = a.sum(-1, keepdim=True)
        deg = z.squeeze(-1) <= EPS
        return a / z.clamp(min=EPS), deg


class EluLinear(FeatureMapVariant):
    def features(self, call, state):
        h = call.q.shape[1]
        return F.elu(call.q.float()) + 1, F.elu(repeat_kv(call.k, h).float()) + 1


class ReluLinear(FeatureMapVariant):
    def features(self, call, state):
        h = call.q.shape[1]
        return F.relu(call.q.float()), F.relu(repeat_kv(call.k, h).float())


def orthogonal_gaussian(m: int, d: int, seed: int) -> torch.Tensor:
    """[m, d] random features: stacked blocks of orthonormal rows, each row rescaled to the norm of a
    Gaussian vector (Performer's orthogonal random features; unbiased for the softmax kernel)."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-m // d)):
        qmat, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        blocks.append(qmat.T)
    w = torch.cat(blocks, 0)[:m]
    norms = torch.randn(m, d, generator=g, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


class Performer(FeatureMapVariant):
    """FAVOR+: phi(x) = m^-1/2 (exp(w x' - |x'|^2 / 2 - c) + eps), x' = sqrt(scale) x, with c the row
    max of w x' for queries and its max over all keys of the head for keys (constant factors that cancel
    in the ratio, up to eps = 1e-6, the reference implementation's numerical stabiliser). Positive random
    features are unbiased but their variance grows like exp(|q'+k'|^2): with large q/k norms many
    features are needed."""

    KERNEL_EPS = 1e-6

    def features(self, call, state):
        m, seed = self.p["m"], self.p["seed"]
        d = call.q.shape[-1]
        w = orthogonal_gaussian(m, d, seed).to(call.q.device)
        r = math.sqrt(call.scale)
        q = call.q.float() * r
        k = repeat_kv(call.k, call.q.shape[1]).float() * r
        qd, kd = q @ w.T, k @ w.T
        qn, kn = (q * q).sum(-1, keepdim=True) / 2, (k * k).sum(-1, keepdim=True) / 2
        kvalid = torch.ones_like(kd[..., :1], dtype=torch.bool) if call.key_valid is None \
            else call.key_valid[:, None, :, None]
        kmax = kd.masked_fill(~kvalid, float("-inf")).amax((-1, -2), keepdim=True)
        fq = (torch.exp(qd - qn - qd.amax(-1, keepdim=True)) + self.KERNEL_EPS) / math.sqrt(m)
        fk = (torch.exp(kd - kn - kmax) + self.KERNEL_EPS) / math.sqrt(m)
        return fq, fk


class EfficientAttention(Variant):
    """Efficient Attention: out_i = sum_d softmax_d(q_i)_d * sum_j softmax_j(k_.d)_j v_j, the key softmax
    running over each feature d along the visible keys (the prefix j <= i when causal). Inputs are scaled
    by sqrt(scale) so that q.k carries the model's logit scale."""

    family = "linear"

    def bind(self, call, state=None):
        return EfficientBound(self, call, state)


def efficient_parts(call):
    """-> (softmax_d(q) [B,H,Nq,D], exp(k - max) [B,H,Nk,D] float64, zeroed on padding keys)."""
    r = math.sqrt(call.scale)
    h = call.q.shape[1]
    sq = torch.softmax(call.q.double() * r, dim=-1)
    k = repeat_kv(call.k, h).double() * r
    if call.key_valid is not None:
        valid = call.key_valid[:, None, :, None]
        k = k.masked_fill(~valid, float("-inf"))
    ek = torch.exp(k - k.amax(2, keepdim=True))
    return sq, ek


class EfficientBound(Bound):
    def __init__(self, variant, call, state):
        super().__init__(variant, call, state)
        self.sq, self.ek = efficient_parts(call)
        nk = call.k.shape[2]
        off = nk - call.q.shape[2]
        z = self.ek.cumsum(2) if call.causal else self.ek.sum(2, keepdim=True).expand_as(self.ek)
        self.z = z[:, :, off:]                                             # [B,H,Nq,D] per-row normalisers

    def output(self, lse_full=None, backend="torch") -> VariantOutput:
        c = self.call
        v = repeat_kv(c.v, c.q.shape[1]).double()
        wq = self.sq / self.z.clamp(min=EPS)                              # [B,H,Nq,D]
        deg = (self.z <= EPS).any(-1)
        if not c.causal:
            out = torch.matmul(wq, torch.einsum("bhnd,bhne->bhde", self.ek, v))
        else:
            nq, nk = c.q.shape[2], c.k.shape[2]
            off = nk - nq
            st = torch.einsum("bhnd,bhne->bhde", self.ek[:, :, :off], v[:, :, :off])
            outs = []
            for a in range(0, nq, CHUNK):
                e = min(nq, a + CHUNK)
                kv = self.ek[:, :, a + off:e + off, :, None] * v[:, :, a + off:e + off, None, :]
                pre = st[:, :, None] + kv.cumsum(2)                        # [B,H,C,D,Dv]
                outs.append(torch.einsum("bhcd,bhcde->bhce", wq[:, :, a:e], pre))
                st = pre[:, :, -1]
            out = torch.cat(outs, 2)
        out = out * self.geo.qvalid[:, None, :, None]
        return VariantOutput(out=out.to(c.q.dtype), degenerate=deg)

    def weights(self, rows, s, vis):
        wq = self.sq[:, :, rows] / self.z[:, :, rows].clamp(min=EPS)
        a = torch.matmul(wq, self.ek.transpose(-1, -2)) * vis
        return a, (self.z[:, :, rows] <= EPS).any(-1)
