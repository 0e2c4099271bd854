"""Figure defects a new user hit (issue 12 items 5-8, issue 15 item 6), one test each on the pure figure
builders (hand-made arrays, no model). Each assertion failed on the code before the fix; the render tests
draw the figure in the system Chromium (kaleido, the export path) and read the SVG's text back, since a
tick label plotly hides is absent from the SVG."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from visapp import figures as F
from visapp.figures import graphs

SVG_NS = "{http://www.w3.org/2000/svg}"
MARKUP_TOKENS = ["<b>x</b>", "<a href='y'>", "&", " cat", " ", "\n", "<i>"]


def causal_map(n, seed=0, sink=0.0):
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n, n)) + 0.01)
    a[:, 0] += sink
    return a / a.sum(1, keepdims=True)


def strings(obj):
    """Every string in a figure's JSON (trace and layout text, names, ticks, hover, annotations)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, np.ndarray) and obj.dtype == object:
        for v in obj.ravel():
            yield from strings(v)


def basin_items(n=5):
    return [{"index": k, "label": f"Document [{k + 1}] The river number {k} carries water"} for k in range(n)]


# ---------------------------------------------------------------- issue 12 item 5: export defects

def test_basin_items_named_cleanly_and_every_tick_kept():
    rng = np.random.default_rng(0)
    fig = F.basin_curves(rng.random((6, 5)), items=basin_items(), aggregate=rng.random(5))
    ax = fig.layout.xaxis
    assert list(ax.ticktext) == [f"Document {k}" for k in range(1, 6)]       # not '1: Document [2] …'
    assert list(ax.tickvals) == list(range(5))
    assert ax.range[0] <= -0.5 and ax.range[1] >= 4.5                         # half an item of room each side
    assert ax.tickangle == 0                                                  # short names: no slanted overflow
    hover = fig.data[-1].customdata
    assert hover[0] == "Document 1: Document [1] The river number 0 carries water"   # the full label on hover
    # other label forms; names stay unique
    assert F.basin_item_names([{"index": 0, "label": "block 1"}, {"index": 1, "label": "[2] b"},
                         {"index": 2, "label": "Example 3: c"}, {"index": 3, "label": "free text that is long"},
                         {"index": 4, "label": "[2] again"}]) == \
        ["Block 1", "item 2", "Example 3", "item 3: free text…", "item 2 (2)"]
    with pytest.raises(ValueError, match="item names"):
        F.basin_curves(np.zeros((2, 3)), item_names=["a", "b"])


def test_layer_axis_starts_at_layer_zero():
    fig = F.layer_curves({"sink mass": np.linspace(0, 1, 30)}, ylabel="mass")
    assert fig.layout.xaxis.range == (-0.5, 29.5)                               # was autorange: ticks from -2
    assert fig.layout.xaxis.tick0 == 0


def test_pooled_map_leaves_room_for_the_zero_tick_and_short_colour_bar():
    n, pool = 1609, 16
    m = -(-n // pool)
    fig = F.pooled_heatmap(causal_map(m), pool, n)
    y, x = fig.layout.yaxis.range, fig.layout.xaxis.range
    assert y[0] == pytest.approx(n - 0.5) and y[1] < -0.5 - 0.02 * n           # reversed, room above query 0
    assert x[0] == pytest.approx(-0.5) and x[1] == pytest.approx(n - 0.5)
    assert fig.data[0].colorbar.len < 1 and list(fig.data[0].colorbar.tickvals)[-1] == 0   # '1' tick kept inside
    full = F.attention_heatmap(causal_map(8), F.token_labels(list("abcdefgh")), F.token_labels(list("abcdefgh")))
    assert full.data[0].colorbar.len < 1


# ---------------------------------------------------------------- issue 12 item 6

def test_communities_past_eight_stay_distinct():
    n = 24 * 2
    pos = np.random.default_rng(1).random((n, 2))
    heads = [(i // 4, i % 4) for i in range(n)]
    fig = F.head_similarity_graph(pos, heads, [], communities=[i % 24 for i in range(n)])
    styles = [(tr.marker.color, tr.marker.symbol or "circle") for tr in fig.data if tr.name and "community" in tr.name]
    assert len(styles) == 24 and len(set(styles)) == 24
    assert len({F.community_style(c) for c in range(48)}) == 48


def _luminance(colour: str) -> float:
    h = colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    r, g, b = (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_flag_marker_visible_in_a_white_legend():
    flags = np.zeros((4, 3), bool)
    flags[1, 2] = True
    fig = F.layer_head_map(np.random.default_rng(0).random((4, 3)), label="norm. entropy", flags=flags,
                           flag_name="collapsed")
    tr = [t for t in fig.data if t.name == "collapsed"][0]
    assert fig.layout.showlegend
    m = tr.marker
    line_only = m.symbol is None or "thin" in m.symbol or "open" in m.symbol
    visible = [m.line.color] if line_only else [m.color, m.line.color]
    assert any(c is not None and _luminance(c) < 0.5 for c in visible)      # something dark on the white legend


def test_whitespace_tokens_have_visible_labels():
    toks = ["The", " ", "  ", "\n", "\t", " cat", "\r\n", ""]
    fig = F.arc_diagram(toks, [(5, 0, 0.5)])
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks == ["The", "␣", "␣␣", "⏎", "⇥", " cat", "⏎", "∅"]
    assert all(t.strip() for t in ticks)
    assert list(fig.data[-1].customdata)[1] == "(1)␣"                        # hover keeps the position
    # other invisible characters get a visible mark (a bidi override would also reorder the label)
    assert [F.show_token(t) for t in ["\x00", "\x1b[1m", "\u202eab", "\ufeff", "\u200b", "x\x7f"]] == \
        ["␀", "␛[1m", "◌ab", "◌", "◌", "x␡"]


def test_token_graph_labels_tokens_past_94():
    toks = [f" w{i}" for i in range(110)]
    fig = F.arc_diagram(toks, [(i, i - 1, 0.3) for i in range(1, 110)])
    assert list(fig.layout.xaxis.ticktext) == toks                             # was positions only
    assert not fig.layout.annotations


# ---------------------------------------------------------------- issue 12 item 7: zoomed long text

def test_zoomed_token_graph_caps_nodes_and_says_so():
    n = 1609
    toks = [f" t{i}" for i in range(n)]
    lo, hi = 1000, 1512
    edges = [(q, q - d, 0.1 + 0.8 * ((q * 7 + d) % 11) / 11) for q in range(lo + 8, hi) for d in (1, 5)]
    recv = np.random.default_rng(0).random(n)
    fig = F.arc_diagram(toks, edges, window=(lo, hi), node_values=recv, node_label="received")
    nodes = fig.data[-1]
    assert len(nodes.x) <= graphs.NODE_MAX < hi - lo                          # not 512 markers in a bar
    assert set(np.asarray(nodes.x).tolist()) <= set(range(lo, hi))
    drawn = [tr for tr in fig.data if tr.mode == "lines" and tr.x is not None and len(tr.x) > 1]
    xs = np.concatenate([np.asarray(tr.x, float) for tr in drawn])
    ends = {int(round(v)) for v in xs[np.isfinite(xs)] if abs(v - round(v)) < 1e-9}
    node_set = set(np.asarray(nodes.x).tolist())
    assert ends <= node_set | {e for e in ends if e not in range(lo, hi)}     # every drawn arc ends on a node
    note = fig.layout.annotations[0].text
    assert re.search(rf"\d+ of {hi - lo} tokens drawn", note) and "strongest arcs" in note
    assert list(fig.layout.xaxis.ticktext)[0].startswith(" t")                # the drawn ones keep their text


def test_received_bars_scale_shows_more_than_the_sink():
    rng = np.random.default_rng(2)
    r = rng.random(300) * 0.01
    r[0] = 0.92
    fig = F.received_bars(r, [f" t{i}" for i in range(300)])
    top = fig.layout.yaxis.range[1]
    assert r[1:].max() <= top < 0.1                                           # the other keys fill the axis
    note = fig.layout.annotations[0]
    assert "0.92" in note.text and note.y == pytest.approx(top)               # the clipped sink says its value
    flat = F.received_bars(np.full(10, 0.1), list("abcdefghij"))              # no dominating sink: linear
    assert flat.layout.yaxis.range is None and flat.layout.yaxis.type == "linear"
    assert F.received_bars(r, [f" t{i}" for i in range(300)], log_y=True).layout.yaxis.type == "log"


# ---------------------------------------------------------------- issue 12 item 8: variants

def test_difference_map_unit_and_chosen_variant():
    a, b, c = causal_map(6, 0), causal_map(6, 1), causal_map(6, 2)
    labels = F.token_labels(list("abcdef"))
    maps = {"softmax": a, "elu": b, "topk:2": c}
    first = F.variant_difference_map(maps, labels)
    chosen = F.variant_difference_map(maps, labels, variant="topk:2")
    assert first.data[0].colorbar.title.text == "Δa"                        # the unit, not a cut-off 'n'
    assert "elu − softmax" in first.layout.title.text and "topk:2 − softmax" in chosen.layout.title.text
    low = np.tril(np.ones((6, 6), bool))
    np.testing.assert_allclose(np.asarray(chosen.data[0].z, float)[low], (c - a)[low], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(first.data[0].z, float)[low], (b - a)[low], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="not in this comparison"):
        F.variant_difference_map(maps, labels, variant="performer")


def test_fidelity_cells_say_why_a_number_is_missing():
    assert F.fidelity_text(None, None, "retained", "linear") == "n/a: linear attention keeps every key"
    assert F.fidelity_text(None, None, "retained", "fitted").startswith("n/a")
    assert F.fidelity_text(None, None, "kl", "masking").startswith("n/a")
    assert F.fidelity_text(0.12345, 0.2, "kl", "linear") == "0.1235 (0.2)"
    assert F.fidelity_text(None, 0.2, "kl", "linear") == "– (0.2)"


def test_softmax_baseline_is_a_legend_entry_not_a_label_on_the_bars():
    fig = F.e2e_bars(["elu", "topk:8"], [3.1, 2.6], [0.5, 0.9], 2.5)
    assert not any("softmax" in (a.text or "") for a in fig.layout.annotations)
    entry = [tr for tr in fig.data if tr.name and tr.name.startswith("softmax")]
    assert len(entry) == 1 and entry[0].line.dash == "dash" and fig.layout.showlegend
    assert fig.layout.shapes[0].y0 == 2.5
    bars = F.grouped_bars(["a", "b"], {"kl": [0.1, 0.2]}, ylabel="kl", baseline=0.15)
    assert not bars.layout.annotations and any((tr.name or "").startswith("softmax") for tr in bars.data)


# ---------------------------------------------------------------- issue 12 item 9: token probabilities

def test_generation_probabilities_figure():
    steps = [{"token_id": 5, "token": " Paris", "prob": 0.61,
              "top": [{"token_id": 5, "token": " Paris", "prob": 0.61}, {"token_id": 7, "token": " the", "prob": 0.2}]},
             {"token_id": 9, "token": ".", "prob": 0.3,
              "top": [{"token_id": 3, "token": "\n", "prob": 0.4}, {"token_id": 9, "token": ".", "prob": 0.3}]}]
    fig = F.generation_probabilities(steps, start=6)
    bars, alt = fig.data
    assert list(bars.x) == [6, 7] and np.allclose(bars.y, [0.61, 0.3])
    assert np.allclose(alt.y, [0.2, 0.4]) and list(alt.text) == [" the", "⏎"]       # best token not chosen
    assert bars.customdata[0][0] == "(6) Paris" and " the: 0.200" in bars.customdata[0][1]
    assert list(fig.layout.xaxis.ticktext) == [" Paris", "."] and fig.layout.yaxis.range == (0, 1.02)


# ---------------------------------------------------------------- issue 15 item 6: user text is text

def _toks():
    toks = MARKUP_TOKENS
    n = len(toks)
    return toks, n, F.token_labels(toks), causal_map(n), np.random.default_rng(0)


# Every builder that shows user text, fed tokens/names/labels containing plotly markup (built lazily).
FIGURES = {
    "heatmap": lambda t, n, lab, a, rng: F.attention_heatmap(a, lab, lab, title=t[0]),
    "split": lambda t, n, lab, a, rng: F.attention_heatmap(a, lab, lab, scale="split"),
    "pooled": lambda t, n, lab, a, rng: F.pooled_heatmap(a, 1, n, title=t[0]),
    "arcs": lambda t, n, lab, a, rng: F.arc_diagram(t, [(3, 1, 0.5)], lower=[(2, 0, 1.0)], node_values=rng.random(n),
                                                    node_label=t[1], upper_name=t[0], lower_name=t[1]),
    "profile": lambda t, n, lab, a, rng: F.query_profile({t[0]: rng.random(n)}, t, ylabel="entropy"),
    "received": lambda t, n, lab, a, rng: F.received_bars(rng.random(n), t, sinks=(0, 1)),
    "basin items": lambda t, n, lab, a, rng: F.basin_curves(rng.random((3, n)), aggregate=rng.random(n),
                                                            items=[{"index": k, "label": x} for k, x in enumerate(t)]),
    "basin names": lambda t, n, lab, a, rng: F.basin_curves(rng.random((3, n)), item_names=t, aggregate=rng.random(n)),
    "bars": lambda t, n, lab, a, rng: F.grouped_bars(t, {t[0]: rng.random(n)}, ylabel="x", baseline=0.1,
                                                     baseline_name=t[1]),
    "layers": lambda t, n, lab, a, rng: F.layer_curves({t[0]: rng.random(4)}, ylabel="x", title=t[1]),
    "grid": lambda t, n, lab, a, rng: F.head_grid(rng.random((2, 2)), metric=t[0], hover={t[1]: rng.random((2, 2))},
                                                  roles=[[t[0], t[1]], ["sink", "local"]]),
    "lh map": lambda t, n, lab, a, rng: F.layer_head_map(rng.random((2, 2)), label=t[0], flags=np.eye(2, dtype=bool),
                                                         flag_name=t[1]),
    "maps": lambda t, n, lab, a, rng: F.maps_side_by_side({"softmax": a, t[0]: a}, lab),
    "diff": lambda t, n, lab, a, rng: F.difference_map(a, a, lab, name_a=t[1]),
    "e2e": lambda t, n, lab, a, rng: F.e2e_bars(t[:2], [1.0, 2.0], [0.5, 0.6], 1.5),
    "empty": lambda t, n, lab, a, rng: F.empty_figure(f"not available ({t[0]})"),
    "generation": lambda t, n, lab, a, rng: F.generation_probabilities(
        [{"token_id": k, "token": x, "prob": 0.5, "top": [{"token_id": k, "token": x, "prob": 0.5},
                                                         {"token_id": -1, "token": t[1], "prob": 0.2}]}
         for k, x in enumerate(t)]),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_plotly_markup_in_user_text_is_shown_literally(name):
    fig = FIGURES[name](*_toks())
    texts = list(strings(fig.to_plotly_json()))
    joined = "\n".join(texts)
    assert "<b>x</b>" not in joined and "<a href" not in joined and "<i>" not in joined
    assert "&lt;b&gt;x&lt;/b&gt;" in joined or "&lt;a href='y'&gt;" in joined     # escaped, so drawn as text
    assert "&amp;lt;" not in joined and "&amp;amp;" not in joined                  # exactly once
    assert not re.search(r"&(?!amp;|lt;|gt;)", joined)                              # a bare '&' never reaches plotly


def test_tables_get_plain_text():
    """Tables and CSV show tokens as text (Dash escapes HTML itself): no entities there."""
    assert F.show_token("<b>x</b>") == "<b>x</b>" and F.token_label(3, "&") == "(3)&"
    assert F.escape_markup("<a href='y'>&") == "&lt;a href='y'&gt;&amp;"
    from visapp.figures.common import plain_text
    for t in MARKUP_TOKENS + ["&lt;", "&amp;amp;", "a > b & c"]:
        assert plain_text(F.escape_markup(t)) == t                                  # exact inverse


def test_data_tables_read_plain_text_back_from_figures():
    from visapp.export import tables as reg
    lab = F.token_labels(MARKUP_TOKENS)
    t = reg.heatmap_tables(F.attention_heatmap(causal_map(len(lab)), lab, lab))["matrix"]
    assert t.columns[1:] == lab and [r[0] for r in t.rows] == lab
    bars = reg.trace_tables(F.grouped_bars(MARKUP_TOKENS[:2], {"a < b": [1.0, 2.0]}, ylabel="x & y"))["data"]
    assert bars.columns == ["x", "a < b"] and [r[0] for r in bars.rows] == MARKUP_TOKENS[:2]


# ---------------------------------------------------------------- rendered: labels plotly would hide

@pytest.fixture(scope="module")
def ex():
    from visapp import export
    yield export
    export.shutdown()


def svg_texts(ex, fig, aspect):
    opts = ex.ExportOptions(fmt="svg")
    data = ex.render(ex.paper_figure(fig, opts, aspect), opts)
    root = ET.fromstring(data.decode("utf-8"))
    return ["".join(t.itertext()).replace("\u200b", "") for t in root.iter(f"{SVG_NS}text")]


def test_rendered_basin_keeps_its_first_label(ex):
    rng = np.random.default_rng(0)
    t = ex.paper_template_name("serif", 8)
    texts = svg_texts(ex, F.basin_curves(rng.random((30, 5)), items=basin_items(), aggregate=rng.random(5),
                                         template=t), 0.6)
    for k in range(1, 6):
        assert f"Document {k}" in texts


def test_rendered_long_map_keeps_zero_tick_and_top_colour_bar_tick(ex):
    n, pool = 1609, 16
    t = ex.paper_template_name("serif", 8)
    texts = svg_texts(ex, F.pooled_heatmap(causal_map(-(-n // pool)), pool, n, template=t), 0.95)
    assert texts.count("0") >= 2            # query 0 and key 0
    assert "1" in texts                     # top of the log colour bar
    texts = svg_texts(ex, F.layer_curves({"a": np.linspace(0, 1, 30)}, ylabel="m", template=t), 0.6)
    assert "−2" not in texts and "-2" not in texts and "0" in texts
