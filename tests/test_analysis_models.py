"""Analysis on the real models, checked against transformers' own eager attention weights."""
import json

import numpy as np
import pytest
import torch

from compute.analysis import AnalysisSettings, ROLES, attach
from compute.analysis import basins, graphs, importance, probes, sinks, syntax
from compute.analysis.tokens import token_char_spans
from compute.pipeline import analyze as analyze_text
from compute.report import build_report
from tests.helpers import eager_twin

SENTENCE = "The cat sat on the mat and looked at the birds."       # 12 SmolLM2 tokens
DOCS = json.loads(open("compute/analysis/data/basin_calibration.json").read())["prompts"][1]


@pytest.fixture(scope="module")
def smollm_eager(smollm):
    return eager_twin(smollm)


def eager_maps(model, ids) -> np.ndarray:
    """[L, H, N, N] float64 attention weights from the eager twin."""
    base = getattr(model, model.base_model_prefix, model)
    with torch.no_grad():
        att = base(input_ids=torch.tensor([list(ids)]), output_attentions=True).attentions
    return np.stack([a[0].double().numpy() for a in att])


def run_analysis(lm, res, settings):
    """The sections the pipeline builds for res's text (one forward, as every caller gets them)."""
    return analyze_text(lm, res.text, None, settings).extras


@pytest.fixture(scope="module")
def sentence_res(smollm):
    return analyze_text(smollm, SENTENCE)


# ---------------------------------------------------------------- sinks
def test_smollm_first_token_sink_matches_eager(smollm, smollm_eager, sentence_res):
    res = sentence_res
    assert res.n_tokens == 12
    A = eager_maps(smollm_eager, res.token_ids)
    sec = sinks.sinks_section(res)
    sm = np.array(sec["sink_metric"])
    np.testing.assert_allclose(sm, A[..., :, 0].mean(-1), atol=1e-5)
    np.testing.assert_allclose(np.array(sec["first_token_mass"]), A[..., 1:, 0].mean(-1), atol=1e-5)
    # ~64% of all attention mass sits on token 0 (mean over heads of the per-head sink metric)
    assert 0.55 < sec["mean_sink_metric"] < 0.75
    assert sec["mean_sink_metric"] == pytest.approx(A[..., :, 0].mean(), abs=1e-5)
    assert sec["sink_rate"] == pytest.approx(float((A[..., :, 0].mean(-1) > 0.3).mean()), abs=1e-9)
    assert sec["sink_rate"] > 0.6
    # hidden sinks from eager column means: same key/head pairs
    nq = np.arange(12, 0, -1)
    a = A.sum(-2) / nq
    u = np.array([np.mean(1.0 / np.arange(j + 1, 13)) for j in range(12)])   # uniform attention
    want = (a > 0.1) & (a > 3 * u) & (nq >= 3)
    want[..., 0] = False
    got = np.zeros_like(want)
    for h in sec["hidden_sinks"]:
        for hid in h["heads"]:
            l, hh = map(int, hid.split("."))
            got[l, hh, h["index"]] = True
    ok = (np.abs(a - 0.1) > 1e-5) & (np.abs(a - 3 * u) > 1e-5)   # ignore values within rounding of a bar
    assert (got == want)[ok].all()


def test_minilm_cls_is_the_sink_and_sep_is_not(minilm):
    text = "The quick brown fox jumps over the lazy dog. Then the dog chased the fox into the forest."
    res = analyze_text(minilm, text)
    assert res.tokens[0] == "[CLS]" and res.tokens[-1] == "[SEP]"
    A = eager_maps(eager_twin(minilm), res.token_ids)
    sec = sinks.sinks_section(res)
    np.testing.assert_allclose(np.array(sec["sink_metric"]), A[..., :, 0].mean(-1), atol=1e-5)
    rec = A.mean(-2)                                              # [L, H, N] mean received (all rows see all keys)
    cls, sep, other = rec[..., 0].mean(1), rec[..., -1].mean(1), rec[..., 1:-1].mean((1, 2))
    # measured: [CLS] gets ~0.5 of every row in layers 1-4; [SEP] no more than an ordinary token
    assert (cls[1:5] > 10 * other[1:5]).all()
    assert (sep[1:5] < 3 * other[1:5]).all() and (sep[1:5] < cls[1:5] / 5).all()
    out = run_analysis(minilm, res, AnalysisSettings(graphs=False))
    assert out["roles"]["counts"].get("sink", 0) >= 10
    assert out["roles"]["delimiter_tokens"] == 3                  # '.', '.', [SEP]


# ---------------------------------------------------------------- probes
@pytest.fixture(scope="module")
def induction(smollm):
    return probes.induction_probe(smollm, length=24, batch=2, seed=0)


def test_induction_probe_far_above_control(induction):
    s, c = induction["score"], induction["control"]
    assert s.shape == c.shape == (30, 9)
    top = np.argsort(-s.ravel())[:3]
    assert s.ravel()[top[0]] > 0.5
    assert (s.ravel()[top] > 10 * c.ravel()[top] + 0.2).all()
    assert c.max() < 0.15 and (s > 0.3).sum() >= 3


def test_induction_score_matches_eager(smollm, smollm_eager):
    r = probes.induction_probe(smollm, length=12, batch=1, seed=3)
    A = eager_maps(smollm_eager, r["example_ids"])
    want = probes.induction_score(A, r["start"], 12)
    np.testing.assert_allclose(r["score"], want, atol=1e-5)


def test_retrieval_probe_finds_copying_heads(smollm, induction):
    r = probes.retrieval_probe(smollm, trials=1, seed=0)
    assert r["trials"][0]["model_copy_accuracy"] >= 0.5
    s = r["score"]
    assert s.max() >= 0.5 and (s > 0.1).mean() < 0.2                 # sparse, as in the paper
    best = np.unravel_index(np.argmax(s), s.shape)
    assert induction["score"][best] > 0.2                             # retrieval heads copy like induction heads


# ---------------------------------------------------------------- basins
def test_basin_on_multi_document_prompt_adds_up(smollm, smollm_eager):
    res = analyze_text(smollm, DOCS)
    out = run_analysis(smollm, res, AnalysisSettings(items="auto", important_items=(4,), per_token=True,
                                                     roles=False, graphs=False))
    b = out["basin"]
    assert b["mode"] == "markers" and len(b["items"]) == 6
    assert b["sum_check"] < 1e-5
    assert b["sink"] + b["query_self"] + b["other"] + sum(b["mass"]) == pytest.approx(1.0, abs=1e-5)
    A = eager_maps(smollm_eager, res.token_ids)
    q0, q1 = b["query"]["start"], b["query"]["end"]
    assert res.tokens[q0:q1][-1].strip() == ":" and "Question" in "".join(res.tokens[q0:q1])
    for k, it in enumerate(b["items"]):
        toks = [t for t in range(1, res.n_tokens) if it["start"] <= token_char_spans(smollm, res.text, res.token_ids)[t, 0] < it["end"]]
        want = A[:, :, q0:q1][..., toks].sum(-1).mean(-1)             # [L, H]
        np.testing.assert_allclose(np.array(b["per_head"])[..., k], want, atol=1e-5)
        assert sum(b["per_token"][k]) == pytest.approx(it["mass"], abs=1e-9)
    assert b["depth"] == pytest.approx(basins.depth_score(b["mass"]))
    pref = b["ranking"]["preference"]
    assert len(pref) == 6 and b["ranking"]["suggested_order"][int(np.argmax(pref))] == 4
    assert sorted(b["ranking"]["suggested_order"]) == list(range(6))


def test_basin_bad_spans_are_one_line_errors(smollm, sentence_res):
    from compute.errors import InputError
    with pytest.raises(InputError, match="overlap"):
        run_analysis(smollm, sentence_res, AnalysisSettings(items={"items": [[0, 10], [5, 20]]}))
    with pytest.raises(InputError, match="no tokens after the last item"):
        run_analysis(smollm, sentence_res, AnalysisSettings(items={"items": [[0, 10], [12, len(SENTENCE)]]}))


# ---------------------------------------------------------------- syntax
def test_syntactic_alignment_matches_eager(smollm, smollm_eager, sentence_res):
    res = sentence_res
    out = run_analysis(smollm, res, AnalysisSettings(graphs=False))
    assert out["syntax"]["available"]
    related, _, _ = syntax.prepare(res.text, res.causal, token_char_spans(smollm, res.text, res.token_ids))
    A = eager_maps(smollm_eager, res.token_ids)
    N = res.n_tokens
    rows = [i for i, r in enumerate(related) if len(r)]
    obs = np.mean([A[..., i, related[i]].sum(-1) for i in rows], 0)
    # offset profile over keys j >= 1: m(d) = mean_i A[i, i - d]
    m = {d: np.mean([A[..., i, i - d] for i in range(d + 1, N)], 0) for d in range(N - 1)}
    pos = np.mean([sum(m[i - j] for j in related[i]) for i in rows], 0)
    hf = out["head_fields"]
    got_obs = np.array([[hf[f"{l}.{h}"]["syntactic_mass"] for h in range(9)] for l in range(30)])
    np.testing.assert_allclose(got_obs, obs, atol=1e-5)
    np.testing.assert_allclose(np.array(out["roles"]["scores"]["syntactic"]), obs - pos, atol=1e-5)
    # "sat" (token 2) links to its subject "cat" (token 1); "The" (token 0) is never counted
    assert 1 in related[2].tolist() and all(0 not in r.tolist() for r in related)


# ---------------------------------------------------------------- importance
def test_importance_gradient_and_ablation(smollm):
    ids = smollm.tokenizer("The cat sat on the mat.")["input_ids"]
    imp = importance.head_importance(smollm, ids, ablation_layers=[17])
    assert imp["available"] and imp["ablation_layers"] == [17]
    g = imp["gradient"]
    L, H = g.shape

    def loss_with(layer, head, value):
        gates = torch.ones(L, H)
        gates[layer, head] = value
        from compute.capture import CaptureSession
        hook = lambda call, out: out * gates[call.layer].view(1, H, 1, 1)
        with torch.no_grad(), CaptureSession(stats=False, output_hook=hook):
            return float(importance._lm_loss(smollm, torch.tensor([ids]))[0])

    for layer, head in [(17, 3), (0, 0)]:
        eps = 1e-2
        fd = (loss_with(layer, head, 1 + eps) - loss_with(layer, head, 1 - eps)) / (2 * eps)
        assert fd == pytest.approx(g[layer, head], rel=0.05, abs=2e-4)
        if layer == 17:
            assert imp["ablation_delta"][17, head] == pytest.approx(loss_with(17, head, 0.0) - imp["loss"], abs=1e-5)
    assert np.isnan(imp["ablation_delta"][0]).all() and np.isfinite(imp["ablation_delta"][17]).all()
    np.testing.assert_allclose(np.linalg.norm(imp["importance_norm"], axis=1)[np.abs(g).sum(1) > 0], 1.0)


def test_importance_unavailable_for_minilm(minilm):
    imp = importance.head_importance(minilm, minilm.tokenizer("a small test")["input_ids"])
    assert imp == {"available": False, "reason": imp["reason"]} and "masked-LM head" in imp["reason"]


# ---------------------------------------------------------------- everything together
def test_report_sections_and_head_fields(smollm, sentence_res):
    res = analyze_text(smollm, SENTENCE)
    out = run_analysis(smollm, res, AnalysisSettings())
    for key in ("sinks", "entropy", "roles", "graphs", "syntax", "head_fields", "analysis"):
        assert key in out
    rep = build_report(attach(res, out))
    json.dumps(rep, allow_nan=False)
    assert {h["role"] for h in rep["heads"]} <= set(ROLES) | {"mixed"}
    rec = rep["heads"][0]
    assert set(rec["role_scores"]) == {"sink", "previous-token", "local", "broad", "delimiter", "syntactic"}
    assert isinstance(rec["community"], int) and isinstance(rec["collapsed"], bool)
    assert "induction probe was not run" in rep["roles"]["unavailable"]["induction"]
    hg = rep["graphs"]["heads"]
    assert len(hg["nodes"]) == 270 and sorted(n for c in hg["communities"] for n in c) == sorted(n["id"] for n in hg["nodes"])
    assert hg["mean_js_within_layer"] is not None and 0 <= hg["modularity"] <= 1


def test_head_map_recomputed_live_matches_eager(smollm, smollm_eager, sentence_res):
    import copy
    res = copy.copy(sentence_res)
    res.maps = None
    m = graphs.head_map(smollm, res, 17, 4)
    A = eager_maps(smollm_eager, res.token_ids)
    np.testing.assert_allclose(m, A[17, 4], atol=1e-5)
    tg = graphs.token_graph(m, res.tokens, threshold=0.2)
    assert all(e["weight"] >= 0.2 and e["source"] != e["target"] for e in tg["edges"])
