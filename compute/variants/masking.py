"""Masking variants: softmax restricted to a subset of the visible keys.

Each one reduces to a kernels.VariantMask (window / sink_keep / row_threshold / block_mask), so its output,
entropy, sink mass and retained mass R = exp(lse_variant - lse_full) come from kernels.attention_stats,
chunked, on long inputs too, and the Triton kernels implement the same masks. For a masked softmax
KL(variant || softmax) = -log R exactly. The selections (top-k thresholds, block masks) are computed here
in O(N) memory per head: per-row thresholds from chunked torch.topk, block masks from pooled scores.

The masks act on the already RoPE-rotated q/k, so tokens keep their original positions (StreamingLLM's
position-shift re-rotation inside the cache is not modelled).
"""
from __future__ import annotations


import torch

from kernels import StatsConfig, VariantMask, attention_stats

from .base import Bound, Variant, VariantOutput
from .common import Geometry, masked_softmax, repeat_kv, row_chunks, sample_rows

# Thresholds are computed from fp32 scores that may differ from the kernels' by a few ulps: lower them
# by this relative margin so the k-th key is never lost to rounding (keys within it are kept too).
THRESHOLD_MARGIN = 1e-5
STATS_CONFIG = StatsConfig(pool_cells=16)     # the output path does not need fine pooled maps


def fp32_scores(call, a: int, e: int) -> torch.Tensor:
    """[B,H,rows,Nk] fp32 scaled logits of query rows a:e, computed like the kernels ((q*scale) @ k^T)."""
    q = call.q[:, :, a:e].float() * call.scale
    return torch.matmul(q, repeat_kv(call.k, call.q.shape[1]).float().transpose(-1, -2))


def keep_rows(vm: VariantMask, geo: Geometry, rows: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[B,H,R,Nk] bool: what `vm` keeps for query rows `rows` (the kernels' semantics, any row subset)."""
    b, h, r, nk = s.shape
    keep = torch.ones(b, h, r, nk, dtype=torch.bool, device=s.device)
    if vm.window is not None:
        d = geo.qpos[:, rows][:, :, None] - geo.kpos[:, None, :]
        w = (d < vm.window) & (-d < vm.window)
        if vm.sink_keep:
            w = w | (geo.kpos[:, None, :] < vm.sink_keep)
        keep &= w[:, None]
    if vm.block_mask is not None:
        bm = vm.block_mask.to(s.device)[:, :, rows // vm.block_q]
        keep &= bm[..., torch.arange(nk, device=s.device) // vm.block_k]
    if vm.row_threshold is not None:
        keep &= s >= vm.row_threshold[:, :, rows, None].to(s.dtype)
    return keep


def with_model_window(vm: VariantMask, call) -> VariantMask:
    if call.window is not None:
        vm.window = call.window if vm.window is None else min(vm.window, call.window)
    return vm


class MaskingVariant(Variant):
    family = "masking"

    def bind(self, call, state=None) -> "MaskBound":
        return MaskBound(self, call, state)

    def make_mask(self, call, geo: Geometry, state) -> VariantMask:
        raise NotImplementedError


class MaskBound(Bound):
    def __init__(self, variant, call, state):
        super().__init__(variant, call, state)
        self.mask = with_model_window(variant.make_mask(call, self.geo, state), call)

    def output(self, lse_full=None, backend="torch") -> VariantOutput:
        vm = VariantMask(**{**self.mask.__dict__, "lse_full": lse_full})
        c = self.call
        st = attention_stats(c.q, c.k, c.v, scale=c.scale, causal=c.causal, key_valid=c.key_valid,
                             config=STATS_CONFIG, variant=vm, backend=backend)
        return VariantOutput(out=st.out, retained=st.retained, kept=st.n_visible, stats=st)

    def weights(self, rows, s, vis):
        keep = keep_rows(self.mask, self.geo, rows, s)
        return masked_softmax(s, vis & keep), None


class Window(MaskingVariant):
    def make_mask(self, call, geo, state):
        return VariantMask(window=self.p["w"])


class Streaming(MaskingVariant):
    def make_mask(self, call, geo, state):
        return VariantMask(window=self.p["window"], sink_keep=self.p["sinks"])


def _row_passes(call, geo: Geometry, fn, budget_mb: int = 64):
    """Apply fn(a, e, s_masked) over chunks of query rows; s_masked has -inf on invisible keys."""
    b, h, nq, _ = call.q.shape
    nk = call.k.shape[2]
    for a, e in row_chunks(nq, b * h * nk * 4 * 3, budget_mb):
        rows = torch.arange(a, e, device=call.q.device)
        s = fp32_scores(call, a, e).masked_fill(~geo.visible(rows), float("-inf"))
        fn(a, e, s)


def topk_thresholds(call, geo: Geometry, k: int) -> torch.Tensor:
    """[B,H,Nq] threshold that keeps the k largest visible logits of each row (all when fewer)."""
    b, h, nq, _ = call.q.shape
    thr = torch.empty(b, h, nq, dtype=torch.float32, device=call.q.device)
    kk = min(k, call.k.shape[2])

    def fn(a, e, s):
        t = s.topk(kk, dim=-1).values[..., -1]      # -inf when the row has fewer than k visible keys
        thr[:, :, a:e] = t - THRESHOLD_MARGIN * (t.abs() + 1)
    _row_passes(call, geo, fn)
    return thr


class TopK(MaskingVariant):
    def make_mask(self, call, geo, state):
        return VariantMask(row_threshold=topk_thresholds(call, geo, self.p["k"]))


class TopTheta(MaskingVariant):
    """Top-theta: one static threshold per head, calibrated on the softmax run so that rows with more
    than k visible keys keep k keys on average; each row always keeps its largest logit, and rows with
    at most k visible keys keep them all. (The paper's compensation terms are not modelled.)"""

    CALIBRATION_ROWS = 512

    def prepare(self, call, progress=None, cancel=None):
        geo = Geometry.of(call)
        k = self.p["k"]
        nvis = _visible_counts(call, geo)                           # [B, Nq]
        b, h = call.q.shape[:2]
        theta = torch.full((b, h), float("-inf"))
        for bi in range(b):
            rows = torch.nonzero(nvis[bi] > k).flatten()
            rows = sample_rows(rows, self.CALIBRATION_ROWS)
            if rows.numel() == 0:
                continue
            want = k * rows.numel()
            best = None                                             # [H, <= want] largest logits so far
            for a, e in row_chunks(rows.numel(), h * call.k.shape[2] * 4 * 3, 64):
                rr = rows[a:e]
                s = _scores_rows(call, bi, rr)
                s = s.masked_fill(~geo.visible(rr)[bi], float("-inf")).flatten(1)
                cand = s if best is None else torch.cat([best, s], 1)
                best = cand.topk(min(want, cand.shape[1]), dim=1).values
            theta[bi] = best[:, -1]
        return theta

    def make_mask(self, call, geo, theta):
        if theta is None:
            raise ValueError("top-theta needs its calibrated thresholds (prepare) before use")
        b, h, nq, _ = call.q.shape
        k = self.p["k"]
        thr = torch.empty(b, h, nq, dtype=torch.float32, device=call.q.device)
        th = theta.to(call.q.device)[:, :, None]

        def fn(a, e, s):
            n = torch.isfinite(s).sum(-1)
            rowmax = s.amax(-1)
            t = torch.minimum(th, rowmax)
            t = torch.where(n > k, t - THRESHOLD_MARGIN * (t.abs() + 1), torch.full_like(t, float("-inf")))
            thr[:, :, a:e] = t
        _row_passes(call, geo, fn)
        return VariantMask(row_threshold=thr)


def _visible_counts(call, geo: Geometry) -> torch.Tensor:
    nq = call.q.shape[2]
    rows = torch.arange(nq, device=call.q.device)
    out = torch.empty(call.q.shape[0], nq, dtype=torch.long)
    for a, e in row_chunks(nq, call.k.shape[2], 64):
        out[:, a:e] = geo.visible(rows[a:e]).sum(-1)[:, 0].cpu()
    return out


def _scores_rows(call, bi: int, rows: torch.Tensor) -> torch.Tensor:
    q = call.q[bi, :, rows].float() * call.scale                  # [H, R, D]
    k = repeat_kv(call.k[bi:bi + 1], call.q.shape[1])[0].float()
    return torch.matmul(q, k.transpose(-1, -2))


def pooled_keys(k: torch.Tensor, kvalid: torch.Tensor, block: int) -> torch.Tensor:
    """[B,Hkv,Nk,D] -> [B,Hkv,nblocks,D]: mean of the valid keys of each block of `block` keys."""
    b, hkv, nk, d = k.shape
    nb = -(-nk // block)
    pad = nb * block - nk
    w = torch.nn.functional.pad(kvalid.to(k.dtype), (0, pad)).view(b, 1, nb, block, 1)
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(b, hkv, nb, block, d)
    return (kp * w).sum(3) / w.sum(3).clamp(min=1)


class MoBA(MaskingVariant):
    """MoBA-style block gating, per query token: gate(i, c) = q_i . mean(K of block c); keep the top-b
    past blocks by gate, plus the query's own block and the first (sink) block."""

    def make_mask(self, call, geo, state):
        block, nsel = self.p["block"], self.p["blocks"]
        b, h, nq, _ = call.q.shape
        nk = call.k.shape[2]
        nb = -(-nk // block)
        kmean = repeat_kv(pooled_keys(call.k.float(), geo.kvalid, block), h)        # [B,H,nb,D]
        gate = torch.matmul(call.q.float() * call.scale, kmean.transpose(-1, -2))    # [B,H,Nq,nb]
        own = (torch.arange(nq, device=gate.device) + geo.off) // block             # [Nq] block of the query
        c = torch.arange(nb, device=gate.device)
        eligible = (c[None, :] < own[:, None]) if call.causal else (c[None, :] != own[:, None])
        eligible = eligible & (c[None, :] != 0)
        forced = (c[None, :] == own[:, None]) | (c[None, :] == 0)
        mask = forced.expand(b, h, nq, nb).clone()
        if nsel > 0:
            g = gate.masked_fill(~eligible, float("-inf"))
            top = g.topk(min(nsel, nb), dim=-1)
            sel = torch.zeros_like(mask).scatter_(-1, top.indices, torch.isfinite(top.values))
            mask |= sel
        return VariantMask(block_mask=mask, block_q=1, block_k=block)


class XAttention(MaskingVariant):
    """XAttention-style block selection: each (query block, key block) is scored by the softmax, over
    strided 'reduced' keys, of the sums of antidiagonals of its stride x stride sub-blocks; per query
    block the key blocks are kept in descending score until their cumulative share reaches tau; the
    diagonal block and the first (sink) block are always kept."""

    def make_mask(self, call, geo, state):
        block, stride, tau = self.p["block"], self.p["stride"], self.p["tau"]
        if geo.off != 0:
            raise ValueError("XAttention block selection is implemented for prefill (Nq == Nk) only")
        b, h, n, d = call.q.shape
        nb = -(-n // block)
        npad = nb * block
        m = npad // stride                                      # reduced length
        per = block // stride                                   # reduced rows per block
        qp = torch.nn.functional.pad(call.q.float(), (0, 0, 0, npad - n))
        kp = torch.nn.functional.pad(repeat_kv(call.k, h).float(), (0, 0, 0, npad - n))
        # Reduced row a gathers q[S*a + S-1-t], reduced key c gathers k[S*c + t] (t = 0..S-1), so their
        # dot product sums one antidiagonal of the S x S sub-block.
        qr = qp.view(b, h, m, stride, d).flip(3).reshape(b, h, m, stride * d)
        kr = kp.view(b, h, m, stride, d).reshape(b, h, m, stride * d)
        kval = torch.nn.functional.pad(geo.kvalid, (0, npad - n)).view(b, m, stride).any(-1)   # [B, m]
        mask = torch.zeros(b, h, nb, nb, dtype=torch.bool, device=call.q.device)
        ridx = torch.arange(m, device=call.q.device)
        qb_per_chunk = max(1, (64 << 20) // max(1, b * h * per * m * 4 * 3))
        for qa in range(0, nb, qb_per_chunk):
            qe = min(nb, qa + qb_per_chunk)
            rows = ridx[qa * per:qe * per]
            r = torch.matmul(qr[:, :, rows], kr.transpose(-1, -2)) * (call.scale / stride)
            vis = kval[:, None, None, :].expand(b, 1, rows.numel(), m)
            if call.causal:
                vis = vis & (ridx[None, :] <= rows[:, None])[None, None]
            p = masked_softmax(r, vis)                                             # [B,H,rows,m]
            mass = p.view(b, h, qe - qa, per, nb, per).sum((3, 5))                # [B,H,qblocks,nb]
            order = mass.sort(-1, descending=True)
            before = order.values.cumsum(-1) - order.values                        # mass ranked above
            total = mass.sum(-1, keepdim=True)
            take = (before < tau * total) & (order.values > 0)
            sel = torch.zeros_like(take).scatter_(-1, order.indices, take)
            qblk = torch.arange(qa, qe, device=call.q.device)
            sel[..., 0] = True                                                     # sink block
            sel |= (torch.arange(nb, device=call.q.device)[None, :] == qblk[:, None])  # diagonal block
            mask[:, :, qa:qe] = sel
        return VariantMask(block_mask=mask, block_q=block, block_k=block)
