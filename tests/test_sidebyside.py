"""Side by side (compute/sidebyside.py, compute/cli_diff.py): Jensen-Shannon distance checked by hand,
Hungarian vs nearest matching, a model against itself (zero deltas, each head matched to itself at
distance 0), two texts, two architectures, and the CLI."""
import json
import math

import numpy as np
import pytest

from compute.options import AnalysisOptions
from compute.pipeline import analyze as analyze_text
from compute.errors import InputError
from compute.sidebyside import compare, js_matrix, match_heads, row_distributions
from tests.corpus_helpers import run_cli, valid_figure

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps."


def test_js_distance_by_hand():
    # p = (1/2, 1/2), q = (1, 0): M = (3/4, 1/4); KL(p||M) = 1/2 log2(2/3) + 1/2 log2 2, KL(q||M) = log2(4/3)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    d = math.sqrt(0.5 * (kl_p + kl_q))
    assert d == pytest.approx(0.5579, abs=1e-4)
    a = np.array([[[0.5, 0.5], [1.0, 0.0]]])                              # one head, two rows
    b = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    np.testing.assert_allclose(js_matrix(a, b), [[d / 2, 0.0, (d + 1.0) / 2]], atol=1e-12)
    # a row with no mass (nothing visible) is left out of the mean instead of counting as 0 or NaN
    a0 = np.array([[[0.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(js_matrix(a0, b), [[0.0, 0.0, 1.0]], atol=1e-12)
    # row weights: a weighted mean over rows; rows are normalised to sum 1 first (as scipy does)
    np.testing.assert_allclose(js_matrix(a * 3, b, np.array([3.0, 1.0])), [[0.75 * d, 0.0, 0.75 * d + 0.25]],
                               atol=1e-12)
    with pytest.raises(InputError, match="cannot be compared"):
        js_matrix(a, np.ones((1, 3, 2)) / 2)


def test_hungarian_differs_from_nearest():
    dist = np.array([[0.1, 0.2], [0.1, 0.9]])                            # A: 1 layer x 2 heads, B the same
    m = match_heads(dist, (1, 2), (1, 2))
    assert [(x["a"], x["b"], x["js"]) for x in m] == [("0.0", "0.1", 0.2), ("0.1", "0.0", 0.1)]
    assert [(x["nearest"], x["nearest_js"]) for x in m] == [("0.0", 0.1), ("0.0", 0.1)]
    # more heads in A than in B: the left-over head has no partner but still a nearest head
    m = match_heads(np.array([[0.5], [0.1], [0.3]]), (3, 1), (1, 1))
    assert [x["b"] for x in m] == [None, "0.0", None] and m[0]["nearest"] == "0.0"


@pytest.fixture(scope="module")
def pair(smollm):
    opts = AnalysisOptions(compute_loss=False)
    return analyze_text(smollm, TEXT, opts), analyze_text(smollm, TEXT, opts)


def test_model_against_itself(pair):
    a, b = pair
    out = compare(a, b)
    assert out["grid_match"] and out["same_tokens"] and out["matching"]["source"] == "full"
    for metric, d in out["deltas"].items():
        assert np.abs(np.array(d, float)).max() < 1e-7, metric
    assert len(out["matches"]) == a.n_layers * a.n_heads
    assert all(m["js"] < 1e-7 and m["nearest_js"] < 1e-7 for m in out["matches"])
    # each head is matched to itself unless another head of B has the very same map
    rows, _ = row_distributions(b, "full")
    for i, m in enumerate(out["matches"]):
        if m["b"] != m["a"]:
            l, h = map(int, m["b"].split("."))
            np.testing.assert_allclose(rows[l * b.n_heads + h], rows[i], atol=1e-6)
    assert sum(m["b"] == m["a"] for m in out["matches"]) > 0.9 * len(out["matches"])
    json.dumps(out, allow_nan=False)


def test_pooled_matching_and_distances_against_dense(smollm, pair):
    a = analyze_text(smollm, TEXT, AnalysisOptions(compute_loss=False, full_map_max=4, pool_cells=4))
    out = compare(a, a)
    assert out["matching"]["source"] == "pooled"
    assert all(m["js"] < 1e-9 for m in out["matches"])
    # the pooled rows are the head graph's distributions: each row block sums to 1 over key blocks
    rows, w = row_distributions(a, "pooled")
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
    assert w.sum() == a.n_tokens and rows.shape[-1] <= 32
    # distances between different heads: js_matrix equals scipy applied row by row, then averaged
    from scipy.spatial.distance import jensenshannon
    full, w = row_distributions(pair[0], "full")
    assert (w == 1).all()
    d = js_matrix(full[:3], full[3:6])
    for i in range(3):
        for j in range(3):
            ref = np.mean([jensenshannon(full[i][r], full[3 + j][r], base=2) for r in range(full.shape[1])])
            assert d[i, j] == pytest.approx(ref, abs=1e-9)
    assert d.max() > 0.05                                    # different heads really differ


def test_two_texts_one_model(smollm, pair):
    other = analyze_text(smollm, "Code: for i in range(3): print(i)", AnalysisOptions(compute_loss=False))
    out = compare(pair[0], other)
    assert out["grid_match"] and not out["same_tokens"]
    assert out["matching"]["available"] is False and "different tokens" in out["matching"]["reason"]
    assert out["matches"] == []
    from compute.summary import head_summary
    np.testing.assert_allclose(out["deltas"]["entropy_mean"],
                               head_summary(other)["entropy_mean"] - head_summary(pair[0])["entropy_mean"])


def test_two_architectures(smollm, minilm, pair):
    enc = analyze_text(minilm, TEXT, AnalysisOptions(compute_loss=False))
    out = compare(pair[0], enc)
    assert out["grid_match"] is False and out["deltas"] is None and out["matches"] == []
    prof = out["layer_profiles"]["entropy_mean"]
    assert len(prof["a"]) == 30 and len(prof["b"]) == 6
    from compute.summary import head_summary
    np.testing.assert_allclose(prof["b"], head_summary(enc)["entropy_mean"].mean(1))
    assert out["depth"]["b"][0] == pytest.approx(1 / 12)


def test_cli_diff(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text(TEXT)
    out = tmp_path / "o"
    assert run_cli(["diff", "--model", "smollm2-135m", "--model-b", "smollm2-135m", "--text-file", str(f),
                  "--out", str(out), "--quiet"]) == 0
    d = json.loads((out / "diff.json").read_text())
    assert d["matches"][0]["a"] == "0.0" and d["matches"][0]["js"] == pytest.approx(0.0, abs=1e-7)
    assert set(d["deltas"]) >= {"entropy_mean", "sink_metric"}
    assert run_cli(["diff", "--model", "smollm2-135m", "--text-file", str(f), "--text-b", "Another text here.",
                  "--out", str(out), "--quiet"]) == 0
    d = json.loads((out / "diff.json").read_text())
    assert d["matches"] == [] and d["b"]["n_tokens"] < d["a"]["n_tokens"]
    capsys.readouterr()
    assert run_cli(["diff", "--text-file", str(f), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: nothing to compare")
    assert run_cli(["diff", "--text-file", str(f), "--model-b", "no-such-model", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- figures


def test_delta_map_and_match_figures(smollm, pair):
    from visapp.figures.sidebyside import delta_map, match_map, match_rows, match_table

    other = analyze_text(smollm, TEXT, AnalysisOptions(compute_loss=False, sink_tokens=2))
    a = pair[0]
    # B = the same text with 2 sink tokens instead of 4: sink_s changes, the maps do not
    out = compare(a, other, "base", "<ft>")
    fig = valid_figure(delta_map(out, "sink_s_mass_mean"))
    z = np.asarray(fig.data[0].z, float)
    np.testing.assert_allclose(z, np.array(out["deltas"]["sink_s_mass_mean"]), rtol=1e-6, atol=1e-7)
    assert z.min() < 0                                  # fewer sink tokens, less mass on them
    assert fig.data[0].zmid == 0 and fig.data[0].zmin == -fig.data[0].zmax
    assert "&lt;ft&gt;" in fig.layout.title.text and "<ft>" not in fig.layout.title.text
    mm = valid_figure(match_map(out))
    assert np.nanmax(np.asarray(mm.data[0].z, float)) < 1e-6          # same maps: distance 0 everywhere
    tab = valid_figure(match_table(out, limit=10))
    cells = tab.data[0].cells.values
    assert len(cells) == 5 and len(cells[0]) == 10
    rows = match_rows(out)
    assert [r["js"] for r in rows] == sorted([r["js"] for r in rows], reverse=True)


def test_mismatched_grids_fall_back_to_profiles(minilm, pair):
    from visapp.figures.sidebyside import delta_map, match_map, match_table

    enc = analyze_text(minilm, TEXT, AnalysisOptions(compute_loss=False))
    out = compare(pair[0], enc)
    fig = valid_figure(delta_map(out, "entropy_mean"))
    assert [len(t.x) for t in fig.data] == [30, 6] and all(t.type == "scatter" for t in fig.data)
    np.testing.assert_allclose(np.asarray(fig.data[1].y, float), out["layer_profiles"]["entropy_mean"]["b"], rtol=1e-6)
    for f in (match_map(out), match_table(out)):
        assert "different tokens" in valid_figure(f).layout.annotations[0].text
    with pytest.raises(ValueError):
        delta_map(out, "nope")
