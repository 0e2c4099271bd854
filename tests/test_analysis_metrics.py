"""Every analysis metric against hand-computed small matrices (no model needed, fast)."""
import math

import numpy as np
import pytest
import torch

from compute.analysis import basins, entropy, graphs, probes, roles, sinks, syntax
from compute.analysis.common import delimiter_mask, plain
from compute.analysis.live import region_colsum
from compute.analysis.settings import AnalysisSettings
from compute.capture import AttentionCall, row_blocks
from compute.errors import InputError
from tests.analysis_helpers import causal_rows, result_from_maps


def two_heads():
    """Head 0: 0.7 on token 0 from every row i >= 1; head 1: uniform causal."""
    N = 4
    A = np.zeros((1, 2, N, N))
    A[0, 0, 0, 0] = 1.0
    for i in range(1, N):
        A[0, 0, i, 0] = 0.7
        A[0, 0, i, 1:i + 1] = 0.3 / i
        A[0, 1, i, :i + 1] = 1.0 / (i + 1)
    A[0, 1, 0, 0] = 1.0
    return A


# ---------------------------------------------------------------- sinks
def test_first_token_mass_sink_metric_and_rate_by_hand():
    res = result_from_maps(two_heads())
    sec = sinks.sinks_section(res, eps=0.6)
    assert sec["first_token_mass"][0][0] == pytest.approx(0.7)
    assert sec["first_token_mass"][0][1] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert sec["sink_metric"][0][0] == pytest.approx((1 + 3 * 0.7) / 4)
    assert sec["sink_metric"][0][1] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # eps 0.6: only head 0 (0.775) passes, head 1 is 0.52
    assert sec["sink_rate"] == 0.5 and sec["sink_heads"] == ["0.0"]
    assert sinks.sink_rate(np.array([[0.775, 0.52]]), 0.5) == 1.0
    assert sec["layer_curve"]["first_token_mass"][0] == pytest.approx((0.7 + 13 / 36) / 2)


def test_hidden_sinks_by_hand():
    N = 6
    A = np.zeros((1, 1, N, N))
    for i in range(N):
        if i < 2:
            A[0, 0, i, :i + 1] = 1.0 / (i + 1)
        else:                      # half of every later row on token 2, the rest on token 0
            A[0, 0, i, 2] = 0.5
            A[0, 0, i, 0] = 0.5
    A[0, 0, 5] = 0.0
    A[0, 0, 5, 5] = 1.0            # last token attends to itself: a_5 = 1 from a single query
    res = result_from_maps(A, tokens=list("abcdef"))
    a2 = A[0, 0, :, 2].sum() / 4                  # seen by rows 2..5
    sec = sinks.sinks_section(res, tau=0.1, min_query_frac=0.25, uniform_ratio=1.0)
    found = {h["index"]: h for h in sec["hidden_sinks"]}
    assert set(found) == {2}                       # a_1 = 0.5 / 5 = 0.1 is not > 0.1
    assert found[2]["mean_received"] == pytest.approx(a2) and found[2]["token"] == "c"
    assert found[2]["heads"] == ["0.0"] and found[2]["n_heads"] == 1
    # a_5 = 1 but only one query sees token 5 (< ceil(0.25 * 6) = 2): not a hidden sink
    assert 5 not in found
    loose = sinks.hidden_sinks(res.colsum, res.n_queries, tau=0.1, min_query_frac=0.0)
    assert loose[0, 0, 5]
    # uniform attention would give key 2 u_2 = mean(1/3, 1/4, 1/5, 1/6) = 0.2375; 3 x u_2 > a_2 = 0.375
    assert sinks.sinks_section(res, tau=0.1, min_query_frac=0.25, uniform_ratio=3.0)["hidden_sinks"] == []


def test_uniform_received_by_hand():
    nv = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    nq = np.array([[[4.0, 3.0, 2.0, 1.0]]])
    u = sinks.uniform_received(nv, nq, causal=True)
    np.testing.assert_allclose(u[0, 0], [(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, (1 / 2 + 1 / 3 + 1 / 4) / 3,
                                         (1 / 3 + 1 / 4) / 2, 1 / 4])
    u = sinks.uniform_received(np.full((1, 1, 4), 4.0), np.full((1, 1, 4), 4.0), causal=False)
    np.testing.assert_allclose(u, 0.25)


def test_hidden_sink_threshold_is_strict():
    colsum = np.array([[[3.0, 0.5, 0.2]]])
    nq = np.array([[[3.0, 2.0, 1.0]]])
    m = sinks.hidden_sinks(colsum, nq, tau=0.25, min_query_frac=0.0)
    assert m.tolist() == [[[False, False, False]]]          # a_1 = 0.25 is not > 0.25; a_2 = 0.2
    m = sinks.hidden_sinks(colsum, nq, tau=0.2, min_query_frac=0.0)
    assert m.tolist() == [[[False, True, False]]]            # token 0 never counts


# ---------------------------------------------------------------- entropy
def test_entropy_section_by_hand():
    N = 5
    A = np.zeros((1, 2, N, N))
    A[0, 0, :, 0] = 1.0                                     # one-hot on token 0: entropy 0
    for i in range(N):
        A[0, 1, i, :i + 1] = 1.0 / (i + 1)                  # uniform: normalised entropy 1
    res = result_from_maps(A)
    sec = entropy.entropy_section(res, collapse_threshold=0.1)
    assert sec["entropy_mean"][0][0] == pytest.approx(0.0, abs=1e-12)
    assert sec["entropy_mean"][0][1] == pytest.approx(np.mean([math.log(i + 1) for i in range(N)]))
    assert sec["entropy_norm_mean"][0][1] == pytest.approx(1.0)
    assert sec["collapsed"] == [[True, False]] and sec["collapsed_heads"] == ["0.0"]
    assert sec["query_profile"][0] is None                  # row 0 sees one key: undefined
    assert sec["query_profile"][3] == pytest.approx(0.5)    # mean of 0 and 1
    assert sec["layer_profile"][0][2] == pytest.approx(0.5)


def test_entropy_block_mean_ignores_nan():
    x = np.array([[np.nan, 1.0, 3.0, np.nan, 5.0]])
    assert entropy.block_mean(x, 2).tolist() == [[1.0, 3.0, 5.0]]


# ---------------------------------------------------------------- roles
def test_stat_role_scores_by_hand():
    rng = np.random.default_rng(1)
    A = causal_rows(rng, 2, 3, 12)
    W = 3
    res = result_from_maps(A, local_window=W, tokens=["a", "b", ",", "c", "\n", "d", ".", "e", "f", "g", "!", "h"])
    dm = delimiter_mask(res.tokens, res.token_ids, [])
    assert np.nonzero(dm)[0].tolist() == [2, 4, 6, 10]
    sc = roles.stat_role_scores(res, dm)
    N = 12
    prev = np.mean([A[..., i, i - 1] for i in range(2, N)], 0)
    loc = np.mean([sum(A[..., i, j] for j in range(max(1, i - W + 1), i + 1)) for i in range(1, N)], 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        H = -(np.where(A > 0, A * np.log(np.where(A > 0, A, 1)), 0)).sum(-1)
    hn = np.mean([H[..., i] / math.log(i + 1) for i in range(W - 1, N)], 0)   # rows seeing >= W keys
    delim = A[..., [2, 4, 6, 10]].sum(-1).mean(-1)
    np.testing.assert_allclose(sc["sink"], A[..., 1:, 0].mean(-1), atol=1e-12)
    np.testing.assert_allclose(sc["previous-token"], prev, atol=1e-12)
    np.testing.assert_allclose(sc["local"], loc, atol=1e-12)
    np.testing.assert_allclose(sc["broad"], hn, atol=1e-12)
    np.testing.assert_allclose(sc["delimiter"], delim, rtol=1e-6)        # colsum is float32


def test_delimiter_mask_specials_and_line_breaks():
    toks = ["<s>", "Hello", ",", " world", "\n\n", " ", "[SEP]", "...", "a."]
    m = delimiter_mask(toks, [1, 5, 6, 7, 8, 9, 2, 10, 11], special_ids=[1, 2])
    assert m.tolist() == [False, False, True, False, True, False, True, True, False]


def test_label_rule_uses_score_over_threshold():
    scores = {"sink": np.array([[0.6, 0.2, 0.9]]), "previous-token": np.array([[0.5, 0.1, 0.45]]),
              "local": np.array([[0.1, 0.5, 0.0]])}
    thr = {"sink": 0.5, "previous-token": 0.4, "local": 0.6}
    lab = roles.label_heads(scores, thr)
    # head 0: sink 1.2x, prev 1.25x -> previous-token; head 1: nothing passes; head 2: sink 1.8x vs prev 1.125x
    assert lab.tolist() == [["previous-token", "mixed", "sink"]]
    lab = roles.label_heads(scores, {**thr, "local": 0.5})
    assert lab[0, 1] == "local"


# ---------------------------------------------------------------- syntax
def test_syntax_token_mapping_and_related_sets():
    # words: w0 "The"(0-3) w1 "cat"(4-7) w2 "sleeps"(8-14); the cat's head is sleeps, The's head is cat
    spans = np.array([[0, 3], [4, 7], [8, 11], [11, 14], [-1, -1]])       # "sleeps" = 2 tokens, then a special
    tw = syntax.token_words(spans, [(0, 3), (4, 7), (8, 14)], 14)
    assert tw.tolist() == [0, 1, 2, 2, -1]
    links = [{1}, {0, 2}, {1}]
    rel = syntax.related_tokens(tw, links, causal=True)
    assert [r.tolist() for r in rel] == [[], [], [1], [1], []]            # token 0 (the sink) never counts
    rel_bi = syntax.related_tokens(tw, links, causal=False)
    assert [r.tolist() for r in rel_bi] == [[1], [2, 3], [1], [1], []]
    L, H, N = 1, 2, 5
    rng = np.random.default_rng(0)
    mass, pos = rng.random((L, H, N)), rng.random((L, H, N))
    top1 = np.array([[[0, 2, 1, 2, 0], [0, 0, 0, 1, 0]]])
    nvis = np.full((L, H, N), 5.0)
    sc = syntax.syntactic_scores(mass, pos, rel_bi, top1, nvis)
    np.testing.assert_allclose(sc["syntactic_mass"], mass[:, :, :4].mean(-1))
    np.testing.assert_allclose(sc["syntactic"], (mass - pos)[:, :, :4].mean(-1))
    np.testing.assert_allclose(sc["syntactic_top1"], [[2 / 4, 1 / 4]])     # rows 1, 2 / row 3
    assert sc["baseline"] == pytest.approx((1 + 2 + 1 + 1) / 4 / 5) and sc["n_queries"] == 4


def test_offset_counts_and_positional_expectation_by_hand():
    assert syntax.offset_counts(4, causal=True).tolist() == [0, 0, 0, 3, 2, 1, 0]
    assert syntax.offset_counts(4, causal=False).tolist() == [1, 2, 3, 3, 2, 1, 0]
    osum = np.zeros((1, 1, 7))
    osum[0, 0, 3:6] = [0.9, 0.8, 0.3]                       # offsets 0, 1, 2 over 3, 2, 1 pairs
    rel = [np.array([], int), np.array([], int), np.array([1]), np.array([1, 2])]
    pe = syntax.positional_expectation(osum, rel, causal=True)
    # query 2 -> key 1 (offset 1: 0.8 / 2); query 3 -> keys 1, 2 (offsets 2, 1: 0.3 / 1 + 0.8 / 2)
    np.testing.assert_allclose(pe[0, 0], [0, 0, 0.4, 0.7])


def _call(rng, h=4, hkv=2, n=11, d=8, causal=True):
    q = torch.tensor(rng.standard_normal((1, h, n, d)), dtype=torch.float32)
    k = torch.tensor(rng.standard_normal((1, hkv, n, d)), dtype=torch.float32)
    return AttentionCall(3, q, k, k.clone(), None, causal, d ** -0.5)


def _dense(call):
    g = call.q.shape[1] // call.k.shape[1]
    k = call.k.repeat_interleave(g, 1).double()
    s = call.q.double() @ k.transpose(-1, -2) * call.scale
    n = s.shape[-1]
    if call.causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1)[0].numpy()


@pytest.mark.parametrize("causal", [True, False])
def test_live_region_colsum_and_row_blocks_match_dense_softmax(causal):
    call = _call(np.random.default_rng(2), causal=causal)
    P = _dense(call)
    rc = region_colsum(call, 6, 11)[0].numpy()
    np.testing.assert_allclose(rc, P[:, 6:11].sum(1), atol=1e-5)
    rc = region_colsum(call, 2, 5)[0].numpy()
    np.testing.assert_allclose(rc, P[:, 2:5].sum(1), atol=1e-5)
    got = np.zeros_like(P)
    for a, e, blk in row_blocks(call, mem_budget_mb=1):
        got[:, a:e, :blk.shape[-1]] = blk[0].numpy()
    np.testing.assert_allclose(got, P, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_syntax_reductions_sum_related_attention_and_offsets(causal):
    """The reductions fed the kernel's own probability blocks (tiny chunks) give the dense sums."""
    from kernels.torch_stats import attention_stats_torch
    from kernels import StatsConfig
    call = _call(np.random.default_rng(3), n=6, causal=causal)
    P = _dense(call)
    rel = [np.array([], int), np.array([0]), np.array([0, 1]), np.array([], int), np.array([1, 3]), np.array([2, 4, 5])]
    if causal:
        rel = [r[r <= i] for i, r in enumerate(rel)]
    mass, prof = syntax.syntax_reductions(rel, 4, 4)
    attention_stats_torch(call.q, call.k, None, scale=call.scale, causal=causal, config=StatsConfig(mem_budget_mb=0),
                          observer=lambda a, e, p: [r.on_block(3, a, e, p[0]) for r in (mass, prof)])
    want = np.stack([P[:, i, r].sum(-1) if len(r) else np.zeros(4) for i, r in enumerate(rel)], -1)
    np.testing.assert_allclose(mass.mass[3], want, atol=1e-5)
    full = np.zeros((4, 11))
    for i in range(6):
        for j in range(1, 6):
            full[:, i - j + 5] += P[:, i, j]
    got = prof.full(6)[3]
    used = sorted({i - j for i, r in enumerate(rel) for j in r})
    np.testing.assert_allclose(got[:, [d + 5 for d in used]], full[:, [d + 5 for d in used]], atol=1e-5)
    assert not mass.mass[0].any() and not got[:, [d + 5 for d in range(-5, 6) if d not in used]].any()


# ---------------------------------------------------------------- probes
def test_induction_score_by_hand():
    T, s = 3, 1
    N = s + 2 * T
    A = np.zeros((2, N, N))
    # queries 4, 5, 6 -> keys 2, 3, 4 (the token after the earlier occurrence)
    A[0, 4, 2], A[0, 5, 3], A[0, 6, 4] = 0.9, 0.6, 0.3
    A[1, 4, 3] = 1.0                                           # off by one: scores 0
    assert probes.induction_score(A, s, T).tolist() == pytest.approx([0.6, 0.0])


def test_copy_score_by_hand():
    ids = [5, 7, 8, 9, 1, 7, 8, 9]          # needle at 1..3, answer at 5..7
    top1 = np.full((1, 3, 8), -1)
    top1[0, 0, [4, 5, 6]] = [1, 2, 3]       # head 0 copies all three
    top1[0, 1, [4, 5, 6]] = [1, 1, 3]       # head 1: second wrong (id 7 != 8), third right
    top1[0, 2, [4, 5, 6]] = [5, 6, 7]       # head 2: same ids but outside the needle
    sc = probes.copy_score(top1, ids, answer=[5, 6, 7], needle=[1, 2, 3])
    assert sc.tolist() == [[1.0, 2 / 3, 0.0]]
    sc = probes.copy_score(top1, ids, [5, 6, 7], [1, 2, 3], correct=np.array([True, False, True]))
    assert sc.tolist() == [[2 / 3, 2 / 3, 0.0]]


def test_needle_prompt_spans():
    hay = "One. Two two. Three three three. Four."
    text, n, a = probes.build_needle_prompt(hay, ["red", "cat"], 0.5)
    assert text[n[0]:n[1]] == "red cat" and text[a[0]:a[1]] == "red cat" and a[0] > n[1]
    assert text.endswith("are: red cat.")


# ---------------------------------------------------------------- basins
DOCS = ("Answer from the documents.\n\nDocument [1] Alpha text here.\nDocument [2] Beta text.\n"
        "Document [3] Gamma.\n\nQuestion: which?")


def test_find_items_markers_blocks_and_failure():
    f = basins.find_items(DOCS)
    assert f["mode"] == "markers"
    assert [DOCS[s:e] for s, e, _ in f["items"]] == ["Document [1] Alpha text here.", "Document [2] Beta text.",
                                                     "Document [3] Gamma."]
    ex = "Example 1: a -> b\nExample 2: c -> d\n\nNow: e ->"
    assert [ex[s:e] for s, e, _ in basins.find_items(ex)["items"]] == ["Example 1: a -> b", "Example 2: c -> d"]
    blocks = "first block\nline two\n\n  second\n\n\nthird\n\nthe question?\n"
    f = basins.find_items(blocks)
    assert f["mode"] == "blocks" and [blocks[s:e] for s, e, _ in f["items"]] == ["first block\nline two", "second", "third"]
    assert blocks[f["query"][0]:f["query"][1]] == "the question?"
    with pytest.raises(InputError, match="could not find items"):
        basins.find_items("just one paragraph\n\nand a question")


@pytest.mark.parametrize("spec,msg", [
    ({"items": [[0, 5], [3, 9]]}, "overlap"),
    ({"items": [[0, 5], [6, 999]]}, "out of range"),
    ({"items": [[0, 5], [6, 6]]}, "out of range or empty"),
    ({"items": [[6, 9], [0, 5]]}, "text order"),
    ({"items": [[0, 5]]}, "at least two"),
    ({"items": [[0, "5"], [6, 9]]}, "integers"),
    ({"items": [[0, 5], [6, 9]], "query": [4, 12]}, "overlaps an item"),
    ({"items": [[0, 5], [6, 9]], "important": [2]}, "not an item"),
    ({"itemz": []}, "'items' list"),
])
def test_items_spec_validation(spec, msg):
    with pytest.raises(InputError, match=msg):
        basins.items_from_spec(spec, "0123456789abcdefghij")


def test_map_layout_tokens_query_and_errors():
    #           tok: 0    1    2    3    4    5    6    7
    starts = np.array([[0, 2], [3, 5], [6, 8], [9, 11], [12, 14], [15, 17], [18, 20], [-1, -1]])
    lay = basins.map_layout({"mode": "spans", "items": [(0, 5, "a"), (6, 11, "b")], "query": None}, starts)
    assert [t.tolist() for t in lay.tokens] == [[1], [2, 3]]     # token 0 dropped from item a
    assert lay.token0_item == 0 and lay.query == (4, 7)         # trailing special token excluded
    lay = basins.map_layout({"mode": "spans", "items": [(3, 5, "a"), (6, 11, "b")], "query": (15, 20)}, starts)
    assert lay.query == (5, 7)
    with pytest.raises(InputError, match="covers no tokens besides token 0"):
        basins.map_layout({"mode": "spans", "items": [(0, 2, "a"), (6, 11, "b")], "query": None}, starts)
    with pytest.raises(InputError, match="no tokens after the last item"):
        basins.map_layout({"mode": "spans", "items": [(3, 5, "a"), (6, 20, "b")], "query": None}, starts)
    with pytest.raises(InputError, match="covers no tokens"):
        basins.map_layout({"mode": "spans", "items": [(3, 5, "a"), (7, 8, "b")], "query": None}, starts)


def test_basin_masses_add_up_and_match_hand_sums():
    rng = np.random.default_rng(4)
    A = causal_rows(rng, 2, 3, 14, boost0=2.0)
    items = [np.array([1, 2, 3]), np.array([5, 6]), np.array([8, 9, 10])]
    q = (11, 14)
    rc = A[..., q[0]:q[1], :].sum(-2)
    m = basins.basin_masses(rc, items, q)
    np.testing.assert_allclose(m["mass"][..., 1], A[..., 11:14, :][..., [5, 6]].sum(-1).mean(-1))
    np.testing.assert_allclose(m["sink"], A[..., 11:14, 0].mean(-1))
    np.testing.assert_allclose(m["query_self"], A[..., 11:14, 11:14].sum(-1).mean(-1))
    np.testing.assert_allclose(m["other"], A[..., 11:14, :][..., [4, 7]].sum(-1).mean(-1))
    np.testing.assert_allclose(m["mass"].sum(-1) + m["sink"] + m["query_self"] + m["other"], 1.0)


def test_depth_preference_and_order_by_hand():
    assert basins.depth_score([0.4, 0.1, 0.1, 0.4]) == pytest.approx((0.4 - 0.1) / 0.25)
    assert basins.depth_score([0.2, 0.2]) is None
    pref = basins.preference_curve([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]], 5)
    # shares * 3 = [1.5, 0.5, 1.0] at x = 0, .5, 1, interpolated at 0, .25, .5, .75, 1
    np.testing.assert_allclose(pref, [1.5, 1.0, 0.5, 0.75, 1.0])
    # positions by preference: 0, 1 (tie 1.0 with 4: earlier first), 4, 3, 2; items 3 and 2 take
    # positions 0 and 1, items 0, 1, 4 keep their order in positions 2, 3, 4
    assert basins.attnrank_order(pref, [3, 2]) == [3, 2, 0, 1, 4]
    assert basins.attnrank_order(pref, []) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- graphs
def test_js_divergence_by_hand():
    p = np.array([0.5, 0.5, 0.0])
    assert graphs.js_divergence(p, p) == pytest.approx(0.0)
    assert graphs.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    q = np.array([0.0, 0.5, 0.5])
    m = (p + q) / 2
    h = lambda x: -sum(v * math.log2(v) for v in x if v > 0)
    assert graphs.js_divergence(p, q) == pytest.approx(h(m) - (h(p) + h(q)) / 2)


def test_row_distributions_and_head_distance():
    N = 8
    A = np.zeros((1, 3, N, N))
    A[0, 0, :, 0] = 1.0                        # sink head
    A[0, 1, :, 0] = 1.0                        # identical to head 0
    A[0, 2] = np.eye(N)                        # self head
    res = result_from_maps(A, pool_size=2)
    dist, rw = graphs.row_distributions(res.pooled_mean, res.pool, N, cells=2)
    np.testing.assert_allclose(dist.sum(-1), 1.0)
    assert dist.shape == (1, 3, 2, 2) and rw.tolist() == [4.0, 4.0]
    # head 2 rows 0..3 attend within key block 0 (keys 0..3) and rows 4..7 within block 1
    np.testing.assert_allclose(dist[0, 2], [[1, 0], [0, 1]])
    ids, D = graphs.head_distance_matrix(res, "pooled", cells=4)
    assert ids == ["0.0", "0.1", "0.2"]
    assert D[0, 1] == pytest.approx(0.0) and D[0, 2] > 0.3 and np.allclose(D, D.T)
    # exact rows (pool 1, cells N): sink vs self differ on every row except row 0
    res1 = result_from_maps(A, pool_size=1)
    _, D1 = graphs.head_distance_matrix(res1, "pooled", cells=N)
    assert D1[0, 2] == pytest.approx(7 / 8)
    _, Dr = graphs.head_distance_matrix(res1, "received")
    rec = lambda h: A[0, h].sum(0) / N
    assert Dr[0, 2] == pytest.approx(graphs.js_divergence(rec(0), rec(2)))


def test_head_graph_is_deterministic_with_communities():
    rng = np.random.default_rng(5)
    A = causal_rows(rng, 2, 4, 10)
    A[:, :2] = 0
    A[:, :2, :, 0] = 1.0                       # two sink heads per layer form a tight group
    res = result_from_maps(A)
    g1 = graphs.head_graph(res, knn=2, seed=0)
    g2 = graphs.head_graph(res, knn=2, seed=0)
    assert g1 == g2
    assert sorted(n for c in g1["communities"] for n in c) == sorted(n["id"] for n in g1["nodes"])
    of = {n["id"]: n["community"] for n in g1["nodes"]}
    assert of["0.0"] == of["0.1"] == of["1.0"] == of["1.1"]
    assert all(0 < e["weight"] <= 1 for e in g1["edges"])


def test_token_graph_threshold_and_cap():
    A = np.array([[1.0, 0, 0], [0.6, 0.4, 0], [0.05, 0.15, 0.8]])
    g = graphs.token_graph(A, ["a", "b", "c"], threshold=0.1)
    assert [(e["source"], e["target"]) for e in g["edges"]] == [(1, 0), (2, 1)]
    assert g["nodes"][0]["received"] == pytest.approx(1.65)
    g = graphs.token_graph(A, ["a", "b", "c"], threshold=0.1, include_self=True, max_edges=2)
    assert [(e["source"], e["target"]) for e in g["edges"]] == [(0, 0), (2, 2)] and g["n_edges_above"] == 5
    with pytest.raises(InputError):
        graphs.token_graph(A, ["a", "b"])


# ---------------------------------------------------------------- settings / json
def test_settings_validation_and_plain_json():
    with pytest.raises(InputError, match="unknown role"):
        AnalysisSettings(role_thresholds={"sinky": 0.3}).validate()
    with pytest.raises(InputError, match="unknown probe"):
        AnalysisSettings(probes=("induction", "needle")).validate()
    with pytest.raises(InputError, match="positive"):
        AnalysisSettings(role_thresholds={"sink": 0}).validate()
    assert plain({"a": np.array([1.0, np.nan]), "b": (np.float32(2), np.int64(3))}) == {"a": [1.0, None], "b": [2.0, 3]}
