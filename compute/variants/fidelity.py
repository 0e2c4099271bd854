"""Per-head fidelity of a variant against softmax on the same captured q/k/v (one layer).

Metrics (arrays [H], one value per query head; rows are valid query rows):
  out_rel_l2      ||O_variant - O_softmax||_F / ||O_softmax||_F over all rows (efficient output paths)
  kl              mean row KL(variant || softmax) in nats. Masking variants: exactly -log R over all rows
                  (R = retained mass); others: over the row set (see below)
  js              mean row Jensen-Shannon divergence (nats, <= ln 2)
  retained        masking only: mean softmax mass on the kept keys, all rows
  density         masking only: mean fraction of the visible keys kept, all rows
  kept            masking only: mean number of keys kept per row, all rows
  entropy_shift   mean row entropy of the variant minus that of softmax (nats)
  sink_shift      mean change of the attention on the first token, rows at position >= 1
  topk_overlap    mean |top-k(softmax) & top-k(variant)| / k over rows with more than k visible keys
                  (a variant key counts only with a non-zero weight)
  spearman        monotonicity: mean over rows of Spearman's rho between the logits and the variant's
                  weights on the visible keys (ties averaged; rows with >= 3 keys), on a row sample
  degenerate      fraction of rows whose variant normaliser was ~0 (linear maps; left out of row metrics)
The row set is every valid row when Nq <= pair_rows_max, else row_sample evenly spaced rows; rows are
processed in chunks, so nothing is n x n for long inputs (the row set is at most row_sample x Nk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.stats import rankdata

from kernels import AttentionStats, StatsConfig, attention_stats

from .common import Geometry, row_chunks, sample_rows, scores
from .registry import parse_spec

METRICS = ("out_rel_l2", "kl", "js", "retained", "density", "kept", "entropy_shift", "sink_shift",
           "topk_overlap", "spearman", "degenerate")


@dataclass(frozen=True)
class FidelityOptions:
    overlap_k: int = 8
    pair_rows_max: int = 512       # all rows up to this many queries, else a row sample
    row_sample: int = 256
    spearman_rows: int = 256
    budget_mb: int = 128


def reference_stats(call, backend: str = "torch") -> AttentionStats:
    """Softmax statistics of the call (output, lse, entropy...) from the kernels."""
    return attention_stats(call.q, call.k, call.v, scale=call.scale, causal=call.causal,
                           key_valid=call.key_valid, config=StatsConfig(pool_cells=16), backend=backend)


def metric_rows(geo: Geometry, options: FidelityOptions) -> tuple[torch.Tensor, str]:
    """Query rows used for the row metrics: all valid rows of any batch item, or a sample."""
    valid = torch.nonzero(geo.qvalid.any(0)).flatten()
    if valid.numel() <= options.pair_rows_max:
        return valid, "all"
    return sample_rows(valid, options.row_sample), "sample"


def spearman_rows(s: torch.Tensor, a: torch.Tensor, vis: torch.Tensor) -> np.ndarray:
    """[B,H,R] Spearman rho between logits s and weights a over the visible keys of each row
    (NaN for rows with < 3 visible keys or constant weights). Invisible entries rank last in both."""
    b, h, r, nk = a.shape
    vis = vis.expand(b, h, r, nk).cpu().numpy()
    x = np.where(vis, s.cpu().numpy(), np.inf).reshape(-1, nk)
    y = np.where(vis, a.cpu().numpy(), np.inf).reshape(-1, nk)
    vis = vis.reshape(-1, nk)
    n = vis.sum(-1)
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    mean = (n + 1) / 2.0
    dx = np.where(vis, rx - mean[:, None], 0.0)
    dy = np.where(vis, ry - mean[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (dx * dy).sum(-1) / np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    rho = np.where(n >= 3, rho, np.nan)
    return rho.reshape(b, h, r)


def layer_fidelity(call, spec, state=None, ref: Optional[AttentionStats] = None,
                   options: FidelityOptions = FidelityOptions(), backend: str = "torch", variant=None) -> dict:
    """Fidelity of one variant on one layer's call. `state` is the variant's prepare() result (computed
    here when None). Returns {"metrics": {name: np.ndarray [H]}, "rows": n, "rows_mode": "all"|"sample",
    "spearman_rows": n, "kl_rowset": KL over the row set [H], "state": state}. Metrics a variant does not
    have are NaN."""
    spec = parse_spec(spec)
    variant = variant or spec.build()
    if state is None:
        state = variant.prepare(call)
    ref = ref if ref is not None else reference_stats(call, backend)
    bound = variant.bind(call, state)
    geo = bound.geo
    b, h, nq, _ = call.q.shape
    nk = call.k.shape[2]
    nan = np.full(h, np.nan)
    m = {name: nan.copy() for name in METRICS}
    qv = geo.qvalid[:, None, :].to(torch.float64)                                  # [B,1,Nq]

    vo = bound.output(lse_full=ref.lse, backend=backend)
    diff = ((vo.out.double() - ref.out.double()) ** 2 * qv[..., None]).sum((0, 2, 3))
    norm = (ref.out.double() ** 2 * qv[..., None]).sum((0, 2, 3))
    m["out_rel_l2"] = (diff.sqrt() / norm.sqrt().clamp(min=1e-30)).cpu().numpy()
    nrows = qv.sum((0, 2)).clamp(min=1)                                              # [1]
    if vo.retained is not None:
        r = vo.retained.double()
        m["retained"] = ((r * qv).sum((0, 2)) / nrows).cpu().numpy()
        m["kl"] = ((-torch.log(r.clamp(min=1e-300)) * qv).sum((0, 2)) / nrows).cpu().numpy()
        m["kept"] = ((vo.kept.double() * qv).sum((0, 2)) / nrows).cpu().numpy()
        dens = vo.kept.double() / ref.n_visible.double().clamp(min=1)
        m["density"] = ((dens * qv).sum((0, 2)) / nrows).cpu().numpy()
    deg_all = vo.degenerate
    m["degenerate"] = np.zeros(h) if deg_all is None else \
        ((deg_all.double() * qv).sum((0, 2)) / nrows).cpu().numpy()

    rows, mode = metric_rows(geo, options)
    k = options.overlap_k
    j0 = geo.kvalid.long().argmax(-1)                                              # first key per item
    bidx = torch.arange(b)
    srows = sample_rows(rows, options.spearman_rows)                              # a subset of rows
    in_srows = torch.isin(rows, srows)
    acc = {name: torch.zeros(h, dtype=torch.float64) for name in ("kl", "js", "ent", "sink", "ovl")}
    cnt = {name: torch.zeros(h, dtype=torch.float64) for name in ("rows", "sink", "ovl")}
    rho_sum, rho_n = np.zeros(h), np.zeros(h)
    for a_, e_ in row_chunks(rows.numel(), b * h * nk * 8 * 8, options.budget_mb):
        rr = rows[a_:e_]
        s = scores(call, rr)
        vis = geo.visible(rr)
        has = vis.any(-1, keepdim=True)                                            # [B,1,R,1]
        logp = torch.log_softmax(s.masked_fill(~vis, float("-inf")).masked_fill(~has, 0.0), -1)
        p = torch.exp(logp).mul_(vis)
        logp.masked_fill_(~vis, 0.0)
        a, deg = bound.weights(rr, s, vis)
        a = a.double()
        sel = in_srows[a_:e_]
        if bool(sel.any()):                                                        # monotonicity rows
            rho = spearman_rows(s[:, :, sel], a[:, :, sel], vis[:, :, sel])
            if deg is not None:
                rho = np.where(deg[:, :, sel].cpu().numpy(), np.nan, rho)
            okr = np.isfinite(rho)
            rho_sum += np.where(okr, rho, 0).sum((0, 2))
            rho_n += okr.sum((0, 2))
        del s
        ok = has.squeeze(-1).expand(b, h, -1)
        if deg is not None:
            ok = ok & ~deg
        okf = ok.double()
        # KL(a||p) = sum a log a - sum a log p; JS = (sum a log a + sum p log p) / 2 - sum m log m
        ala = torch.special.xlogy(a, a).sum(-1)
        plp = (p * logp).sum(-1)
        alp = (a * logp).sum(-1)
        m_ = (a + p).mul_(0.5)
        mlm = torch.special.xlogy(m_, m_).sum(-1)
        del m_, logp
        acc["kl"] += ((ala - alp).clamp(min=0) * okf).sum((0, 2))
        acc["js"] += ((0.5 * (ala + plp) - mlm).clamp(min=0) * okf).sum((0, 2))
        acc["ent"] += ((plp - ala) * okf).sum((0, 2))
        cnt["rows"] += okf.sum((0, 2))
        # attention on the first token, rows at position >= 1
        a0, p0 = a[bidx, :, :, j0], p[bidx, :, :, j0]                            # [B,H,R]
        sk = (ok & (geo.qpos[:, rr] >= 1)[:, None]).double()
        acc["sink"] += ((a0 - p0) * sk).sum((0, 2))
        cnt["sink"] += sk.sum((0, 2))
        # top-k overlap on rows with more than k visible keys
        nvis = vis.sum(-1)                                                         # [B,1,R]
        if nk > k:
            ip = p.masked_fill(~vis, -1.0).topk(k, -1).indices
            ta = a.masked_fill(~vis, -1.0).topk(k, -1)
            hit = (ip[..., :, None] == ta.indices[..., None, :]) & (ta.values > 0)[..., None, :]
            ovl = hit.any(-1).sum(-1).double() / k
            ro = (ok & (nvis > k)).double()
            acc["ovl"] += (ovl * ro).sum((0, 2))
            cnt["ovl"] += ro.sum((0, 2))
        del p, a

    def mean(name, c):
        n = cnt[c].numpy()
        return np.where(n > 0, acc[name].numpy() / np.maximum(n, 1), np.nan)

    kl_rows = mean("kl", "rows")
    if vo.retained is None:
        m["kl"] = kl_rows
    m["js"] = mean("js", "rows")
    m["entropy_shift"] = mean("ent", "rows")
    m["sink_shift"] = mean("sink", "sink")
    m["topk_overlap"] = mean("ovl", "ovl")

    with np.errstate(invalid="ignore", divide="ignore"):
        m["spearman"] = rho_sum / rho_n
    return {"metrics": m, "rows": int(rows.numel()), "rows_mode": mode, "spearman_rows": int(srows.numel()),
            "kl_rowset": kl_rows, "state": state}


MAP_MAX_ROWS = 2048


def variant_map(call, spec, head: int, rows=None, state=None, batch: int = 0) -> np.ndarray:
    """The variant's attention weights of one head, float32 [R, Nk] (R = len(rows), default all query rows;
    for more than MAP_MAX_ROWS queries give `rows`). spec 'softmax' gives the softmax map; a difference
    map is variant_map(spec) - variant_map('softmax'). Calibrated variants use `state` or prepare it
    (Hedgehog fits are cached per layer and text)."""
    from ..errors import InputError
    spec = parse_spec(spec)
    h, nq = call.q.shape[1], call.q.shape[2]
    if not 0 <= head < h:
        raise InputError(f"head {head} out of range (0..{h - 1})")
    if rows is None:
        if nq > MAP_MAX_ROWS:
            raise InputError(f"{nq} query rows: a full map is only built up to {MAP_MAX_ROWS}; pass rows")
        rows = torch.arange(nq)
    rows = torch.as_tensor(rows, dtype=torch.long).flatten()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= nq):
        raise InputError(f"rows must lie in 0..{nq - 1}")
    variant = spec.build()
    if state is None:
        state = variant.prepare(call)
    bound = variant.bind(call, state)
    out = []
    for a_, e_ in row_chunks(rows.numel(), call.q.shape[0] * h * call.k.shape[2] * 8 * 4, 128):
        rr = rows[a_:e_]
        w, _ = bound.weights(rr, scores(call, rr), bound.geo.visible(rr))
        out.append(w[batch, head].float())
    return torch.cat(out, 0).cpu().numpy()
