"""AttentionViz embeddings (compute/embedding.py, compute/cli_embed.py): the captured q/k reproduce the
engine's attention, the key alignment leaves attention unchanged, PCA is the top-2 SVD projection,
sampling is bounded and seeded, and the CLI writes embedding.json or one error line."""
import json

import numpy as np
import pytest
import torch

from compute.embedding import (HeadQK, align_keys, collect, context_of, embed, embedding_for_texts, head_qk,
                               reduce_2d, sample_tokens)
from compute.errors import InputError
from tests.corpus_helpers import run_cli, valid_figure

TEXT = "Alice met Bob in Paris. Alice gave Bob a book, and Bob read the book."


def softmax_rows(q, k, scale, causal):
    s = (np.asarray(q, np.float64) @ np.asarray(k, np.float64).T) * scale
    if causal:
        s = np.where(np.tril(np.ones_like(s, bool)), s, -np.inf)
    s -= s.max(1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("layer,head", [(0, 0), (7, 4), (29, 8)])
def test_captured_qk_reproduce_engine_map(smollm, layer, head):
    """GQA: SmolLM2 has 9 query heads on 3 kv heads; head 4 matches only with kv head 1, head 8 with 2."""
    from kernels import StatsConfig

    from compute.engine import capture, tokenize

    ids = tokenize(smollm, TEXT, 128)
    q, k, meta = head_qk(smollm, ids, layer, head)
    assert q.shape == k.shape == (len(ids), smollm.info.head_dim)
    sess, _ = capture(smollm, torch.tensor([ids]), config=StatsConfig(full_maps=True), layers={layer})
    engine_map = sess.results[layer].maps[0, head].numpy()
    np.testing.assert_allclose(softmax_rows(q, k, meta["scale"], meta["causal"]), engine_map, atol=1e-5)
    q2, k2, _ = align_keys(q, k, meta["scale"])          # the embedded vectors give the same attention
    np.testing.assert_allclose(softmax_rows(q2, k2, 1.0, meta["causal"]), engine_map, atol=1e-5)


def test_encoder_qk_reproduce_engine_map(minilm):
    from kernels import StatsConfig

    from compute.engine import capture, tokenize

    ids = tokenize(minilm, TEXT, 128)
    q, k, meta = head_qk(minilm, ids, 2, 5)
    assert meta["causal"] is False
    sess, _ = capture(minilm, torch.tensor([ids]), config=StatsConfig(full_maps=True), layers={2})
    np.testing.assert_allclose(softmax_rows(q, k, meta["scale"], False), sess.results[2].maps[0, 5].numpy(),
                               atol=1e-5)


def test_alignment_leaves_attention_unchanged():
    rng = np.random.default_rng(1)
    q = rng.normal(2.0, 1.0, (40, 16)) * 3.0
    k = rng.normal(-1.0, 1.0, (40, 16)) * 0.5
    q2, k2, info = align_keys(q, k, 0.25)
    for causal in (True, False):            # the aligned dot products are the model's logits (up to a row constant)
        np.testing.assert_allclose(softmax_rows(q2, k2, 1.0, causal), softmax_rows(q, k, 0.25, causal), atol=1e-12)
    np.testing.assert_allclose(q2.mean(0), k2.mean(0), atol=1e-12)              # centroids coincide
    c = info["scale_c"]
    assert np.linalg.norm(q * c, axis=1).mean() == pytest.approx(np.linalg.norm(k / c, axis=1).mean())
    np.testing.assert_allclose(q2, q * c * 0.5)                                  # sqrt(0.25) c q
    assert c == pytest.approx(np.sqrt(np.linalg.norm(k, axis=1).mean() / np.linalg.norm(q, axis=1).mean()))


def test_pca_is_top2_svd_projection():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    xy, info = reduce_2d(x, "pca")
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    signs = np.sign((xy * ref).sum(0))                 # each axis is defined up to its sign
    np.testing.assert_allclose(xy, ref * signs, atol=1e-9)
    np.testing.assert_allclose(info["explained_variance_ratio"], (s ** 2 / (s ** 2).sum())[:2], rtol=1e-9)


def test_sampling_bounded_and_seeded():
    assert sample_tokens(10, 4000).tolist() == list(range(10))
    a, b = sample_tokens(5000, 4000, seed=3), sample_tokens(5000, 4000, seed=3)
    assert len(a) == 2000 and len(set(a.tolist())) == 2000 and (a == b).all() and (np.diff(a) > 0).all()
    assert not (sample_tokens(5000, 4000, seed=4) == a).all()
    with pytest.raises(InputError):
        sample_tokens(5, 1)
    with pytest.raises(InputError, match="unknown embedding method"):
        reduce_2d(np.zeros((5, 2)), "umap")
    with pytest.raises(InputError, match="too few"):
        reduce_2d(np.zeros((2, 2)), "pca")


def test_embed_points_follow_sampled_tokens():
    rng = np.random.default_rng(0)
    toks = {"a": [f"t{i}" for i in range(30)], "b": [f"u{i}" for i in range(20)]}
    data = HeadQK(3, 4, 1, rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32),
                  ["a"] * 30 + ["b"] * 20, np.r_[np.arange(30), np.arange(20)], toks, 0.125, True)
    emb = embed(data, "pca", max_points=40, seed=0)
    pts = emb["points"]
    assert emb["method"] == "pca" and emb["n_points"] == len(pts) == 40 and emb["n_tokens"] == 50
    qs, ks = pts[:20], pts[20:]
    assert all(p["kind"] == "query" for p in qs) and all(p["kind"] == "key" for p in ks)
    assert [(p["text_id"], p["position"]) for p in qs] == [(p["text_id"], p["position"]) for p in ks]
    for p in pts:
        assert p["token"] == toks[p["text_id"]][p["position"]]
        assert "[" + p["token"] + "]" in p["context"]
    # the coordinates are PCA of the aligned sampled vectors, queries then keys
    idx = sample_tokens(50, 40, 0)
    q2, k2, _ = align_keys(data.q, data.k, data.scale)  # aligned over all tokens, then sampled
    ref, _ = reduce_2d(np.concatenate([q2[idx], k2[idx]]), "pca")
    np.testing.assert_allclose([[p["x"], p["y"]] for p in pts], ref, atol=1e-9)
    assert context_of(["a", "b", "c"], 0, 1) == "[a]b"


def test_embedding_for_texts_corpus_and_errors(smollm):
    texts = [("t1", "The cat sat on the mat."), ("t2", "def f(x):\n    return x * 2")]
    emb = embedding_for_texts(smollm, texts, 3, 2, max_points=10_000)
    n = emb["n_tokens"]
    assert n == sum(len(smollm.tokenizer(t)["input_ids"]) for _, t in texts)
    assert emb["n_points"] == 2 * n and {p["text_id"] for p in emb["points"]} == {"t1", "t2"}
    assert emb["model"] == "smollm2-135m" and emb["kv_head"] == 0
    data = collect(smollm, texts[:1], 3, 2)
    q, k, _ = head_qk(smollm, smollm.tokenizer(texts[0][1])["input_ids"], 3, 2)
    np.testing.assert_array_equal(data.q, q)
    np.testing.assert_array_equal(data.k, k)
    with pytest.raises(InputError, match="no layer 30"):
        embedding_for_texts(smollm, texts, 30, 0)
    with pytest.raises(InputError, match="no head 9"):
        embedding_for_texts(smollm, texts, 0, 9)
    with pytest.raises(InputError, match="text 'bad'"):
        embedding_for_texts(smollm, [("bad", "   ")], 0, 0)


def test_cli_embed_corpus_and_errors(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "The sun rose over the hills."}\n'
                      '{"id": 7, "text": "x = [1, 2, 3]\\nprint(x)"}\n')
    out = tmp_path / "out"
    assert run_cli(["embed", "--corpus", str(corpus), "--layer", "2", "--head", "1", "--out", str(out),
                  "--quiet", "--method", "tsne", "--max-points", "24"]) == 0
    emb = json.loads((out / "embedding.json").read_text())
    assert emb["method"] == "tsne" and len(emb["points"]) == 24
    assert {p["kind"] for p in emb["points"]} == {"query", "key"}
    assert set(emb["points"][0]) >= {"kind", "text_id", "position", "token", "x", "y"}
    assert {p["text_id"] for p in emb["points"]} <= {"a", "7"}
    capsys.readouterr()
    assert run_cli(["embed", "--text", "hello there", "--layer", "0", "--head", "99", "--out", str(out),
                  "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no head 99: the model has heads 0..8"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\nnot json\n')
    assert run_cli(["embed", "--corpus", str(bad), "--layer", "0", "--head", "0", "--out", str(out)]) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- figure

def _fake_embedding(n=40):
    rng = np.random.default_rng(5)
    toks = {"t<1>": [f"w{i % 5}" for i in range(n)], "t2": [f"v{i % 9}" for i in range(n)]}
    data = HeadQK(1, 2, 0, rng.normal(size=(2 * n, 6)).astype(np.float32), rng.normal(size=(2 * n, 6)).astype(np.float32),
                  ["t<1>"] * n + ["t2"] * n, np.r_[np.arange(n), np.arange(n)], toks, 0.1, True)
    return embed(data, "pca", max_points=4000)


@pytest.mark.parametrize("color_by", ["kind", "position", "token", "text"])
def test_embedding_scatter_every_point_once(color_by):
    from visapp.figures.embedding import embedding_scatter, point_arrays

    emb = _fake_embedding()
    fig = valid_figure(embedding_scatter(emb, color_by))
    assert all(t.type == "scattergl" for t in fig.data)
    got = point_arrays(fig)
    ref = np.array([[p["x"], p["y"]] for p in emb["points"]], np.float32)
    assert len(got) == len(ref)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, ref.astype(float).tolist()))
    custom = [c for t in fig.data if t.customdata is not None for c in t.customdata]
    assert sorted(map(tuple, custom)) == sorted((p["text_id"], p["position"], p["kind"]) for p in emb["points"])
    texts = [s for t in fig.data if t.text is not None for s in t.text]
    assert all("<1>" not in s for s in texts) and any("t&lt;1&gt;" in s for s in texts)


def test_embedding_scatter_colours():
    from visapp.figures.embedding import N_CATEGORIES, OTHER, embedding_scatter

    emb = _fake_embedding()
    kind = embedding_scatter(emb, "kind")
    assert [t.name for t in kind.data] == ["query", "key"]
    assert set(kind.data[0].marker.symbol) == {"circle"} and set(kind.data[1].marker.symbol) == {"square"}
    pos = embedding_scatter(emb, "position")
    c = np.asarray(pos.data[0].marker.color, float)
    assert c.min() == 0.0 and c.max() == pytest.approx(1.0)
    # relative position = position / (text length - 1)
    rel = {(p["text_id"], p["position"]): p["position"] / 39 for p in emb["points"]}
    np.testing.assert_allclose(c, [rel[(d[0], d[1])] for d in pos.data[0].customdata], rtol=1e-6)
    tok = embedding_scatter(emb, "token")
    named = [t for t in tok.data if t.x is not None and len(t.x) and t.x[0] is not None]
    assert named[0].name == "other" and named[0].marker.color == OTHER
    assert len(named) == N_CATEGORIES + 1                   # 14 distinct tokens: 7 coloured + other
    with pytest.raises(ValueError):
        embedding_scatter(emb, "colour")
    assert embedding_scatter({"points": []}).layout.annotations[0].text == "no points to show"


def test_layer_mode_and_head_matrix(smollm):
    """--head all: one embedding per head from the same forwards, equal to the single-head embedding."""
    from visapp.figures.embedding import head_matrix

    texts = [("t1", "The cat sat on the mat."), ("t2", "Birds fly south in winter.")]
    layer = embedding_for_texts(smollm, texts, 4, None, max_points=16)
    assert layer["n_heads"] == 9 and len(layer["points"]) == 9 * 16
    one = embedding_for_texts(smollm, texts, 4, 7, max_points=16)
    mine = [p for p in layer["points"] if p["head"] == 7]
    assert [(p["kind"], p["text_id"], p["position"]) for p in mine] == \
        [(p["kind"], p["text_id"], p["position"]) for p in one["points"]]
    np.testing.assert_allclose([[p["x"], p["y"]] for p in mine], [[p["x"], p["y"]] for p in one["points"]])
    assert layer["heads"][7]["kv_head"] == 2
    fig = valid_figure(head_matrix(layer))
    assert len(fig.layout.annotations) == 9 and fig.layout.annotations[8].text == "head 8"
    custom = [c for t in fig.data for c in t.customdata]
    assert len(custom) == 9 * 16 and {c[3] for c in custom} == set(range(9))
    assert {t.xaxis for t in fig.data} == {"x"} | {f"x{i}" for i in range(2, 10)}


def test_capture_size_is_bounded():
    from compute.embedding import MAX_CAPTURE_MB, check_capture_size

    check_capture_size(MAX_CAPTURE_MB * 2 ** 20)
    with pytest.raises(InputError, match=f"more than {MAX_CAPTURE_MB} MiB; use fewer or shorter texts"):
        check_capture_size(MAX_CAPTURE_MB * 2 ** 20 + 1)
    with pytest.raises(InputError, match="search index of this corpus would take more than 1 MiB"):
        check_capture_size(2 ** 21, 1, "search index")


def test_embedding_scatter_by_group_with_shipped_kinds(tmp_path):
    from compute.corpus import read_corpus
    from compute.corpus_stats import corpus_kinds
    from visapp.figures.embedding import embedding_scatter, point_arrays

    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "t<1>", "text": "a", "kind": "prose"}\n{"id": "t2", "text": "b"}\n')
    read_corpus(path)
    kinds = corpus_kinds(path)
    assert kinds == {"t<1>": "prose", "t2": None}
    emb = _fake_embedding()
    fig = valid_figure(embedding_scatter(emb, "group", groups=kinds))
    named = {t.name: t for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None}
    assert set(named) == {"prose", "(none)"} and len(point_arrays(fig)) == len(emb["points"])
    assert {c[0] for c in named["prose"].customdata} == {"t<1>"}
    with pytest.raises(ValueError, match="needs groups"):
        embedding_scatter(emb, "group")
