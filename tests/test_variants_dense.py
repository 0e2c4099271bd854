"""Every variant against a small dense fp64 reference written here from the papers' definitions, on random
q/k/v (GQA, causal and bidirectional, padding), plus the fidelity metrics on hand-computed matrices."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from compute.capture import AttentionCall
from compute.variants import FidelityOptions, layer_fidelity, parse_spec, variant_map
from compute.variants.linear import linear_chunked, linear_parallel, linear_recurrent
from kernels import StatsConfig
from kernels.reference import attention_stats_dense


def make_call(n=40, h=4, hkv=2, d=16, causal=True, seed=0, key_valid=None, spread=2.0, nk=None):
    g = torch.Generator().manual_seed(seed)
    nk = nk or n
    q = torch.randn(1, h, n, d, generator=g) * spread
    k = torch.randn(1, hkv, nk, d, generator=g) * spread
    v = torch.randn(1, hkv, nk, d, generator=g)
    return AttentionCall(layer=0, q=q, k=k, v=v, key_valid=key_valid, causal=causal, scale=d ** -0.5)


def dense_scores(call):
    h = call.q.shape[1]
    g = h // call.k.shape[1]
    k = call.k.double().repeat_interleave(g, 1)
    v = call.v.double().repeat_interleave(g, 1)
    s = call.q.double() @ k.transpose(-1, -2) * call.scale
    nq, nk = s.shape[-2:]
    vis = torch.ones(nq, nk, dtype=torch.bool)
    if call.causal:
        vis = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
    vis = vis[None, None].expand_as(s).clone()
    if call.key_valid is not None:
        vis &= call.key_valid[:, None, None, :]
    return s, vis, v


def dense_softmax(s, keep):
    sm = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(sm, -1)
    return torch.nan_to_num(p, nan=0.0)


def all_weights(call, spec, state=None):
    """The variant's weights of every row through bound.weights, and its bound."""
    var = parse_spec(spec).build()
    state = var.prepare(call) if state is None else state
    bound = var.bind(call, state)
    s, vis, _ = dense_scores(call)
    rows = torch.arange(call.q.shape[2])
    a, _ = bound.weights(rows, s, vis[:, :1])
    return a, bound, state


def check_variant(call, spec, ref_weights, atol=1e-6):
    """Weights equal the dense reference, output equals reference weights @ v."""
    a, bound, _ = all_weights(call, spec)
    _, _, v = dense_scores(call)
    torch.testing.assert_close(a, ref_weights, atol=atol, rtol=0)
    out = bound.output().out.double()
    torch.testing.assert_close(out, ref_weights @ v, atol=2e-5, rtol=1e-4)
    return bound


# ---------------------------------------------------------------- masking

@pytest.mark.parametrize("causal", [True, False])
def test_window_and_streaming(causal):
    call = make_call(causal=causal)
    s, vis, _ = dense_scores(call)
    i = torch.arange(40)[:, None]
    j = torch.arange(40)[None, :]
    win = (i - j).abs() < 6
    check_variant(call, "window:6", dense_softmax(s, vis & win))
    check_variant(call, "sinks:3+window:6", dense_softmax(s, vis & (win | (j < 3))))


def test_topk_dense():
    call = make_call(causal=True, seed=1)
    s, vis, _ = dense_scores(call)
    keep = torch.zeros_like(vis)
    for hh in range(4):
        for i in range(40):
            row = s[0, hh, i].clone()
            idx = torch.nonzero(vis[0, hh, i]).flatten()
            top = idx[row[idx].argsort(descending=True)[:5]]
            keep[0, hh, i, top] = True
    check_variant(call, "topk:5", dense_softmax(s, keep))


def test_toptheta_calibration_and_mask():
    call = make_call(n=48, causal=True, seed=2)
    s, vis, _ = dense_scores(call)
    k = 6
    a, bound, theta = all_weights(call, f"toptheta:{k}")
    # theta: the (k x rows)-th largest visible logit over rows with more than k visible keys
    for hh in range(4):
        rows = [i for i in range(48) if vis[0, hh, i].sum() > k]
        vals = torch.cat([s[0, hh, i][vis[0, hh, i]] for i in rows]).sort(descending=True).values
        assert abs(float(theta[0, hh]) - float(vals[k * len(rows) - 1])) < 1e-4
    keep = vis.clone()
    for hh in range(4):
        for i in range(48):
            if vis[0, hh, i].sum() > k:
                t = min(float(theta[0, hh]), float(s[0, hh, i][vis[0, hh, i]].max()))
                keep[0, hh, i] &= s[0, hh, i] >= t - 1e-5 * (abs(t) + 1)
    ref = dense_softmax(s, keep)
    torch.testing.assert_close(a, ref, atol=1e-6, rtol=0)
    # calibrated to keep k per eligible row on average (the top-key guard may add a few)
    kept = (a > 0).sum(-1)[vis.sum(-1) > k].double().mean()
    assert k <= kept <= k + 1


def test_moba_dense():
    call = make_call(n=50, causal=True, seed=3)
    block, nsel = 8, 2
    s, vis, _ = dense_scores(call)
    q, kk = call.q.double()[0], call.k.double()[0].repeat_interleave(2, 0)
    nb = math.ceil(50 / block)
    keep = torch.zeros_like(vis)
    for hh in range(4):
        means = torch.stack([kk[hh, c * block:(c + 1) * block].mean(0) for c in range(nb)])
        for i in range(50):
            own = i // block
            gate = (q[hh, i] @ means.T) * call.scale
            cand = sorted([c for c in range(nb) if c < own and c != 0], key=lambda c: -float(gate[c]))[:nsel]
            blocks = set(cand) | {own, 0}
            for c in blocks:
                keep[0, hh, i, c * block:(c + 1) * block] = True
    check_variant(call, f"moba:block={block},blocks={nsel}", dense_softmax(s, vis & keep))


@pytest.mark.parametrize("causal", [True, False])
def test_xattention_dense(causal):
    n, block, stride, tau = 44, 8, 4, 0.8
    call = make_call(n=n, causal=causal, seed=4)
    s, vis, _ = dense_scores(call)
    q, kk = call.q.double()[0], call.k.double()[0].repeat_interleave(2, 0)
    nb = math.ceil(n / block)
    m = nb * block // stride
    keep = torch.zeros_like(vis)
    for hh in range(4):
        qp = torch.zeros(nb * block, 16, dtype=torch.float64)
        kp = torch.zeros_like(qp)
        qp[:n], kp[:n] = q[hh], kk[hh]
        red = torch.zeros(m, m, dtype=torch.float64)
        for a in range(m):
            for c in range(m):     # one antidiagonal of the stride x stride sub-block
                red[a, c] = sum(qp[stride * a + stride - 1 - t] @ kp[stride * c + t] for t in range(stride))
        red = red * call.scale / stride
        ok = torch.tensor([[stride * c < n and (not causal or c <= a) for c in range(m)] for a in range(m)])
        p = torch.softmax(red.masked_fill(~ok, float("-inf")), -1)
        per = block // stride
        mass = p.view(nb, per, nb, per).sum((1, 3))
        for qb in range(nb):
            chosen, cum, total = {0, qb}, 0.0, float(mass[qb].sum())
            for c in mass[qb].argsort(descending=True).tolist():
                if cum < tau * total and mass[qb, c] > 0:
                    chosen.add(c)
                cum += float(mass[qb, c])
            for c in chosen:
                keep[0, hh, qb * block:(qb + 1) * block, c * block:(c + 1) * block] = True
    check_variant(call, f"xattn:block={block},stride={stride},tau={tau}", dense_softmax(s, vis & keep))


@pytest.mark.parametrize("spec", ["window:5", "sinks:2+window:5", "topk:4", "toptheta:4", "moba:block=8,blocks=1",
                                  "xattn:block=8,stride=4,tau=0.7"])
def test_masking_matches_kernel_oracle_with_padding(spec):
    """bound.weights mirrors the kernels' VariantMask semantics (positions skip padding keys)."""
    kv = torch.ones(1, 32, dtype=torch.bool)
    kv[0, :3] = False
    call = make_call(n=32, causal=True, seed=5, key_valid=kv)
    a, bound, _ = all_weights(call, spec)
    st = attention_stats_dense(call.q, call.k, call.v, scale=call.scale, causal=True, key_valid=kv,
                               config=StatsConfig(full_maps=True), variant=bound.mask)
    torch.testing.assert_close(a[:, :, 3:], st.maps.double()[:, :, 3:], atol=1e-6, rtol=0)
    torch.testing.assert_close(bound.output().out[:, :, 3:], st.out[:, :, 3:], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_full_window_and_full_topk_equal_softmax(causal):
    call = make_call(n=30, causal=causal, seed=6)
    s, vis, v = dense_scores(call)
    p = dense_softmax(s, vis)
    for spec in ("window:30", "window:1000", "topk:30", "topk:500", "sinks:4+window:30"):
        check_variant(call, spec, p)
        r = layer_fidelity(call, spec)
        m = r["metrics"]
        np.testing.assert_allclose(m["retained"], 1.0, atol=1e-6)
        np.testing.assert_allclose(m["kl"], 0.0, atol=1e-6)
        np.testing.assert_allclose(m["out_rel_l2"], 0.0, atol=1e-6)
        np.testing.assert_allclose(m["density"], 1.0, atol=1e-6)


def test_masking_kl_is_minus_log_retained():
    call = make_call(n=40, seed=7)
    for spec in ("window:4", "topk:3", "moba:block=8,blocks=1"):
        r = layer_fidelity(call, spec)
        np.testing.assert_allclose(r["metrics"]["kl"], r["kl_rowset"], rtol=1e-4, atol=1e-6)
        assert (r["metrics"]["kl"] > 0.01).all()


# ---------------------------------------------------------------- linear

def _feats(call, fn):
    g = call.q.shape[1] // call.k.shape[1]
    return fn(call.q.double()), fn(call.k.double().repeat_interleave(g, 1)), call.v.double().repeat_interleave(g, 1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("nk", [37, 45])
def test_linear_parallel_recurrent_chunked_agree(causal, nk):
    call = make_call(n=37, nk=nk, causal=causal, seed=8)
    fq, fk, v = _feats(call, lambda x: F.elu(x) + 1)
    o_par, z_par, _ = linear_parallel(fq, fk, v, causal)
    o_rec, z_rec = linear_recurrent(fq, fk, v, causal)
    torch.testing.assert_close(o_rec, o_par, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(z_rec, z_par, atol=1e-9, rtol=1e-9)
    for chunk in (1, 5, 64):
        o_ch, z_ch = linear_chunked(fq, fk, v, causal, chunk=chunk)
        torch.testing.assert_close(o_ch, o_par, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(z_ch, z_par, atol=1e-9, rtol=1e-9)


def _dense_linear(call, fn):
    s, vis, v = dense_scores(call)
    fq, fk, _ = _feats(call, fn)
    a = (fq @ fk.transpose(-1, -2)) * vis
    return a / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [True, False])
def test_elu_relu_dense(causal):
    call = make_call(causal=causal, seed=9)
    check_variant(call, "elu", _dense_linear(call, lambda x: F.elu(x) + 1), atol=1e-5)
    check_variant(call, "relu", _dense_linear(call, F.relu), atol=1e-5)


def test_relu_zero_normaliser_is_flagged_not_nan():
    call = make_call(n=12, h=2, hkv=2, seed=10)
    call.q[0, 1, 4] = -1.0                                # phi(q) = 0: the normaliser is exactly 0
    bound = parse_spec("relu").build().bind(call)
    vo = bound.output()
    assert torch.isfinite(vo.out).all()
    assert bool(vo.degenerate[0, 1, 4]) and int(vo.degenerate.sum()) == 1
    assert float(vo.out[0, 1, 4].abs().max()) == 0.0
    m = layer_fidelity(call, "relu")["metrics"]
    assert m["degenerate"][1] == pytest.approx(1 / 12) and m["degenerate"][0] == 0
    assert np.isfinite(m["kl"]).all()


def test_performer_features_dense_and_converge_to_softmax():
    call = make_call(n=32, seed=11, spread=0.5)
    var = parse_spec("performer:m=32,seed=3").build()
    fq, fk = var.features(call, None)
    # dense reference of FAVOR+ with the same random matrix
    from compute.variants.linear import orthogonal_gaussian
    w = orthogonal_gaussian(32, 16, 3).double()
    r = call.scale ** 0.5
    x = call.q.double() * r
    y = call.k.double().repeat_interleave(2, 1) * r
    ref_q = torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2)
    ref_k = torch.exp(y @ w.T - (y * y).sum(-1, keepdim=True) / 2)
    # m^-1/2 (exp(w x' - |x'|^2/2) / c + eps): c a per-row constant for q, one per head for k
    ratio_q = (fq.double() * 32 ** 0.5 - var.KERNEL_EPS) / ref_q
    ratio_k = (fk.double() * 32 ** 0.5 - var.KERNEL_EPS) / ref_k
    torch.testing.assert_close(ratio_q, ratio_q[..., :1].expand_as(ratio_q), rtol=1e-3, atol=0)
    torch.testing.assert_close(ratio_k, ratio_k[:, :, :1, :1].expand_as(ratio_k), rtol=1e-3, atol=0)
    # the random features are unbiased: many features approximate softmax much better
    kl_small = layer_fidelity(call, "performer:m=4,seed=0")["metrics"]["kl"].mean()
    kl_large = layer_fidelity(call, "performer:m=2048,seed=0")["metrics"]["kl"].mean()
    assert kl_large < 0.005 and kl_small > 0.05


@pytest.mark.parametrize("causal", [True, False])
def test_efficient_attention_dense(causal):
    call = make_call(causal=causal, seed=12)
    s, vis, v = dense_scores(call)
    r = call.scale ** 0.5
    sq = torch.softmax(call.q.double() * r, -1)                                  # over features
    ek = torch.exp(call.k.double().repeat_interleave(2, 1) * r)                  # [B,H,N,D]
    n = 40
    ref = torch.zeros_like(s)
    for i in range(n):
        js = [j for j in range(n) if vis[0, 0, i, j]]
        zsum = ek[:, :, js].sum(2)                                                 # softmax over positions
        for j in js:
            ref[:, :, i, j] = (sq[:, :, i] * ek[:, :, j] / zsum).sum(-1)
    torch.testing.assert_close(ref.sum(-1), torch.ones_like(ref[..., 0]), atol=1e-12, rtol=0)
    check_variant(call, "efficient", ref, atol=1e-9)


# ---------------------------------------------------------------- re-weighted softmax

def test_temperature_and_zerotuning_dense():
    call = make_call(seed=13)
    s, vis, _ = dense_scores(call)
    check_variant(call, "temperature:0.5", dense_softmax(s / 0.5, vis))
    p = dense_softmax(s, vis)
    g = 2.5
    z = p.clone()
    z[..., 0] *= g
    check_variant(call, f"zerotuning:{g}", z / (1 + (g - 1) * p[..., :1]))


def test_act_calibration_and_redistribution():
    call = make_call(n=40, seed=14)
    # make key 7 (and key 0) attract every query of kv head 0: hidden sink 7; position 0 is never one
    u = torch.randn(16, generator=torch.Generator().manual_seed(1))
    call.q[0, :2] += u
    call.k[0, 0, 7] = u * 2
    call.k[0, 0, 0] = u * 2
    s, vis, _ = dense_scores(call)
    p = dense_softmax(s, vis)
    col = (p * vis).sum(-2)                                                       # [B,H,N]
    expect = (col > 5.0 * 40 / 40) & (torch.arange(40) >= 1)
    a, bound, sinks = all_weights(call, "act:beta=0.25,alpha=5")
    assert torch.equal(sinks, expect)
    assert bool(sinks[0, 0, 7]) and bool(sinks[0, 1, 7]) and not sinks[..., 0].any()
    ref = p.clone()
    for hh in range(4):
        S = expect[0, hh]
        mass = (p[0, hh] * S).sum(-1, keepdim=True)
        fac = (1 - 0.25 * mass) / (1 - mass)
        ref[0, hh] = torch.where(S, 0.25 * p[0, hh], p[0, hh] * fac)
    check_variant(call, "act:beta=0.25,alpha=5", ref)


# ---------------------------------------------------------------- fidelity metrics by hand

def test_fidelity_metrics_by_hand():
    q = torch.tensor([[[[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0], [2.0, 1.0], [0.0, -1.5]]]])
    k = torch.tensor([[[[1.0, 1.0], [-0.5, 2.0], [1.5, -1.0], [0.5, 0.5], [-1.0, -1.0]]]])
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0], [0.5, -0.5]]]])
    call = AttentionCall(0, q, k, v, None, True, 0.7)
    S = (q[0, 0].double() @ k[0, 0].double().T * 0.7).numpy()
    n = 5

    def rows(fn):
        return [fn(i) for i in range(n)]

    P = rows(lambda i: np.exp(S[i, :i + 1] - S[i, :i + 1].max()) / np.exp(S[i, :i + 1] - S[i, :i + 1].max()).sum())
    phi = lambda x: np.where(x > 0, x + 1, np.exp(x))                            # elu + 1
    fq, fk = phi(q[0, 0].double().numpy()), phi(k[0, 0].double().numpy())
    A = rows(lambda i: (fq[i] @ fk[:i + 1].T) / (fq[i] @ fk[:i + 1].T).sum())
    V = v[0, 0].double().numpy()
    kl = np.mean([np.sum(a * np.log(a / p)) for a, p in zip(A, P)])
    js = np.mean([0.5 * np.sum(a * np.log(2 * a / (a + p))) + 0.5 * np.sum(p * np.log(2 * p / (a + p)))
                  for a, p in zip(A, P)])
    ent = np.mean([-np.sum(a * np.log(a)) + np.sum(p * np.log(p)) for a, p in zip(A, P)])
    sink = np.mean([A[i][0] - P[i][0] for i in range(1, n)])
    ovl = np.mean([len(set(np.argsort(-P[i])[:2]) & set(np.argsort(-A[i])[:2])) / 2 for i in range(2, n)])
    rho = np.mean([spearmanr(S[i, :i + 1], A[i]).statistic for i in range(2, n)])
    o_ref = np.stack([p @ V[:i + 1] for i, p in enumerate(P)])
    o_var = np.stack([a @ V[:i + 1] for i, a in enumerate(A)])
    rel = np.linalg.norm(o_var - o_ref) / np.linalg.norm(o_ref)

    m = layer_fidelity(call, "elu", options=FidelityOptions(overlap_k=2))["metrics"]
    assert m["kl"][0] == pytest.approx(kl, rel=1e-5)
    assert m["js"][0] == pytest.approx(js, rel=1e-5)
    assert m["entropy_shift"][0] == pytest.approx(ent, rel=1e-5)
    assert m["sink_shift"][0] == pytest.approx(sink, rel=1e-5)
    assert m["topk_overlap"][0] == pytest.approx(ovl)
    assert m["spearman"][0] == pytest.approx(rho, rel=1e-6)
    assert m["out_rel_l2"][0] == pytest.approx(rel, rel=1e-4)
    assert np.isnan(m["retained"][0]) and m["degenerate"][0] == 0
    # the reference itself: zero divergence, perfect overlap and monotonicity
    ms = layer_fidelity(call, "softmax", options=FidelityOptions(overlap_k=2))["metrics"]
    assert abs(ms["kl"][0]) < 1e-12 and abs(ms["js"][0]) < 1e-12 and ms["topk_overlap"][0] == 1
    assert ms["spearman"][0] == pytest.approx(1.0)


def test_row_sample_path_and_variant_map():
    call = make_call(n=60, seed=15)
    full = layer_fidelity(call, "topk:6")
    samp = layer_fidelity(call, "topk:6", options=FidelityOptions(pair_rows_max=20, row_sample=16, spearman_rows=8))
    assert full["rows_mode"] == "all" and full["rows"] == 60
    assert samp["rows_mode"] == "sample" and samp["rows"] == 16 and samp["spearman_rows"] == 8
    np.testing.assert_allclose(samp["metrics"]["kl"], full["metrics"]["kl"])        # exact, all rows (-log R)
    np.testing.assert_allclose(samp["metrics"]["retained"], full["metrics"]["retained"])
    a, _, _ = all_weights(call, "topk:6")
    mp = variant_map(call, "topk:6", head=2)
    np.testing.assert_allclose(mp, a[0, 2].numpy(), atol=1e-6)
    np.testing.assert_allclose(variant_map(call, "topk:6", head=2, rows=[5, 50]), mp[[5, 50]], atol=1e-7)
    np.testing.assert_allclose(mp.sum(-1), 1.0, atol=1e-5)
