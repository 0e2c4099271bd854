"""The one pipeline: the user's text goes through the model once per analysis, every section comes
from that forward, and the reductions it fills (kernels' row observer, or the q/k fallback of backends
without one) equal the dense rows."""
import numpy as np
import pytest
import torch

from compute.analysis.reductions import DiagonalProfile, Observer, PairMass, RegionColsum
from compute.analysis.settings import AnalysisSettings
from compute.pipeline import analyze
from kernels import StatsConfig
from kernels.reference import attention_stats_dense
from kernels.torch_stats import attention_stats_torch

DOCS = ("Document [1] The mill by the river grinds wheat every autumn.\n\n"
        "Document [2] A ferry crosses the lake twice a day in summer.\n\n"
        "Document [3] The old library keeps maps of the northern coast.\n\n"
        "Question: which document mentions the lake?")
REPEAT = "alpha kiwi delta ocean violet amber " * 3


def count_text_forwards(lm, n_tokens):
    """Counts forwards of the base model whose input is as long as the analysed text."""
    base = getattr(lm.model, lm.model.base_model_prefix, lm.model)
    seen = []

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == n_tokens:
            seen.append(ids.clone())
    return base.register_forward_pre_hook(pre, with_kwargs=True), seen


def test_user_text_runs_through_the_model_once(smollm):
    """Default sections (roles with syntax, graphs, sinks, entropy) plus basins over items: one forward."""
    n = len(smollm.tokenizer(DOCS)["input_ids"])
    handle, seen = count_text_forwards(smollm, n)
    try:
        res = analyze(smollm, DOCS, None, AnalysisSettings(items="auto"))
    finally:
        handle.remove()
    assert res.n_tokens == n
    assert len(seen) == 1, f"the text went through the model {len(seen)} times"
    for key in ("sinks", "entropy", "roles", "syntax", "graphs", "basin", "dependency", "text_patterns"):
        assert key in res.extras, key
    assert res.extras["syntax"]["available"] and res.extras["basin"]["sum_check"] < 1e-5


def test_roles_on_the_users_own_text(smollm):
    """A repeated word sequence labels induction heads from the text itself, with no probe run."""
    res = analyze(smollm, REPEAT, None, AnalysisSettings(graphs=False))
    tp = res.extras["text_patterns"]
    assert tp["induction_queries"] >= 8 and tp["induction_reason"] is None
    roles = res.extras["roles"]
    assert roles["counts"].get("induction", 0) >= 1 and "induction" not in roles["unavailable"]
    ind = np.array(tp["induction"])
    # the score is the exact mean attention on the induction targets: check one head against the map
    l, h = np.unravel_index(np.argmax(ind), ind.shape)
    from compute.analysis.text_roles import induction_pairs
    r, c = induction_pairs(res.token_ids)
    A = res.maps[l, h].astype(np.float64)
    per_q = {}
    for i, j in zip(r, c):
        per_q[i] = per_q.get(i, 0.0) + A[i, j]
    assert ind[l, h] == pytest.approx(np.mean(list(per_q.values())), abs=2e-3)    # maps are float16
    hf = res.extras["head_fields"][f"{l}.{h}"]
    assert hf["role"] == "induction" and hf["induction_text"] == pytest.approx(ind[l, h])


def test_pair_indices_by_hand():
    from compute.analysis.text_roles import duplicate_pairs, induction_pairs
    ids = [9, 1, 2, 3, 1, 2, 3, 5]
    r, c = induction_pairs(ids)
    # bigram (1, 2) ends at 5 (earlier at 2 -> target 3); (2, 3) ends at 6 (earlier at 3 -> target 4)
    assert list(zip(r.tolist(), c.tolist())) == [(5, 3), (6, 4)]
    r, c = duplicate_pairs(ids)
    assert list(zip(r.tolist(), c.tolist())) == [(4, 1), (5, 2), (6, 3)]


# ---------------------------------------------------------------- reductions against dense rows

def _qk(causal, n=37, h=4, hkv=2, d=12, pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, h, n, d, generator=g)
    k = torch.randn(1, hkv, n, d, generator=g)
    kv = torch.ones(1, n, dtype=torch.bool)
    kv[:, :pad] = False
    return q, k, (kv if pad else None)


@pytest.mark.parametrize("causal,pad", [(True, 0), (False, 0), (True, 3)])
def test_row_observer_sees_the_oracle_rows(causal, pad):
    """Concatenated observer blocks equal the fp64 oracle's full maps (tiny chunks: boundaries exercised)."""
    q, k, kv = _qk(causal, pad=pad)
    got = torch.zeros(1, 4, 37, 37, dtype=torch.float64)

    def obs(a, e, p):
        got[:, :, a:e, :p.shape[-1]] = p.double()
    attention_stats_torch(q, k, None, scale=0.3, causal=causal, key_valid=kv, config=StatsConfig(mem_budget_mb=0),
                          observer=obs)
    ref = attention_stats_dense(q, k, k, scale=0.3, causal=causal, key_valid=kv,
                                config=StatsConfig(full_maps=True))
    torch.testing.assert_close(got, ref.maps.double(), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_reductions_against_dense_sums(causal):
    q, k, _ = _qk(causal, n=29)
    P = attention_stats_dense(q, k, k, scale=0.3, causal=causal, config=StatsConfig(full_maps=True)).maps[0]
    P = P.double().numpy()
    rng = np.random.default_rng(0)
    rows = np.sort(rng.integers(1, 29, 40))
    cols = np.array([rng.integers(0, r + 1) if causal else rng.integers(0, 29) for r in rows])
    pm = PairMass(rows, cols, 2, 4, 29)
    dp = DiagonalProfile(rows - cols, 2, 4, 29)
    rc = RegionColsum(20, 26, 2, 4, 29)
    attention_stats_torch(q, k, None, scale=0.3, causal=causal, config=StatsConfig(mem_budget_mb=0),
                          observer=lambda a, e, p: Observer([pm, dp, rc])(1, a, e, p))
    want = np.zeros((4, 29))
    for i, j in zip(rows, cols):
        want[:, i] += P[:, i, j]
    np.testing.assert_allclose(pm.mass[1], want, atol=1e-6)
    for t, d in enumerate(dp.offsets):
        diag = sum(P[:, i, i - d] for i in range(29) if 1 <= i - d < 29)
        np.testing.assert_allclose(dp.sums[1, :, t], diag, atol=1e-6)
    np.testing.assert_allclose(rc.rc[1], P[:, 20:26].sum(1), atol=1e-6)
    assert not pm.mass[0].any() and not rc.rc[0].any()


def test_backends_without_an_observer_recompute_the_planned_rows(smollm, monkeypatch):
    """Where the kernel cannot hand over blocks (Triton), capture recomputes the planned rows from q/k
    in the same forward: the sections come out the same."""
    s = AnalysisSettings(items="auto", graphs=False)
    native = analyze(smollm, DOCS, None, s).extras
    import compute.capture as capture
    monkeypatch.setattr(capture, "supports_observer", lambda backend: False)
    n = len(smollm.tokenizer(DOCS)["input_ids"])
    handle, seen = count_text_forwards(smollm, n)
    try:
        fallback = analyze(smollm, DOCS, None, s).extras
    finally:
        handle.remove()
    assert len(seen) == 1
    np.testing.assert_allclose(fallback["roles"]["scores"]["syntactic"], native["roles"]["scores"]["syntactic"],
                               atol=1e-6)
    np.testing.assert_allclose(fallback["basin"]["per_head"], native["basin"]["per_head"], atol=1e-6)


def test_recomputed_rows_respect_a_sliding_window():
    """row_blocks (the q/k fallback, on-demand zoom, tracing) masks keys outside a layer's window."""
    from compute.capture import AttentionCall, row_blocks
    from kernels import VariantMask
    q, k, _ = _qk(True, n=23)
    call = AttentionCall(0, q, k, k, None, True, 0.3, window=5)
    got = torch.zeros(1, 4, 23, 23)
    for a, e, p in row_blocks(call, mem_budget_mb=0):
        got[:, :, a:e, :p.shape[-1]] = p
    ref = attention_stats_dense(q, k, k, scale=0.3, causal=True, config=StatsConfig(full_maps=True),
                                variant=VariantMask(window=5)).maps
    torch.testing.assert_close(got, ref.float(), atol=2e-6, rtol=1e-5)
    i = torch.arange(23)
    assert not got[0, :, (i[:, None] - i[None, :]) >= 5].any()


def test_a_failed_save_leaves_nothing_partial(tmp_path, monkeypatch):
    """stats.npz and report.json are written beside their names and renamed: a write that fails (disk
    full) leaves neither a partial file nor a temporary one."""
    from compute import result as R
    res = R.AttentionResult.__new__(R.AttentionResult)
    for k in R.ARRAY_FIELDS:
        setattr(res, k, None)
    res.lse = np.zeros((1, 1, 3), np.float32)
    res.pooled_mean = np.zeros((1, 1, 2, 2), np.float32)

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(OSError):
        res.save(tmp_path / "o", {"model": "m"})
    assert list((tmp_path / "o").iterdir()) == []
    monkeypatch.undo()
    res.save(tmp_path / "o", {"model": "m"})
    got = np.load(tmp_path / "o" / "stats.npz")
    assert sorted(got.files) == ["lse", "pooled_mean"] and got["pooled_mean"].shape == (1, 1, 2, 2)
