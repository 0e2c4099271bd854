"""exBERT-style context search (compute/context_search.py): a token finds itself first with similarity 1,
rankings equal scikit-learn's cosine similarity, the stored vectors equal an independent forward, and
'where the head attends' equals the dense softmax of the head's q/k."""
import numpy as np
import pytest
import torch

from compute.context_search import build_index, cosine_top, search, search_at
from compute.errors import InputError
from tests.corpus_helpers import run_cli

TEXTS = [("prose", "The old lighthouse keeper climbed the stairs every night to light the lamp."),
         ("code", "def area(r):\n    return 3.14 * r * r\n"),
         ("dialog", "A: Where is the lamp?\nB: The keeper took it up the stairs.")]
LAYER, HEAD = 6, 4


@pytest.fixture(scope="module")
def index(smollm):
    return build_index(smollm, TEXTS, LAYER, HEAD, top_k=4)


@pytest.mark.parametrize("by", ["query", "hidden"])
def test_token_finds_itself_first(index, by):
    for tid, pos in [("prose", 5), ("code", 7), ("dialog", 10)]:
        hits = search_at(index, tid, pos, by=by, k=5)
        assert (hits[0]["text_id"], hits[0]["position"]) == (tid, pos)
        assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-6)
        assert all(h["similarity"] <= hits[0]["similarity"] + 1e-9 for h in hits[1:])


def test_ranking_equals_sklearn_cosine(index):
    from sklearn.metrics.pairwise import cosine_similarity

    for by in ("query", "hidden"):
        x = index.vectors[by].astype(np.float64)
        r = index.row("dialog", 4)
        ref = cosine_similarity(x[r:r + 1], x)[0]
        hits = search_at(index, "dialog", 4, by=by, k=12)
        got = [index.row(h["text_id"], h["position"]) for h in hits]
        np.testing.assert_allclose([h["similarity"] for h in hits], ref[got], atol=1e-9)
        np.testing.assert_allclose(sorted(ref, reverse=True)[:12], ref[got], atol=1e-9)


def test_vectors_and_attention_against_independent_paths(smollm, index):
    from compute.embedding import head_qk

    ids = smollm.tokenizer(TEXTS[0][1])["input_ids"]
    a, b = index.rows["prose"], index.rows["prose"] + len(ids)
    with torch.no_grad():                              # plain forward, no capture session: the sdpa path
        hs = smollm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0].numpy()
    np.testing.assert_allclose(index.vectors["hidden"][a:b], hs, atol=1e-4, rtol=1e-4)
    q, k, meta = head_qk(smollm, ids, LAYER, HEAD)
    np.testing.assert_array_equal(index.vectors["query"][a:b], q)
    s = (q.astype(np.float64) @ k.astype(np.float64).T) * meta["scale"]
    s = np.where(np.tril(np.ones_like(s, bool)), s, -np.inf)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for i in (0, 3, len(ids) - 1):
        top = np.argsort(-p[i], kind="stable")[:4]
        n = min(4, i + 1)                                  # causal row i sees i + 1 keys
        assert index.top_keys[a + i][:n].tolist() == top[:n].tolist()
        np.testing.assert_allclose(index.top_weights[a + i][:n], p[i, top[:n]], atol=1e-5)
        assert (index.top_keys[a + i][n:] == -1).all()


def test_hit_fields_and_context(index):
    hit = search_at(index, "prose", 5, k=1, context=2)[0]
    toks = index.tokens["prose"]
    assert hit["token"] == toks[5] and hit["context_tokens"] == toks[3:8] and hit["context_start"] == 3
    assert [a["position"] for a in hit["attends"]] == index.top_keys[index.row("prose", 5)].tolist()
    assert all(a["token"] == toks[a["position"]] for a in hit["attends"])
    assert sum(a["weight"] for a in hit["attends"]) <= 1.0 + 1e-6


def test_outside_text_prefix_matches_exactly(smollm, index):
    """Causal model: a text that repeats a corpus text's prefix has the same vectors on that prefix."""
    probe = build_index(smollm, [("mine", "The old lighthouse keeper climbed")], LAYER, HEAD, hidden=False)
    vec = probe.vectors["query"][probe.row("mine", 3)]
    hit = search(index, vec, "query", k=1)[0]
    assert (hit["text_id"], hit["position"]) == ("prose", 3) and hit["similarity"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(InputError, match="without hidden vectors"):
        search_at(probe, "mine", 0, by="hidden")


def test_errors(smollm, index):
    with pytest.raises(InputError, match="choose one of"):
        search_at(index, "prose", 0, by="keys")
    with pytest.raises(InputError, match="between 1 and"):
        search_at(index, "prose", 0, k=0)
    with pytest.raises(InputError, match="no text 'nope'"):
        search_at(index, "nope", 0)
    with pytest.raises(InputError, match="positions 0.."):
        search_at(index, "prose", 999)
    with pytest.raises(InputError, match="zero"):
        cosine_top(np.ones((3, 2)), np.zeros(2), 1)
    with pytest.raises(InputError, match="dimensions"):
        cosine_top(np.ones((3, 2)), np.ones(3), 1)
    with pytest.raises(InputError, match="no head 9"):
        build_index(smollm, TEXTS, 0, 9)
    with pytest.raises(InputError, match="used twice"):
        build_index(smollm, [("a", "x y"), ("a", "z")], 0, 0, hidden=False)
    # zero-norm rows rank last with similarity 0 instead of NaN
    rows, sims = cosine_top(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 1.0]), 3)
    assert rows.tolist() == [1, 2, 0] and sims[-1] == 0.0


def test_cli_search(tmp_path, capsys):
    import json

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": tid, "text": t}) + "\n" for tid, t in TEXTS))
    out = tmp_path / "o"
    base = ["search", "--corpus", str(corpus), "--layer", str(LAYER), "--head", str(HEAD), "--out", str(out), "--quiet"]
    assert run_cli(base + ["--text-id", "code", "--position", "7", "--by", "hidden", "--k", "3"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["by"] == "hidden" and len(res["hits"]) == 3
    assert (res["hits"][0]["text_id"], res["hits"][0]["position"]) == ("code", 7)
    assert res["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-6) and res["query"]["token"] == res["hits"][0]["token"]
    assert run_cli(base + ["--text", "The old lighthouse keeper", "--position", "2"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert (res["hits"][0]["text_id"], res["hits"][0]["position"]) == ("prose", 2)
    capsys.readouterr()
    assert run_cli(base + ["--text-id", "nope", "--position", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: no text 'nope' in {corpus}"
    assert run_cli(base + ["--text-id", "code", "--position", "999"]) == 2
    assert "positions 0.." in capsys.readouterr().err


def test_search_hits_table():
    import plotly.graph_objects as go
    import plotly.io as pio

    from visapp.figures.search import hit_context, search_hits_table

    hit = {"text_id": "<t>", "position": 4, "token": " b", "context_tokens": ["x", "<a>", "&", " b", "\n"],
           "context_start": 1, "similarity": 0.987654, "attends": [{"position": 0, "token": "<s>", "weight": 0.5}]}
    assert hit_context(hit) == "x&lt;a&gt;&amp;[ b]⏎"
    fig = search_hits_table({"hits": [hit, dict(hit, similarity=0.5)], "query": {"token": "<q>"}, "by": "query",
                             "layer": 1, "head": 2})
    go.Figure(fig.to_plotly_json())
    pio.to_json(fig, validate=True)
    cells = fig.data[0].cells.values
    assert list(cells[1]) == ["0.988", "0.500"] and list(cells[2])[0] == "&lt;t&gt; @4"
    assert list(cells[4])[0] == "(0)&lt;s&gt; 0.50"
    assert "&lt;q&gt;" in fig.layout.title.text
    assert search_hits_table({"hits": []}).layout.annotations[0].text == "no hits"


def test_top_keys_by_row_blocks(smollm, index, monkeypatch):
    """Rows are computed ROW_BLOCK at a time (bounded memory): small blocks give the same top keys."""
    import compute.context_search as cs

    monkeypatch.setattr(cs, "ROW_BLOCK", 5)
    small = build_index(smollm, TEXTS[:1], LAYER, HEAD, hidden=False, top_k=4)
    n = len(small.text_id)
    assert (small.top_keys == index.top_keys[:n]).all()
    np.testing.assert_allclose(small.top_weights, index.top_weights[:n], atol=1e-6)
