"""Corpus overview (compute/corpus_stats.py) against per-text reports worked out by hand, and against
the corpus aggregate of compute/corpus.py on real reports of SmolLM2."""
import math

import numpy as np
import pytest

from compute.corpus_stats import corpus_overview, metric_array, role_stability
from compute.errors import InputError
from tests.corpus_helpers import valid_figure


def _rep(tid, recs, sink_rate=None):
    heads = [dict(layer=l, head=h, **f) for (l, h), f in recs.items()]
    rep = {"id": tid, "heads": heads}
    if sink_rate is not None:
        rep["sink_rate"] = sink_rate
    return rep


def _hand_corpus():
    # 1 layer x 2 heads, three texts; every number below is chosen so the results are easy by hand.
    return [
        _rep("a", {(0, 0): dict(entropy_mean=1.0, sink_metric=0.9, role="sink", collapsed=False,
                                role_scores={"sink": 0.9}),
                   (0, 1): dict(entropy_mean=3.0, sink_metric=0.1, role="local", collapsed=True,
                                role_scores={"sink": 0.1})}),
        _rep("b", {(0, 0): dict(entropy_mean=2.0, sink_metric=0.5, role="sink", collapsed=False,
                                role_scores={"sink": 0.5}),
                   (0, 1): dict(entropy_mean=5.0, sink_metric=0.2, role="broad", collapsed=False,
                                role_scores={"sink": None})}),
        _rep("c", {(0, 0): dict(entropy_mean=6.0, sink_metric=0.2, role="mixed", collapsed=False,
                                role_scores={"sink": 0.2}),
                   (0, 1): dict(entropy_mean=None, sink_metric=0.4, role="local", collapsed=False,
                                role_scores={"sink": 0.4})}, sink_rate=0.75),
    ]


def test_means_stds_by_hand():
    ov = corpus_overview(_hand_corpus())
    assert (ov["n_texts"], ov["n_layers"], ov["n_heads"]) == (3, 1, 2)
    assert ov["ids"] == ["a", "b", "c"]
    ent = metric_array(ov, "entropy_mean")
    assert ent[0, 0] == pytest.approx(3.0)                         # (1 + 2 + 6) / 3
    assert ent[0, 1] == pytest.approx(4.0)                         # (3 + 5) / 2, None skipped
    std = metric_array(ov, "entropy_mean", "std")
    assert std[0, 0] == pytest.approx(math.sqrt((4 + 1 + 9) / 3))  # population std
    assert std[0, 1] == pytest.approx(1.0)
    assert ov["metrics"]["entropy_mean"]["n"] == [[3, 2]]
    assert metric_array(ov, "collapsed")[0, 1] == pytest.approx(1 / 3)
    assert metric_array(ov, "role_scores.sink")[0, 1] == pytest.approx(0.25)      # (0.1 + 0.4) / 2
    assert metric_array(ov, "sink_metric")[0, 0] == pytest.approx(1.6 / 3)


def test_role_mode_and_stability_by_hand():
    ov = corpus_overview(_hand_corpus())
    assert ov["role_mode"] == [["sink", "local"]]
    assert ov["role_stability"][0][0] == pytest.approx(2 / 3)
    assert ov["role_stability"][0][1] == pytest.approx(2 / 3)
    assert ov["role_n_texts"] == [[3, 3]]


def test_role_ties_and_missing_roles():
    roles = np.array([["a", "b"], ["b", None], [None, None]], dtype=object).reshape(3, 1, 2)
    mode, stab, n = role_stability(roles)
    assert mode[0, 0] == "a" and stab[0, 0] == pytest.approx(0.5)      # tie: the first seen wins
    assert mode[0, 1] == "b" and stab[0, 1] == 1.0 and n[0, 1] == 1
    none = role_stability(np.full((2, 1, 1), None, dtype=object))
    assert none[0][0, 0] is None and math.isnan(none[1][0, 0])


def test_per_text_distributions_by_hand():
    pt = corpus_overview(_hand_corpus())["per_text"]
    # texts a, b: no sink_rate in the report -> share of heads with sink_metric > 0.3; c: the report's value
    assert pt["sink_rate"] == [pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.75)]
    assert pt["entropy_mean"] == [pytest.approx(2.0), pytest.approx(3.5), pytest.approx(6.0)]
    assert pt["entropy_norm_mean"] == [None, None, None]


def test_bad_inputs_are_user_errors():
    with pytest.raises(InputError, match="at least one"):
        corpus_overview([])
    with pytest.raises(InputError, match="no head records"):
        corpus_overview([{"id": "x", "heads": []}])
    a = _rep("a", {(0, 0): dict(entropy_mean=1.0)})
    b = _rep("b", {(0, 0): dict(entropy_mean=1.0), (1, 0): dict(entropy_mean=2.0)})
    with pytest.raises(InputError, match="different layer x head grids"):
        corpus_overview([a, b])
    with pytest.raises(InputError, match="no metric"):
        metric_array(corpus_overview([a]), "nope")


def test_matches_corpus_aggregate_on_real_reports(smollm):
    """The overview of real per-text reports equals compute/corpus.py's aggregate of the same texts,
    and its role mode equals the per-text labels counted directly."""
    from compute.analysis.settings import AnalysisSettings
    from compute.corpus import aggregate, summarize
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze
    from compute.report import build_report

    texts = [("p", "The cat sat on the mat because it was warm."),
             ("q", "def add(a, b):\n    return a + b\n"),
             ("r", "one two three four one two three four")]
    opts = AnalysisOptions(compute_loss=False)
    reps, results = [], {}
    for tid, text in texts:
        res = analyze(smollm, text, opts, AnalysisSettings(syntax=False, graphs=False))
        results[tid] = {"ok": True, "summary": summarize(res, lm=smollm)}
        reps.append(dict(build_report(res), id=tid))
    ov = corpus_overview(reps)
    agg = aggregate(texts, results, {})
    for m in ("entropy_mean", "sink_metric", "prev_token_mean", "top1_prob_mean"):
        np.testing.assert_allclose(metric_array(ov, m), np.array(agg["heads"][m]["mean"], float), rtol=1e-9)
        np.testing.assert_allclose(metric_array(ov, m, "std"), np.array(agg["heads"][m]["std"], float),
                                   rtol=1e-7, atol=1e-12)
    L, H = ov["n_layers"], ov["n_heads"]
    for l, h in [(0, 0), (5, 3), (L - 1, H - 1)]:
        labels = [next(r["role"] for r in rep["heads"] if (r["layer"], r["head"]) == (l, h)) for rep in reps]
        best = max(labels, key=labels.count)
        assert labels.count(ov["role_mode"][l][h]) == labels.count(best)
        assert ov["role_stability"][l][h] == pytest.approx(labels.count(best) / 3)
    assert ov["per_text"]["sink_rate"] == [pytest.approx(r["sink_rate"]) for r in reps]


# ---------------------------------------------------------------- shipped corpus and figures

def test_shipped_corpus_is_valid_and_sized(smollm):
    from pathlib import Path

    from compute.corpus import read_corpus

    path = Path(__file__).resolve().parents[1] / "compute" / "data" / "corpus" / "mixed.jsonl"
    items = read_corpus(path)
    assert 24 <= len(items) <= 50
    from compute.corpus_stats import corpus_kinds
    kinds = corpus_kinds(path)
    assert list(kinds) == [tid for tid, _ in items]
    assert set(kinds.values()) == {"prose", "dialogue", "code", "multi-document question", "repeated sequence"}
    n = [len(smollm.tokenizer(t)["input_ids"]) for _, t in items]
    assert min(n) >= 100 and max(n) <= 256
    assert (path.parent / "README.md").read_text().count("CC0") >= 1


def test_corpus_head_grid_glyphs():
    from visapp.figures.corpus import corpus_head_grid, corpus_spread_map, role_stability_map

    ov = corpus_overview(_hand_corpus())
    fig = valid_figure(corpus_head_grid(ov, "entropy_mean", selected=(0, 1)))
    glyphs = [t for t in fig.data if t.customdata is not None and len(t.customdata)]
    got = {(c[0], c[1]): c for t in glyphs for c in t.customdata}
    assert set(got) == {(0, 0), (0, 1)}
    assert got[(0, 0)][2] == "sink" and got[(0, 0)][3] == pytest.approx(3.0)        # role mode, mean
    assert got[(0, 1)][2] == "local" and got[(0, 1)][3] == pytest.approx(4.0)
    assert got[(0, 0)][4] == pytest.approx(math.sqrt(14 / 3))                          # std in hover
    assert got[(0, 0)][5] == pytest.approx(2 / 3)                                      # role stability
    assert {t.name for t in fig.data} >= {"sink", "local", "selected"}
    spread = valid_figure(corpus_spread_map(ov, "entropy_mean"))
    np.testing.assert_allclose(np.asarray(spread.data[0].z, float), [[math.sqrt(14 / 3), 1.0]], rtol=1e-6)
    stab = valid_figure(role_stability_map(ov))
    assert stab.data[0].zmin == 0 and stab.data[0].zmax == 1
    with pytest.raises(ValueError):
        corpus_head_grid(ov, "nope")


def test_text_distributions_points_and_click_ids():
    from visapp.figures.corpus import text_distributions

    reps = _hand_corpus()
    reps[0]["id"] = "<b>a&b</b>"
    ov = corpus_overview(reps)
    fig = valid_figure(text_distributions(ov, kinds=["prose", "code", "prose"], which=("sink_rate", "entropy_mean")))
    boxes = [t for t in fig.data if t.type == "box"]
    assert len(boxes) == 4                                     # 2 panels x 2 kinds
    assert {b.xaxis for b in boxes} == {"x", "x2"}
    prose = next(b for b in boxes if b.name == "prose" and b.xaxis == "x")
    assert list(prose.customdata) == ["<b>a&b</b>", "c"]                  # raw id for the click
    assert list(prose.text) == ["&lt;b&gt;a&amp;b&lt;/b&gt;", "c"]        # escaped for display
    np.testing.assert_allclose(np.asarray(prose.y, float), [0.5, 0.75])
    with pytest.raises(ValueError):
        text_distributions(ov, kinds=["x"])


def test_report_from_corpus_summary(smollm):
    """compute/corpus.py's per-text summaries give the same overview as full reports, with the same
    role labels as the report's roles section."""
    from compute.analysis.settings import AnalysisSettings
    from compute.corpus import summarize
    from compute.corpus_stats import report_from_summary
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze
    from compute.report import build_report

    texts = [("p", "Dear Anna, the garden is lovely; the roses are out."), ("q", "x = 1\ny = x + 2\nprint(y)")]
    from_sum, from_rep = [], []
    for tid, text in texts:
        res = analyze(smollm, text, AnalysisOptions(compute_loss=False), AnalysisSettings(syntax=False, graphs=False))
        from_sum.append(report_from_summary(tid, summarize(res, lm=smollm)))
        from_rep.append(dict(build_report(res), id=tid))
    for a, b in zip(from_sum, from_rep):
        assert [r["role"] for r in a["heads"]] == [r["role"] for r in b["heads"]]
        for ra, rb in zip(a["heads"], b["heads"]):
            for k, v in ra["role_scores"].items():
                assert v == pytest.approx(rb["role_scores"][k], abs=1e-12)
    ov_s, ov_r = corpus_overview(from_sum), corpus_overview(from_rep)
    assert ov_s["role_mode"] == ov_r["role_mode"] and ov_s["role_stability"] == ov_r["role_stability"]
    np.testing.assert_allclose(metric_array(ov_s, "entropy_mean"), metric_array(ov_r, "entropy_mean"), rtol=1e-12)
