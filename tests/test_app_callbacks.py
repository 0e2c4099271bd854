"""The app without a browser: URL state, request validation, the service's cache, every view's render
callback on a real SmolLM2 analysis, head-selection latency, on-demand blocks, the Flask test client.

One real ~500-token analysis (module fixture) runs in this process; nothing here forks, so running
torch in-process is safe (the e2e tests start the server as a separate process).
"""
import os
import time
from contextvars import copy_context

import numpy as np
import pytest

os.environ.setdefault("ATTNVIS_TORCH_THREADS", "1")


from tests.app_cache import env  # noqa: E402,F401  (fixture: a fresh result cache for this module)


@pytest.fixture(scope="module")
def lm(env):
    from compute.models import load_model
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def long_text(lm):
    """About 500 tokens of mixed prose, documents and code (under the app's 512-token full-map limit)."""
    from compute.engine import tokenize
    from visapp.presets import CODE, MULTI_DOC, PROSE
    ids = tokenize(lm, "\n\n".join([PROSE, MULTI_DOC, CODE, PROSE, MULTI_DOC]), 100000)[:495]
    return lm.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def analysed(lm, long_text):
    from visapp import service
    service.job_setup()
    req = service.make_request(text=long_text, items="auto")
    t = time.perf_counter()
    key = service.run_analysis(req)
    return {"key": key, "req": req, "seconds": time.perf_counter() - t}


def run_cb(fn, trigger, *args):
    """Call a dash callback that reads ctx.triggered_id, outside a server."""
    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    def go():
        context_value.set(AttributeDict(triggered_inputs=[{"prop_id": f"{trigger}.value", "value": None}],
                                        updated_props={}))
        return fn(*args)
    return copy_context().run(go)


def state_for(key, view="head", head="0.0", **kw):
    from visapp import urlstate
    st = dict(urlstate.DEFAULTS)
    st.update(view=view, a=key, model="smollm2-135m", head=head, **kw)
    return st


# ---------------------------------------------------------------- pure pieces

def test_urlstate_roundtrip_and_fallbacks():
    from visapp import urlstate
    st = urlstate.parse("/head", "?a=0123456789abcdef&head=3.7&metric=entropy_mean&scale=split")
    assert st["view"] == "head" and st["head"] == "3.7" and st["metric"] == "entropy_mean" and st["scale"] == "split"
    assert urlstate.parse(urlstate.to_path(st), urlstate.to_search(st)) == st
    bad = urlstate.parse("/nowhere", "?a=../../etc&head=x.y&metric=<script>&scale=cubic")
    assert bad == dict(urlstate.DEFAULTS)
    assert urlstate.clamp_head("99.99", 30, 9) == "29.8" and urlstate.clamp_head("junk", 30, 9) == "0.0"


def test_requests_validate_and_key_by_options(env):
    from compute.errors import InputError, ModelNotFound
    from visapp import service
    a = service.make_request(text="hello world")
    assert a.key() == service.make_request(text="hello world").key()
    assert a.key() != service.make_request(text="hello world", sink_tokens=2).key()
    assert a.key() != service.make_request(text="hello world!").key()
    for kw, msg in [({"text": "   "}, "empty"), ({"text": "x", "backend": "cuda"}, "backend"),
                    ({"text": "x", "max_tokens": 10 ** 9}, "max tokens"), ({"text": "x", "items": "all"}, "items"),
                    ({"text": "x", "probes": ["magic"]}, "probe"), ({"text": "a\x00b"}, "NUL")]:
        with pytest.raises(InputError, match=msg):
            service.make_request(**kw)
    with pytest.raises(ModelNotFound):
        service.make_request(model="\x01bad", text="x")


def test_head_from_click_sources():
    from visapp.pages.common import head_from_click
    assert head_from_click({"points": [{"customdata": [4, 2, "sink", 0.5]}]}) == (4, 2)
    assert head_from_click({"points": [{"x": 3, "y": 7}]}) == (7, 3)          # layer x head heatmaps
    assert head_from_click({"points": []}) is None and head_from_click(None) is None


def test_every_view_is_a_page_module_with_layout_and_callbacks():
    """One module per view under visapp/pages, registered with Dash pages under its old path."""
    import dash
    import app  # noqa: F401  (registers the pages)
    from visapp import pages, urlstate
    for view in urlstate.VIEWS:
        mod = pages.module(view)
        assert mod.__file__.endswith(f"visapp/pages/{view}.py")
        page = dash.page_registry[mod.__name__]
        assert page["path"] == f"/{view}" and page["layout"] is mod.layout
    assert list(dash.page_registry)[:len(urlstate.VIEWS)] == [f"visapp.pages.{v}" for v in urlstate.VIEWS]


def test_presets_tick_their_probes_and_messages_name_the_ui_control(env):
    from visapp import callbacks as cb
    from visapp import ids
    from visapp.pages.overview import ui_words
    from visapp.presets import INDUCTION
    out = run_cb(cb.fill_panel, ids.preset("induction"), None, 0, 0, 1, 0, [], None)
    assert out[0] == INDUCTION and out[cb.PANEL.index(ids.PROBES)] == ["induction"]
    out = run_cb(cb.fill_panel, ids.preset("induction"), None, 0, 0, 1, 0, ["retrieval"], None)
    assert out[cb.PANEL.index(ids.PROBES)] == ["induction", "retrieval"]
    msg = ui_words("probe not run (--probes induction)")
    assert "--" not in msg and "Options → Probes" in msg and "induction" in msg


# ---------------------------------------------------------------- analysis, cache, views

def test_analysis_is_cached_and_survives_a_reload(analysed):
    from visapp import service
    key = analysed["key"]
    res = service.get_result(key)
    assert 400 <= res.n_tokens <= 512 and res.maps is None and res.extras["has_full_maps"]
    service._CORES.clear()                      # a new process: only the file cache remains
    t = time.perf_counter()
    again = service.get_result(key)
    assert time.perf_counter() - t < 5 and again.n_tokens == res.n_tokens
    assert service.run_analysis(analysed["req"]) == key      # a repeat is a cache hit
    assert service.get_request(key) == analysed["req"]
    for section in ("sinks", "entropy", "roles", "graphs", "head_fields", "dependency", "basin"):
        assert section in again.extras, section


def test_stored_map_matches_on_demand_block(analysed, lm):
    """The engine's stored float16 map and an independent on-demand capture agree."""
    from compute.ondemand import head_block, layer_qk
    from visapp import service
    res = service.get_result(analysed["key"])
    full = service.head_map(analysed["key"], 12, 4)
    assert full.shape == (res.n_tokens, res.n_tokens) and full.dtype == np.float32
    np.testing.assert_allclose(full.sum(1), 1.0, atol=2e-3)
    assert np.all(full[np.triu_indices(res.n_tokens, 1)] == 0)
    qk = layer_qk(lm, res.token_ids, 12)
    block = head_block(qk, 4, 100, 164, 40, 120)
    np.testing.assert_allclose(block, full[100:164, 40:120], atol=1e-3)


def test_every_view_renders(analysed):
    from visapp import service
    from visapp.pages import basin, entropy, generate, graphs, head, overview, sinks
    key = analysed["key"]
    res = service.get_result(key)
    fig, side = overview.render_overview(state_for(key, "overview", metric="sink_metric"), "importance", "Viridis")
    assert sum(len(tr.x) for tr in fig.data if tr.customdata is not None) == res.n_layers * res.n_heads
    assert "Head 0.0" in str(side)
    out = head.render_head(state_for(key, "head", head="5.3"), "max", None)
    assert out[0].data[0].type == "heatmap" and np.asarray(out[0].data[0].z).shape == (res.n_tokens,) * 2
    assert head.render_head_graph(state_for(key, "head", head="5.3"), 0.1, None).data
    f_layers, f_rate, f_map, tbl = sinks.render_sinks(state_for(key, "sinks"), 0.3)
    assert np.asarray(f_map.data[0].z).shape == (res.n_layers, res.n_heads) and "Hidden" not in str(type(tbl))
    summary, text, curves, options, order = basin.render_basin(state_for(key, "basin"), [])
    b = res.extras["basin"]
    if b.get("available", True):
        assert len(options) == len(b["items"]) >= 2 and len(curves.data) == res.n_layers + 1
        _, _, _, _, order = basin.render_basin(state_for(key, "basin"), [options[-1]["value"]])
        assert "suggested order" in str(order) or "not available" in str(order)
    f_map, f_prof, flags = entropy.render_entropy(state_for(key, "entropy"))
    assert len(f_prof.data) == 3
    f_heads, info, f_tok = graphs.render_graphs(state_for(key, "graphs"), 0.1, None)
    assert "heads" in info and f_heads.data
    text, f_gen, tbl = generate.render_generate(state_for(key, "generate"))
    assert "no generated continuation" in str(text)
    # a state of another view does nothing (the page is leaving)
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):
        sinks.render_sinks(state_for(key, "overview"), 0.3)
    # every page's layout builds from the URL's query values (Dash pages pass them as keywords)
    from visapp import callbacks as cb
    for view in ("overview", "head", "sinks", "basin", "entropy", "graphs", "variants", "generate"):
        content = cb.route(f"/{view}", f"?a={key}&head=4.2&metric=entropy_mean")
        assert content[0].id == f"view-{view}"
    found = {c.id: c for c in head.layout(a=key, head="4.2")._traverse() if getattr(c, "id", None)}
    assert found["hd-layer"].value == 4 and found["hd-head"].value == 2
    assert len(found["hd-layer"].options) == res.n_layers and len(found["hd-head"].options) == res.n_heads


def test_missing_sections_say_not_available(analysed):
    from visapp import service
    from visapp.pages import overview
    res = service.get_result(analysed["key"])
    summ = service.summary(res)
    values, why = overview.metric_values(res, summ, "role:retrieval")     # a probe that was not run
    assert values is None and "Options → Probes" in why and "--probes" not in why
    values, why = overview.metric_values(res, summ, "importance")
    assert values is None and why
    fig = overview.render_grid(res, summ, "importance", "importance", "Viridis", (0, 0))
    assert "not available" in fig.layout.annotations[0].text


def test_head_selection_through_the_select_store(analysed):
    """A head picked on a page goes through SELECT into the URL state and the head view follows
    (the latency is bench/bench_head_switch.py's figure, not a timed test)."""
    from dash._utils import to_json
    from visapp import callbacks as cb
    from visapp import ids
    from visapp.pages import common, head
    key = analysed["key"]
    for sel in (head.select_head(3, 2), common.selection(head="17.5")):
        search, st = run_cb(cb.sync_state, ids.SELECT, "/head", f"?a={key}", sel)
        assert st["head"] == sel["head"] and f"head={sel['head']}" in search
        out = head.render_head(st, "max", None)
        assert out[-1].startswith(f"head {sel['head']} ")
        to_json([out, head.render_head_graph(st, 0.1, None), cb.navigation(st)])
    search, st = run_cb(cb.sync_state, ids.SELECT, "/overview", f"?a={key}", common.selection(metric="entropy_mean"))
    assert st["metric"] == "entropy_mean" and "metric=entropy_mean" in search
    # junk in the store changes nothing
    # a page's controls report their values when the page is inserted: the same value selects nothing
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):
        head.select_head(3, 2, state_for(key, "head", head="3.2"))
    with pytest.raises(PreventUpdate):
        head.select_scale("log", state_for(key, "head"))
    assert head.select_scale("split", state_for(key, "head"))["scale"] == "split"
    for junk in ({"head": "<b>", "t": 1}, {"done": "../x"}, {"done": 3, "metric": []}, [], "x"):
        search, st = run_cb(cb.sync_state, ids.SELECT, "/overview", f"?a={key}&head=1.1", junk)
        assert st["head"] == "1.1" and st["a"] == key and st["metric"] == "sink_metric"


def test_sync_state_merges_url_clicks_and_results(analysed):
    from visapp import callbacks as cb
    key = analysed["key"]
    done = cb.relay_done({"key": key, "model": "smollm2-135m", "t": 1})         # a finished analysis
    search, st = run_cb(cb.sync_state, "select-store", "/sinks", "?head=99.99", done)
    assert st["a"] == key and st["view"] == "sinks" and st["head"] == "29.8"       # clamped to the model
    assert f"a={key}" in search
    # a finished analysis always reaches the pages, even when the state looks the same (a re-run of the
    # link's own key); only the echo of sync_state's own URL write is dropped
    assert run_cb(cb.sync_state, "select-store", "/sinks", search, done, st)[1] == st
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):
        run_cb(cb.sync_state, "url", "/sinks", search, done, st)
    from visapp.pages import head
    opts_l, opts_h = head.head_options(st)
    assert len(opts_l) == 30 and len(opts_h) == 9
    nav = cb.navigation(st)
    assert nav[0] == f"/overview{search}" and "tab-active" in nav[len(nav) // 2 + 2]


def test_lasting_links_rerun_the_stored_request_or_say_why_not(analysed):
    """A link whose result expired re-runs its stored request (same key); an unknown key with no
    stored request gets a one-line message in the notice and in every view, never a silent wait."""
    from visapp import callbacks as cb
    from visapp import service, state
    from visapp.pages import common, sinks
    unknown = "0123456789abcdef01234567"
    autorun, note = cb.boot("/head", f"?a={unknown}&model=smollm2-135m", None)
    assert autorun is cb.no_update and common.NOT_STORED in str(note)
    assert sinks.render_sinks(state_for(unknown, "sinks"), 0.3)[0].layout.annotations[0].text == common.NOT_STORED
    assert cb.run_info(state_for(unknown, "sinks")) == common.NOT_STORED
    # a stored request whose result is gone: boot asks the job to run exactly that request
    req = service.make_request(text="A short text whose result has expired.")
    state.store().set(f"{req.key()}:req", req.to_dict(), timeout=0)
    assert not service.is_cached(req.key())
    load, note = cb.boot("/sinks", f"?a={req.key()}", None)
    assert load["request"] == req.to_dict() and "loading the model smollm2-135m" in str(note)
    assert common.status(state_for(req.key(), "sinks")) == common.PENDING
    autorun, note = cb.load_then_ask(load)                   # the model is loaded before the job forks
    assert autorun["request"] == req.to_dict() and note == ""
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):                       # a page switch while it runs asks nothing new
        cb.boot("/head", f"?a={req.key()}", load)
    with pytest.raises(PreventUpdate):                       # cached: nothing to do
        cb.boot("/head", f"?a={analysed['key']}", None)


def test_cancel_says_so_and_restores_the_shown_text(analysed):
    from visapp import callbacks as cb
    note, text = cb.cancelled(1, state_for(analysed["key"], "overview"))
    assert cb.CANCELLED in str(note) and text == analysed["req"].text
    note, text = cb.cancelled(1, state_for("0123456789abcdef01234567", "overview"))
    assert cb.CANCELLED_NONE in str(note) and text is cb.no_update


def test_analysis_job_errors_keep_previous_results(env):
    from dash import no_update
    from visapp import callbacks as cb
    done, err = cb.analysis_job(lambda p: None, 1, None, None, "smollm2-135m", "", "   ", "auto", 512, 4, "auto",
                                [], [], trigger="analyze-btn")
    assert done is no_update and "empty" in str(err)
    done, err = cb.analysis_job(lambda p: None, 1, None, None, "smollm2-135m", "/nonexistent/model", "hi", "auto",
                                512, 4, "auto", [], [], trigger="analyze-btn")
    assert done is no_update and "/nonexistent/model" in str(err) and "Traceback" not in str(err)


def test_long_text_uses_pooled_map_and_zoom_block(analysed, lm, monkeypatch):
    """Above the full-map limit the head view shows the pooled map; a click loads an exact block."""
    from visapp import service
    from visapp.pages import head as cb
    short = service.get_result(analysed["key"])
    monkeypatch.setenv("ATTNVIS_APP_FULL_MAP_MAX", "128")
    req = service.make_request(text=analysed["req"].text, items="none")
    key = service.run_analysis(req)
    res = service.get_result(key)
    assert not res.extras["has_full_maps"] and service.head_map(key, 0, 0) is None
    st = state_for(key, "head", head="12.4")
    fig = cb.render_head(st, "max", None)[0]
    assert np.asarray(fig.data[0].z).shape[0] <= 128            # pooled, never n x n
    zr = cb.zoom_request({"points": [{"x": 300.0, "y": 300.0}]}, st)
    assert zr["q1"] - zr["q0"] == service.zoom_span(res.n_tokens) == min(256, res.n_tokens // 2)
    assert zr["k0"] <= zr["q0"]
    zoom = cb.zoom_job(lambda m: None, zr)
    block = service.get_zoom(zoom["zk"])
    full = service.head_map(analysed["key"], 12, 4)
    assert short.n_tokens == res.n_tokens
    np.testing.assert_allclose(block["z"], full[zr["q0"]:zr["q1"], zr["k0"]:zr["k1"]], atol=1e-3)
    out = cb.render_head(st, "max", zoom)
    assert out[2] == {"display": "block"} and np.asarray(out[1].data[0].z).shape == block["z"].shape
    assert cb.render_head_graph(st, 0.1, zoom).data


def test_variant_comparison_job_and_view(analysed):
    """compute.variants on the cached analysis: fidelity table, loss bars, maps and a diverging
    difference for the selected head (two variants, one layer, to stay fast)."""
    from visapp import callbacks
    from visapp import service
    from visapp.pages import variants as cb
    if service.variants_available():
        pytest.skip(service.variants_available())
    key = analysed["key"]
    st = state_for(key, "variants", head="10.3")
    store, err = cb.compare_job(lambda p: None, 1, ["sinks:4+window:16"], "topk:8", "10", st)
    assert err == "", err
    cmp = service.get_comparison(store["ck"])
    assert cmp.specs == ["sinks:4+window:16", "topk:8"] and cmp.result["layers"] == [10]
    f_maps, f_diff, f_bars, tbl, note, choices = cb.render_variants(st, callbacks.relay_compare(store), None)
    assert [tr.xaxis for tr in f_maps.data] == ["x", "x2", "x3"]
    assert f_diff.data[0].zmid == 0
    assert [c["value"] for c in choices] == ["sinks:4+window:16", "topk:8"]
    # the difference map shows the chosen variant: its map minus the softmax map of the same head
    for spec in ("sinks:4+window:16", "topk:8"):
        z = np.asarray(cb.render_variants(st, store, spec)[1].data[0].z, float)
        want = cmp.maps[(spec, 10, 3)] - cmp.maps[("softmax", 10, 3)]
        seen = np.isfinite(z)
        assert seen.sum() > 0.4 * z.size
        np.testing.assert_allclose(z[seen], want[seen], atol=1e-5)
    # another head: the numbers stay, the maps say how to get them (no silent blank)
    other = cb.render_variants(state_for(key, "variants", head="11.0"), store, None)
    assert "press Compare" in other[0].layout.annotations[0].text and "sinks:4+window:16" in str(other[3])
    assert len(f_bars.data) == 2 and "softmax" in str(f_bars.layout.annotations)
    text = str(tbl)
    assert "sinks:4+window:16" in text and "topk:8" in text
    # window + sinks keeps a strict subset of the keys: retained mass < 1, top-k of a row likewise
    v = cmp.result["variants"]["sinks:4+window:16"]
    from visapp.pages.variants import fidelity_at
    kept, _ = fidelity_at(v, "retained", [10], 10, 3)
    assert 0 < kept < 1
    # bad input is an error in the page, not an exception
    store, err = cb.compare_job(lambda p: None, 1, [], "window:-3", "", st)
    assert store is cb.no_update and "window" in str(err)
    store, err = cb.compare_job(lambda p: None, 1, ["elu"], "", "99", st)
    assert "layer" in str(err)


def test_generated_continuation_is_greedy_and_inspectable(env, lm):
    """Generate 6 tokens, analyse prompt + continuation: every generated token is the model's own top-1
    prediction at the position before it (greedy decoding), and the generate view shows their rows."""
    from visapp import callbacks as cb
    from visapp import ids, service
    from visapp.pages import generate
    prompt = "The capital of France is"
    done, err = cb.analysis_job(lambda p: None, None, {"tokens": 6, "t": 1}, None, "smollm2-135m", "", prompt, "auto",
                                512, 4, "none", [], [], trigger=ids.GEN_REQ)
    assert err == "", err
    res = service.get_result(done["key"])
    gen = res.extras["generation"]
    assert res.text.startswith(prompt) and 1 <= gen["new_tokens"] <= 6
    p = gen["prompt_tokens"]
    assert res.token_ids[:p] == lm.tokenizer(prompt)["input_ids"]
    assert list(res.token_top1[p - 1:]) == res.token_ids[p:]
    text, fig, tbl = generate.render_generate(state_for(done["key"], "generate", head="9.1"))
    assert "generated" in str(text) and np.asarray(fig.data[0].z).shape == (res.n_tokens - p, res.n_tokens)
    assert "continuation" in str(text)
    # the strongest key after token 0 is the argmax of the stored map's row over keys >= 1
    full = service.head_map(done["key"], 9, 1)
    rows = generate._strongest_beyond_sink(full, p)
    for r, (k, w) in enumerate(rows):
        assert k == 1 + int(np.argmax(full[p + r, 1:])) and w == pytest.approx(float(full[p + r, k]))
    assert f"({rows[0][0]})" in str(tbl)
    # the panel keeps the prompt (no silent replacement); the button puts prompt + continuation there
    filled = run_cb(cb.fill_panel, ids.STATE, state_for(done["key"], "generate"), 0, 0, 0, 0, [], None)
    assert filled[0] == prompt
    assert generate.use_continuation(1, state_for(done["key"], "generate")) == res.text != prompt


def test_flask_endpoints_serve_the_app(analysed):
    import json
    import app
    c = app.server.test_client()
    assert c.get("/").status_code == 200 and c.get("/healthz").data == b"OK"
    deps = c.get("/_dash-dependencies").json
    assert any("ov-graph.figure" in d["output"] for d in deps)
    st = state_for(analysed["key"], "overview")
    body = {"output": "..ov-graph.figure...ov-side.children..",
            "outputs": [{"id": "ov-graph", "property": "figure"}, {"id": "ov-side", "property": "children"}],
            "inputs": [{"id": "view-state", "property": "data", "value": st},
                       {"id": "ov-size", "property": "value", "value": "importance"},
                       {"id": "ov-colors", "property": "value", "value": "Cividis"}],
            "changedPropIds": ["view-state.data"], "state": []}
    r = c.post("/_dash-update-component", json=body)
    assert r.status_code == 200
    fig = r.json["response"]["ov-graph"]["figure"]
    from plotly.colors import get_colorscale
    assert fig["layout"]["coloraxis"]["colorscale"] == [list(x) for x in get_colorscale("Cividis")]
    assert len(json.dumps(r.json)) < 200_000


def test_html_tables_show_tokens_as_text():
    """Dash renders strings as text: table cells must not carry plotly's HTML escapes (a literal &lt;)."""
    from visapp.components import plain_token, table
    cell = str(table(["token"], [[plain_token("<b>&\n")]]))
    assert "<b>&⏎" in cell and "&lt;" not in cell and "&amp;" not in cell
