"""The model view and the trace view without a browser: their callbacks called as functions on a real
SmolLM2 analysis of a short text, the trace job run in-process (nothing forks here), the neuron view from
the stored q/k against a fresh build_trace and the analysis' own maps, importance for the overview, bad
input (position out of range, forged stores) as one message, and the export of every new figure."""
import json
import os
from contextvars import copy_context

import numpy as np
import pytest

os.environ.setdefault("ATTNVIS_TORCH_THREADS", "1")

TEXT = "The cat sat on the mat. The cat sat on the"        # ~12 tokens: full maps, flow computed

from tests.app_cache import env  # noqa: E402,F401  (fixture: a fresh result cache for this module)


@pytest.fixture(scope="module")
def key(env, smollm):
    from visapp import service
    service.job_setup()
    return service.run_analysis(service.make_request(text=TEXT, items="none"))


@pytest.fixture(scope="module")
def traced(key):
    """The trace of the last token, through the page's job function (in-process)."""
    from visapp.pages import trace
    seen = []
    store, err = trace.trace_job(lambda p: seen.append(p), {"a": key, "position": None, "t": 0})
    assert err == "", err
    return {"store": store, "progress": seen}


def state_for(key, view, head="3.4"):
    from visapp import urlstate
    return dict(urlstate.DEFAULTS, view=view, a=key, model="smollm2-135m", head=head)


def with_trigger(fn, trigger, *args, value=1):
    """Call a callback that reads ctx.triggered_id / ctx.triggered outside a server."""
    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    prop = json.dumps(trigger, sort_keys=True, separators=(",", ":")) if isinstance(trigger, dict) else trigger
    def go():
        context_value.set(AttributeDict(triggered_inputs=[{"prop_id": f"{prop}.n_clicks", "value": value}],
                                        updated_props={}))
        return fn(*args)
    return copy_context().run(go)


def texts_of(component) -> str:
    """Every string inside a Dash component tree."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(texts_of(c) for c in component)
    return texts_of(getattr(component, "children", None))


# ---------------------------------------------------------------- model view

def test_model_view_draws_every_head_and_a_click_opens_it(key):
    from visapp import service
    from visapp.figures.model_view import MAX_PANEL_CELLS
    from visapp.pages import model
    res = service.get_result(key)
    fig, note = model.render_model(state_for(key, "model", head="2.1"))
    L, H, n = res.n_layers, res.n_heads, res.n_tokens
    assert "full maps" in note
    marks = [tr for tr in fig.data if tr.type == "scatter"][0]
    assert sorted(map(tuple, marks.customdata)) == [(l, h) for l in range(L) for h in range(H)]
    z = np.asarray(fig.data[0].z, float)
    assert z.size <= L * H * (MAX_PANEL_CELLS + 1) ** 2
    # panel (l, h) is the head's full map in log10 (same numbers as the head view reads)
    l, h, step = 2, 1, n + 1
    ref = service.head_map(key, l, h)
    panel = z[l * step:l * step + n, h * step:h * step + n]
    low = np.tril(np.ones((n, n), bool))
    np.testing.assert_allclose(panel[low], np.log10(np.maximum(ref[low], 1e-4)), atol=1e-3)
    assert np.isnan(panel[~low]).all()
    href = model.open_head({"points": [{"customdata": [5, 3]}]}, state_for(key, "model"))
    assert href.startswith("/head?") and "head=5.3" in href and f"a={key}" in href
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):
        model.open_head({"points": [{"customdata": "forged"}]}, state_for(key, "model"))


# ---------------------------------------------------------------- trace view

def test_trace_job_caches_per_position_and_the_page_shows_it(key, traced):
    from visapp import service, trace_jobs
    from visapp.pages import trace
    res = service.get_result(key)
    store = traced["store"]
    P = res.n_tokens - 1
    assert store["position"] == P and store["tk"] == trace_jobs.trace_key(key, P)
    assert traced["progress"] and traced["progress"][-1][0] == "100"
    # cached: the page shows it at once, no job
    req, err, shown = trace.want_trace(state_for(key, "trace"), None, 0, None, None, trigger="x")
    assert req is trace.no_update and err == "" and shown["tk"] == store["tk"]
    # another position: the job is asked once, not again on a state change, again on Trace
    req, err, shown = trace.want_trace(state_for(key, "trace"), 3, 0, None, None, trigger="x")
    assert req["position"] == 3 and shown is trace.no_update
    again = trace.want_trace(state_for(key, "trace"), 3, 0, req, None, trigger="x")
    assert again[0] is trace.no_update
    assert trace.want_trace(state_for(key, "trace"), 3, 1, req, None, trigger=trace.ids.TR_RUN)[0]["position"] == 3

    summary, f_bars, f_graph, f_lens, f_contrib, f_neuron = trace.render_trace(state_for(key, "trace"), store, None)
    tr = trace_jobs.get_trace(store["tk"])
    assert f"position {P}" in texts_of(summary) and "predicts" in texts_of(summary)
    np.testing.assert_allclose(np.asarray(f_bars.data[0].y, float), tr["rollout"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(f_bars.data[1].y, float), tr["flow"], rtol=1e-5)    # flow under its limit
    assert abs(sum(tr["rollout"]) - 1) < 1e-4
    np.testing.assert_allclose(np.asarray(f_contrib.data[0].z, float), tr["contributions"], rtol=1e-5)
    # the heads and the rest add up to the logit the lens' last layer gives for the predicted token
    c = np.asarray(tr["contributions"]).sum() + tr["contribution_rest"]
    assert abs(c - tr["prediction"]["logit"]) < 1e-3 * max(1, abs(tr["prediction"]["logit"]))
    assert tr["logit_lens"][-1]["top"][0]["token"] == tr["prediction"]["token"]
    assert len(f_lens.data[0].z) == res.n_layers
    assert f_graph.data and f_neuron.data


def test_trace_matches_the_model_and_the_analysis(key, traced, smollm):
    """Dense references: the lens' last layer is the model's own next-token distribution at P; each head's
    attention row at P is the analysis' stored map row."""
    import torch
    from visapp import service, trace_jobs
    res = service.get_result(key)
    tr = trace_jobs.get_trace(traced["store"]["tk"])
    P = tr["position"]
    with torch.no_grad():
        logits = smollm.model(torch.tensor([res.token_ids])).logits[0, P].double()
    p = torch.softmax(logits, -1)
    top = tr["logit_lens"][-1]["top"]
    assert top[0]["id"] == int(p.argmax())
    assert abs(top[0]["prob"] - float(p.max())) < 1e-4
    rows = np.asarray(tr["head_rows"])
    for l in (0, 7, res.n_layers - 1):
        m = service.layer_maps(key, l).astype(np.float32)            # float16 [H, N, N]
        np.testing.assert_allclose(rows[l], m[:, P, :P + 1], atol=2e-3)


def test_neuron_view_from_stored_qk_equals_a_fresh_trace(key, traced, smollm):
    from compute.tracing.trace import build_trace
    from visapp import service, trace_jobs
    from visapp.pages import trace
    res = service.get_result(key)
    tk = traced["store"]["tk"]
    P = traced["store"]["position"]
    l, h, j = 4, 5, 2
    nv = trace_jobs.neuron(tk, l, h, j)
    ref = build_trace(smollm, list(res.token_ids), P, neuron=(l, h, j))["neuron"]
    for k in ("q", "k", "product", "q_pre", "k_pre", "product_pre", "row_probs"):
        np.testing.assert_allclose(nv[k], ref[k], rtol=1e-5, atol=1e-6)
    assert nv["kv_head"] == h // (res.n_heads // smollm.info.n_kv_heads)
    assert abs(sum(nv["product"]) - nv["dot"]) < 1e-6 * max(1, abs(nv["dot"]))
    assert abs(nv["prob"] - float(service.head_map(key, l, h)[P, j])) < 2e-3      # the analysis' own weight
    # the page: default key = the head's strongest key; a chosen key; a bad key is one message
    default = trace_jobs.neuron(tk, l, h, None)
    assert default["key"] == int(np.argmax(trace_jobs.get_trace(tk)["head_rows"][l][h]))
    f = trace.render_trace(state_for(key, "trace", head=f"{l}.{h}"), traced["store"], j)[5]
    assert f"key {j}" in f.layout.title.text and len(f.data) == 6        # before and after RoPE: q, k, q*k
    f = trace.render_trace(state_for(key, "trace", head=f"{l}.{h}"), traced["store"], P + 5)[5]
    assert not f.data and f"key {P + 5} is not visible from position {P}" in f.layout.annotations[0].text


def test_bad_input_is_one_message(key, traced):
    from visapp import service
    from visapp.pages import trace
    n = service.get_result(key).n_tokens
    for bad, msg in ((n, f"position {n} is outside the text: it has {n} tokens"), (-1, "outside the text"),
                     (2.5, "not a whole number"), ("x", "not a whole number")):
        req, err, shown = trace.want_trace(state_for(key, "trace"), bad, 0, None, None, trigger="x")
        assert req is trace.no_update and shown is trace.no_update
        assert msg in texts_of(err), (bad, texts_of(err))
    # the job refuses a request it cannot run with one message
    store, err = trace.trace_job(lambda p: None, {"a": key, "position": n + 3})
    assert store is trace.no_update and "outside the text" in texts_of(err)
    store, err = trace.trace_job(lambda p: None, {"a": "0" * 24, "position": 1})
    assert store is trace.no_update and "not in the cache" in texts_of(err)
    # forged TRACE stores: never read another cache entry, one message
    for forged in ({"a": key, "position": 1, "tk": f"{key}:core"}, {"a": key, "position": "x", "tk": "y"},
                   {"a": key, "position": n - 1, "tk": f"{key}:req"}):
        out = trace.render_trace(state_for(key, "trace"), forged, None)
        assert "does not match this analysis" in texts_of(out[0])
        assert not any(f.data for f in out[1:])
    # a store of another analysis draws nothing (the page is about to follow the state)
    out = trace.render_trace(state_for(key, "trace"), dict(traced["store"], a="f" * 24), None)
    assert out[0] == "" and not any(f.data for f in out[1:])


def test_token_strip_and_picking(key):
    from visapp import ids, service
    from visapp.pages import trace
    res = service.get_result(key)
    strip = trace.render_strip(state_for(key, "trace"), 2)
    buttons = strip.children
    assert len(buttons) == res.n_tokens and "tok-picked" in buttons[2].className
    assert buttons[-1].id == {"type": ids.TR_TOKEN_PREFIX, "index": res.n_tokens - 1}
    assert with_trigger(trace.pick_token, {"index": 4, "type": ids.TR_TOKEN_PREFIX}, [0, 0, 0, 0, 1]) == 4
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):           # a redrawn strip (n_clicks 0) picks nothing
        with_trigger(trace.pick_token, {"index": 4, "type": ids.TR_TOKEN_PREFIX}, [0] * 5, value=0)


def test_head_importance_feeds_the_overview(key, traced):
    from visapp import service, trace_jobs
    imp = service.importance_of(key)
    tr = trace_jobs.get_trace(traced["store"]["tk"])
    assert imp["available"] and imp["position"] == tr["position"]
    np.testing.assert_allclose(imp["importance"], np.abs(tr["contributions"]))
    assert trace_jobs.latest(key) == traced["store"]["tk"]
    # the overview sizes its glyphs by it (this analysis computed no importance of its own)
    from visapp.pages import overview
    from visapp.pages.common import current
    a = current(state_for(key, "overview"))
    assert overview.importance(a.res) is None
    values, why = overview.metric_values(a.res, a.summ, "importance", imp)
    np.testing.assert_allclose(values, np.abs(tr["contributions"]))
    fig = overview.render_grid(a.res, a.summ, "sink_metric", "importance", "Viridis", (0, 0), imp=imp)
    sizes = np.concatenate([np.atleast_1d(t.marker.size) for t in fig.data
                            if getattr(t, "marker", None) is not None and t.marker.size is not None])
    assert np.ptp(sizes.astype(float)) > 0                        # glyphs differ in size


def test_every_trace_figure_exports_with_its_data(key, traced):
    from visapp.export import registry as reg
    from visapp.export_ui import export_download
    ctx = reg.make_context(key, reg.ViewSettings(head=(4, 5)), trace={"trace": traced["store"], "trace_key": 2})
    for sp in reg.specs("trace") + reg.specs("model"):
        assert sp.unavailable(ctx) is None, sp.name
        tables = sp.tables(ctx, reg.build(sp, ctx))
        assert tables and all(t.rows for t in tables.values()), sp.name
    tr_tables = reg.spec("trace", "contributions").tables(ctx, None)
    total = tr_tables["total"].rows[0]
    assert abs(total[2] + total[3] - total[1]) < 1e-3
    st = state_for(key, "trace", head="4.5")
    data, msg = export_download("trace", "csv", part="lens", state=st, controls_={"trace": traced["store"]})
    assert data["filename"].endswith(".data.csv") and "exported" in msg
    data, msg = export_download("trace", "figure", part="neuron", fmt="svg", state=st,
                                controls_={"trace": traced["store"], "trace_key": 2})
    assert data["filename"].endswith(".svg") and "exported" in msg
    data, msg = export_download("model", "figure", part="grid", fmt="svg", state=state_for(key, "model"))
    assert data["filename"].endswith(".svg")


def test_flow_past_its_limit_is_omitted_with_the_reason_on_the_page(env, smollm):
    """A 40-token text: flow (limit 32 tokens) is left out and the page says why; rollout is still drawn."""
    from compute.tracing.flow import FLOW_MAX_TOKENS
    from visapp import service
    from visapp.pages import trace
    text = "One two three four five six seven eight nine ten. " * 4
    key = service.run_analysis(service.make_request(text=text, items="none"))
    n = service.get_result(key).n_tokens
    assert n > FLOW_MAX_TOKENS
    store, err = trace.trace_job(lambda p: None, {"a": key, "position": None})
    assert err == ""
    summary, f_bars = trace.render_trace(state_for(key, "trace"), store, None)[:2]
    words = texts_of(summary)
    assert "flow left out" in words and f"computed up to {FLOW_MAX_TOKENS} tokens" in words and f"sees {n}" in words
    assert len(f_bars.data) == 1 and len(f_bars.data[0].y) == n                       # rollout only
    assert f"computed up to {FLOW_MAX_TOKENS} tokens" in f_bars.layout.annotations[0].text
    assert trace.window(n, n - 1, 16) == (n - 16, n) and trace.window(n, 3, 16) == (0, 16)
    # the model view of a text past 32 tokens: exact block means of the full maps (dense reference)
    from visapp.pages import model
    fig, note = model.render_model(state_for(key, "model"))
    assert "block means" in note
    res = service.get_result(key)
    z = np.asarray(fig.data[0].z, float)
    g = -(-n // 32)                                            # tokens per merged block
    m = -(-n // g)
    l, h = 6, 2
    full = service.head_map(key, l, h).astype(np.float64)
    ref = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            ref[i, j] = full[i * g:(i + 1) * g, j * g:(j + 1) * g].mean()
    panel = z[l * (m + 1):l * (m + 1) + m, h * (m + 1):h * (m + 1) + m]
    seen = np.isfinite(panel)
    assert seen.sum() == m * (m + 1) // 2 and res.pool * res.pooled_mean.shape[-1] >= n
    np.testing.assert_allclose(panel[seen], np.log10(np.maximum(ref[seen], 1e-4)), atol=2e-3)
    assert trace.window(n, n - 1, n) is None and trace.window(100, 50, 20) == (40, 60)


def test_encoder_trace_says_what_it_cannot_show(env, minilm):
    """MiniLM: no unembedding, so no lens and no contributions (the page says why); rollout covers every token
    (bidirectional); the neuron view has no separate pre-rotation q/k; the model view draws full maps."""
    from visapp import service
    from visapp.pages import model, trace
    key = service.run_analysis(service.make_request(model="minilm-l6", text="The cat sat on the mat.", items="none"))
    res = service.get_result(key)
    fig, _ = model.render_model(state_for(key, "model", head="1.1"))
    assert len(fig.data[1].customdata) == res.n_layers * res.n_heads
    assert not np.isnan(np.asarray(fig.data[0].z, float)[:res.n_tokens, :res.n_tokens]).any()   # no causal mask
    store, err = trace.trace_job(lambda p: None, {"a": key, "position": 2})
    assert err == ""
    summary, f_bars, f_graph, f_lens, f_contrib, f_neuron = trace.render_trace(state_for(key, "trace", head="1.1"),
                                                                                store, 4)
    assert len(f_bars.data[0].y) == res.n_tokens
    assert "logit lens: not available (an encoder has no unembedding" in f_lens.layout.annotations[0].text
    assert "head contributions: not available" in f_contrib.layout.annotations[0].text
    assert len(f_neuron.data) == 3 and "key 4" in f_neuron.layout.title.text      # after the encoding only
    assert service.importance_of(key) is None


def test_an_expired_trace_says_so(key):
    from visapp import state
    from visapp.pages import trace
    store, err = trace.trace_job(lambda p: None, {"a": key, "position": 1})
    assert err == "" and trace.render_trace(state_for(key, "trace"), store, None)[1].data
    state.store().delete(store["tk"])
    out = trace.render_trace(state_for(key, "trace"), store, None)
    assert "no longer cached: press Trace" in texts_of(out[0]) and not any(f.data for f in out[1:])
    req = trace.want_trace(state_for(key, "trace"), 1, 0, None, store, trigger="x")[0]
    assert req["position"] == 1                       # asks the job again
