"""Pure figure builders and templates (visapp/figures, visapp/templates): hand-made arrays, no model."""
import json

import numpy as np
import plotly.io as pio
import pytest

from visapp import figures as F
from visapp import templates as T
from visapp.figures import common, heatmap, overview


def causal_map(n, seed=0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n, n)) + 0.01)
    return a / a.sum(1, keepdims=True)


def test_token_labels_are_unique_plain_text_and_escaped_by_figures():
    toks = ["<b>", " the", " the", "\n", "&x", " ", "  ", "\t", ""]
    labels = F.token_labels(toks)      # plain text (tables, CSV); figures escape it once
    assert labels == ["(0)<b>", "(1) the", "(2) the", "(3)⏎", "(4)&x", "(5)␣", "(6)␣␣", "(7)⇥", "(8)∅"]
    assert len(set(labels)) == len(labels)
    assert common.escape_all(labels[:1] + labels[4:5]) == ["(0)&lt;b&gt;", "(4)&amp;x"]
    long = F.show_token("a" * 40)
    assert long.endswith("…") and len(long) == common.MAX_LABEL_CHARS


def test_heatmap_blanks_causal_cells_and_logs_values():
    a = causal_map(6)
    labels = F.token_labels(list("abcdef"))
    fig = F.attention_heatmap(a, labels, labels, causal=True, scale="log")
    tr = fig.data[0]
    z, raw = np.asarray(tr.z, float), np.asarray(tr.customdata, float)
    upper = np.triu(np.ones((6, 6), bool), 1)
    assert np.isnan(z[upper]).all() and np.isnan(raw[upper]).all()          # blank, not zero
    np.testing.assert_allclose(raw[~upper], a[~upper], rtol=1e-6)            # hover shows the weight itself
    np.testing.assert_allclose(z[~upper], np.log10(np.maximum(a[~upper], heatmap.LOG_FLOOR)), rtol=1e-5)
    assert list(tr.x) == labels and list(tr.y) == labels
    assert tr.zmin == pytest.approx(-4) and tr.zmax == 0


def test_heatmap_encoder_keeps_upper_triangle():
    a = np.full((4, 4), 0.25)
    fig = F.attention_heatmap(a, F.token_labels(list("abcd")), F.token_labels(list("abcd")), causal=False,
                              scale="linear")
    z = np.asarray(fig.data[0].z, float)
    assert not np.isnan(z).any() and fig.data[0].zmax == pytest.approx(0.25)


def test_split_scale_shows_token0_apart():
    a = causal_map(8)
    a[:, 0] += 5.0                                 # a strong sink
    a /= a.sum(1, keepdims=True)
    labels = F.token_labels(list("abcdefgh"))
    fig = F.attention_heatmap(a, labels, labels, scale="split")
    assert len(fig.data) == 2
    sink, rest = fig.data
    assert list(sink.x) == labels[:1] and list(rest.x) == labels[1:]
    assert sink.zmin == 0 and sink.zmax == 1
    below = np.tril(np.ones((8, 8), bool))[:, 1:]
    assert rest.zmax < a[:, 0].min()               # keys >= 1 get their own, much smaller range
    assert rest.zmax == pytest.approx(np.quantile(a[:, 1:][below], 0.995), rel=1e-5)


def test_heatmap_rejects_bad_scale_and_labels():
    a = causal_map(3)
    with pytest.raises(ValueError):
        F.attention_heatmap(a, ["a", "b", "c"], ["a", "b", "c"], scale="cubic")
    with pytest.raises(ValueError):
        F.attention_heatmap(a, ["a", "b"], ["a", "b", "c"])


def test_zoomed_block_blanks_by_absolute_position():
    z = np.ones((2, 3), np.float32)
    fig = F.attention_heatmap(z, ["q10", "q11"], ["k9", "k10", "k11"], q_start=10, k_start=9, scale="linear")
    got = np.isnan(np.asarray(fig.data[0].z, float))
    assert got.tolist() == [[False, False, True], [False, False, False]]


def test_pooled_map_axes_and_causal_blocks():
    m = np.random.default_rng(1).random((4, 4))
    fig = F.pooled_heatmap(m, pool=64, n_tokens=250, causal=True, scale="linear")
    tr = fig.data[0]
    np.testing.assert_allclose(tr.x, [31.5, 95.5, 159.5, 220.5])          # block centres (last block 192..249)
    z = np.asarray(tr.z, float)
    assert np.isnan(z[np.triu_indices(4, 1)]).all() and not np.isnan(np.diag(z)).any()


def test_long_input_figure_stays_small():
    """An 8192-token head at the engine's pooling (128 cells a side) sends ~128^2 cells, not n^2."""
    m = np.random.default_rng(2).random((128, 128)).astype(np.float32)
    fig = F.pooled_heatmap(m, pool=64, n_tokens=8192)
    payload = len(pio.to_json(fig))
    assert np.asarray(fig.data[0].z).shape == (128, 128)
    assert payload < 400_000


def test_zoom_window_clamps_and_respects_causality():
    assert F.zoom_window(5, 5, 1000, 256, causal=True) == (0, 256, 0, 256)
    assert F.zoom_window(990, 990, 1000, 256, causal=True) == (744, 1000, 744, 1000)
    q0, q1, k0, k1 = F.zoom_window(600, 900, 1000, 256, causal=True)
    assert k0 <= q0 and q1 - q0 == k1 - k0 == 256
    assert F.zoom_window(50, 50, 40, 256, causal=False) == (0, 40, 0, 40)


def test_head_grid_one_glyph_per_head_with_click_data():
    L, H = 3, 4
    v = np.arange(L * H, dtype=float).reshape(L, H)
    roles = [["sink"] * H, ["local"] * H, ["mixed"] * H]
    imp = np.ones((L, H))
    imp[2, 3] = 4.0
    fig = F.head_grid(v, metric="m", roles=roles, importance=imp, selected=(1, 2))
    pts = [tr for tr in fig.data if tr.customdata is not None]
    heads = {(int(c[0]), int(c[1])) for tr in pts for c in tr.customdata}
    assert heads == {(l, h) for l in range(L) for h in range(H)}
    sizes = {(int(c[0]), int(c[1])): s for tr in pts for c, s in zip(tr.customdata, tr.marker.size)}
    assert sizes[(2, 3)] == pytest.approx(overview.MAX_SIZE) and sizes[(0, 0)] < sizes[(2, 3)]
    legend = [tr.name for tr in fig.data if tr.showlegend is not False and tr.x == (None,)]
    assert set(legend) == {"sink", "local", "mixed"}
    ring = [tr for tr in fig.data if tr.name == "selected"][0]
    assert (ring.x[0], ring.y[0]) == (2, 1)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == L * H - 1


def test_head_grid_without_importance_has_constant_size():
    fig = F.head_grid(np.zeros((2, 2)), metric="m")
    sizes = np.concatenate([np.atleast_1d(tr.marker.size) for tr in fig.data if tr.customdata is not None])
    assert np.all(sizes == sizes[0])


def test_layer_head_map_flags_and_selection():
    v = np.zeros((3, 2))
    flags = np.array([[True, False], [False, False], [False, True]])
    fig = F.layer_head_map(v, label="x", flags=flags, selected=(2, 1))
    marks = [tr for tr in fig.data if tr.type == "scatter"][0]
    assert sorted(zip(marks.y, marks.x)) == [(0, 0), (2, 1)]
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (0.5, 1.5, 1.5, 2.5)


def test_received_bars_mark_sinks():
    r = np.array([0.6, 0.1, 0.3, 0.05])
    fig = F.received_bars(r, list("abcd"), sinks=(0, 2))
    by = {tr.name: list(tr.x) for tr in fig.data}
    assert by == {"key": [1, 3], "sink": [0, 2]}


def test_arc_diagram_edges_and_window():
    toks = list("abcdef")
    fig = F.arc_diagram(toks, [(3, 1, 0.5), (5, 0, 0.9)], lower=[(2, 1, 1.0)], window=(1, 5))
    lines = [tr for tr in fig.data if tr.mode == "lines" and len(tr.x) > 1]
    n_arcs = sum(int(np.isnan(np.asarray(tr.x, float)).sum()) for tr in lines)
    assert n_arcs == 2                          # (5, 0) lies outside the window
    ups = [tr for tr in lines if np.nanmax(tr.y) > 0]
    downs = [tr for tr in lines if np.nanmin(tr.y) < 0]
    assert len(ups) == 1 and len(downs) == 1
    up = np.asarray(ups[0].x, float)
    assert np.nanmin(up) == pytest.approx(1) and np.nanmax(up) == pytest.approx(3)   # arc spans tokens 1..3
    assert list(fig.layout.xaxis.ticktext) == ["b", "c", "d", "e"]


def test_head_similarity_graph_click_data():
    pos = np.array([[0, 0], [1, 0], [0, 1]], float)
    fig = F.head_similarity_graph(pos, [(0, 1), (1, 0), (2, 2)], [(0, 1, 0.9), (1, 2, 0.2)],
                                  communities=[0, 0, 1], selected=(2, 2))
    nodes = [tr for tr in fig.data if tr.customdata is not None]
    assert sorted(tuple(map(int, c)) for tr in nodes for c in tr.customdata) == [(0, 1), (1, 0), (2, 2)]
    assert all(tr.type == "scatter" for tr in fig.data)          # vector, exportable


def test_difference_map_is_diverging_and_centred():
    a, b = causal_map(5, 1), causal_map(5, 2)
    labels = F.token_labels(list("abcde"))
    fig = F.difference_map(a, b, labels)
    tr = fig.data[0]
    assert tr.zmid == 0 and tr.zmin == -tr.zmax
    from plotly.colors import get_colorscale
    assert [list(c) for c in tr.colorscale] == [list(c) for c in get_colorscale(T.DIVERGING)]
    d = np.asarray(tr.z, float)
    np.testing.assert_allclose(d[np.tril_indices(5)], (a - b)[np.tril_indices(5)], atol=1e-6)


def test_maps_side_by_side_share_one_colour_axis():
    a = causal_map(4)
    fig = F.maps_side_by_side({"softmax": a, "window:2": a}, F.token_labels(list("abcd")))
    assert len(fig.data) == 2 and {tr.coloraxis for tr in fig.data} == {"coloraxis"}


def test_basin_curves_and_bars():
    per_layer = np.array([[0.3, 0.1, 0.25], [0.35, 0.05, 0.3]])
    fig = F.basin_curves(per_layer, item_names=["a", "b", "c"], aggregate=per_layer.mean(0))
    assert len(fig.data) == 3 and fig.data[-1].name == "all layers"
    fig = F.grouped_bars(["w", "t"], {"loss": [3.1, None]}, ylabel="loss", baseline=3.0)
    assert np.isnan(fig.data[0].y[1]) and fig.layout.shapes[0].y0 == 3.0


def test_templates_registered_and_paper_sizes():
    assert T.SCREEN in pio.templates and T.PAPER in pio.templates
    paper = T.paper_template("serif", 8)
    assert paper.layout.font.size == pytest.approx(8 * 4 / 3)
    assert "Serif" in paper.layout.font.family
    assert T.paper_width_px("single") == 317 and T.paper_width_px("double") == 662
    with pytest.raises(ValueError):
        T.paper_template("comic")
    # the same builder renders under either template
    a = causal_map(3)
    fig = F.attention_heatmap(a, ["x", "y", "z"], ["x", "y", "z"], template=T.PAPER)
    assert fig.layout.template.layout.font.size == pytest.approx(8 * 4 / 3)


def test_named_scales_are_expanded_for_plotly_js():
    """plotly.js knows neither 'Magma' nor the '_r' suffix: builders must send explicit stops."""
    fig = F.head_grid(np.zeros((2, 2)), metric="m", colorscale="Magma")
    assert isinstance(fig.layout.coloraxis.colorscale, tuple) and len(fig.layout.coloraxis.colorscale) > 2
    d = json.loads(pio.to_json(F.difference_map(np.eye(3), np.zeros((3, 3)), ["a", "b", "c"])))
    assert isinstance(d["data"][0]["colorscale"], list)


def test_empty_figure_carries_message():
    fig = F.empty_figure("not available yet")
    assert fig.layout.annotations[0].text == "not available yet"
    json.loads(pio.to_json(fig))
