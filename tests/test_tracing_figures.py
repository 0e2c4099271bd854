"""Tracing figures (visapp/figures/tracing.py, model_view.py): hand-made inputs, no model."""
import numpy as np
import plotly.graph_objects as go
import pytest

from compute.tracing.rollout import rollout_by_layer, rollout_edges
from visapp.figures import model_view as MV
from visapp.figures import tracing as T
from visapp.figures.heatmap import LOG_FLOOR


def causal_maps(L, H, n, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((L, H, n, n)) + 0.01)
    return a / a.sum(-1, keepdims=True)


def pool_dense(a, p):
    n = a.shape[-1]
    m = -(-n // p)
    out = np.zeros(a.shape[:-2] + (m, m))
    for i in range(m):
        for j in range(m):
            out[..., i, j] = a[..., i * p:(i + 1) * p, j * p:(j + 1) * p].mean((-2, -1))
    return out


def valid(fig):
    """make_figure skips plotly's validation: re-validate every property here."""
    go.Figure(fig.to_dict())
    return fig


def test_model_view_full_maps_tile_every_head():
    a = causal_maps(3, 2, 5)
    fig = valid(MV.model_view(maps=a, n_tokens=5, selected=(1, 1)))
    z = np.asarray(fig.data[0].z, float)
    assert z.shape == (3 * 6, 2 * 6)
    panel = z[6:11, 6:11]                                          # layer 1, head 1
    low = np.tril(np.ones((5, 5), bool))
    np.testing.assert_allclose(panel[low], np.log10(np.maximum(a[1, 1][low], LOG_FLOOR)), rtol=1e-5)
    assert np.isnan(panel[~low]).all() and np.isnan(z[5]).all()    # causal cells and gutters blank
    heads = fig.data[1].customdata
    assert len(heads) == 6 and [1, 1] in [list(h) for h in heads]
    assert fig.layout.shapes[0].line.color == "#d00"


def test_model_view_pooled_maps_stay_bounded_and_exact():
    n, pool = 200, 2
    a = causal_maps(2, 3, n, seed=1)
    pooled = pool_dense(a, pool)                                   # [2, 3, 100, 100]
    z, edges = MV.panel_maps(pooled=pooled, pool=pool, n_tokens=n, causal=False, max_cells=32)
    assert z.shape[-1] <= 32 and edges[-1] == n
    g = edges[1] - edges[0]                                        # tokens per merged cell
    np.testing.assert_allclose(z, pool_dense(a, g), rtol=1e-5)     # merged block means are exact block means
    # 30 x 9 heads at the app's 128 pooled cells: the drawn cells stay under the stated budget
    big = np.random.default_rng(2).random((30, 9, 128, 128)).astype(np.float32)
    fig = valid(MV.model_view(pooled=big, pool=16, n_tokens=2040))
    assert np.asarray(fig.data[0].z).size <= 30 * 9 * (MV.MAX_PANEL_CELLS + 1) ** 2
    assert len(fig.data[1].customdata) == 270
    with pytest.raises(ValueError):
        MV.model_view(maps=causal_maps(1, 1, 40), n_tokens=40)     # too long for full maps, no pooled maps


def test_merge_blocks_keeps_partial_last_block_exact():
    n, pool = 50, 4                                                # 13 blocks, the last holds 2 tokens
    a = causal_maps(1, 1, n, seed=3)[0, 0]
    sizes = np.minimum(np.arange(13) * pool + pool, n) - np.arange(13) * pool
    merged, msizes = MV.merge_blocks(pool_dense(a, pool), sizes, 5)
    assert list(msizes) == [12, 12, 12, 12, 2]
    np.testing.assert_allclose(merged, pool_dense(a, 12), rtol=1e-9)


def test_tracing_figures_escape_tokens_and_validate():
    toks = ["<b>", "&amp", " x", "\n", " "]
    maps = causal_maps(3, 1, 5)[:, 0]
    by = rollout_by_layer(maps, 4)
    fig = valid(T.rollout_bars(toks, by[0], [0.5] * 5, position=4))
    assert list(fig.data[0].x)[:2] == ["(0)&lt;b&gt;", "(1)&amp;amp"] and "heuristic" in fig.layout.title.text
    fig = valid(T.rollout_bars(toks, by[0], None, position=4, flow_note="too long"))
    assert len(fig.data) == 1 and fig.layout.annotations[0].text == "too long"
    g = valid(T.layer_token_graph(toks, by, rollout_edges(maps, by), position=4))
    nodes = g.data[-1]
    assert len(nodes.x) == 4 * 5 and nodes.customdata[0][2] == "&lt;b&gt;"
    recs = [{"layer": l, "top": [{"token": "<i>", "prob": 0.6}, {"token": " ", "prob": 0.3}],
             "next_token_rank": 3 - l, "next_token_prob": 0.1 * l} for l in range(3)]
    lens = valid(T.logit_lens_figure(recs, next_token="&"))
    assert list(lens.data[0].text[0]) == ["&lt;i&gt;", "␣"] and list(lens.data[1].x) == [3, 2, 1]
    assert "&amp;" in lens.layout.xaxis2.title.text
    c = valid(T.contributions_map([[1.0, -2.0], [0.5, 0.0]], rest=3.0, target="<x>", logit=2.5))
    assert c.data[0].zmid == 0 and c.data[0].zmin == -2 and c.data[0].zmax == 2 and "&lt;x&gt;" in c.layout.title.text
    with pytest.raises(ValueError, match="window"):
        T.rollout_bars(["a"] * 600, np.ones(600) / 600, position=599)
    part = valid(T.rollout_bars(["a"] * 600, np.arange(600.0), position=599, window=(550, 600)))
    assert list(part.data[0].y) == list(range(550, 600)) and part.data[0].x[0] == "(550)a"
    with pytest.raises(ValueError, match="not inside"):
        T.rollout_bars(toks, by[0], position=4, window=(3, 9))


def test_layer_token_graph_window_keeps_edges_inside():
    maps = causal_maps(4, 1, 200, seed=4)[:, 0]
    by = rollout_by_layer(maps, 199)
    edges = rollout_edges(maps, by, max_edges=300)
    with pytest.raises(ValueError, match="at most 128"):
        T.layer_token_graph(["t"] * 200, by, edges, position=199)
    g = valid(T.layer_token_graph(["t"] * 200, by, edges, position=199, window=(150, 200)))
    nodes = g.data[-1]
    assert len(nodes.x) == 5 * 50 and min(nodes.x) == 150 and nodes.customdata[0][:2] == [0, 150]
    xs = np.concatenate([np.asarray(t.x, float) for t in g.data[:-1]])
    xs = xs[np.isfinite(xs)]
    inside = [e for e in edges if 150 <= e[1] < 200 and 150 <= e[2] < 200]
    assert len(xs) == 2 * len(inside) > 0 and xs.min() >= 150


def test_neuron_bars_before_and_after():
    nv = {"layer": 1, "head": 2, "kv_head": 0, "query": 3, "key": 1, "scale": 0.125, "logit": 0.5, "prob": 0.2,
          "q": [1, 2], "k": [3, 4], "product": [3, 8], "dot": 11.0}
    assert len(valid(T.neuron_bars(nv)).data) == 3
    nv.update(q_pre=[1, 0], k_pre=[0, 1], product_pre=[0, 0], dot_pre=0.0)
    fig = valid(T.neuron_bars(nv))
    assert len(fig.data) == 6 and list(fig.data[5].y) == [3, 8]
    assert [a.text.split("<")[1] for a in fig.layout.annotations] == ["b>before RoPE", "b>after RoPE"]
