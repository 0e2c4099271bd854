"""The app without a browser: URL state, request validation, the service's cache, every view's render
callback on a real SmolLM2 analysis, head-selection latency, on-demand blocks, the Flask test client.

One real ~500-token analysis (module fixture) runs in this process; nothing here forks, so running
torch in-process is safe (the e2e tests start the server as a separate process).
"""
import os
import statistics
import time
from contextvars import copy_context

import numpy as np
import pytest

os.environ.setdefault("ATTNVIS_TORCH_THREADS", "1")


def fresh_cache_dir(tmp) -> str:
    """An empty result cache that still reuses the converted GGUF weights (converting costs ~30 s)."""
    from compute.models import cache_dir
    old = os.environ.pop("ATTNVIS_CACHE_DIR", None)
    try:
        real = cache_dir() / "gguf"
    finally:
        if old is not None:
            os.environ["ATTNVIS_CACHE_DIR"] = old
    real.mkdir(parents=True, exist_ok=True)
    (tmp / "gguf").symlink_to(real, target_is_directory=True)
    return str(tmp)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    old = os.environ.get("ATTNVIS_CACHE_DIR")
    os.environ["ATTNVIS_CACHE_DIR"] = fresh_cache_dir(tmp_path_factory.mktemp("attnvis-cache"))
    from visapp import state
    state.reset()
    yield
    if old is None:
        os.environ.pop("ATTNVIS_CACHE_DIR", None)
    else:
        os.environ["ATTNVIS_CACHE_DIR"] = old
    state.reset()


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
    from visapp.callbacks import head_from_click
    assert head_from_click({"points": [{"customdata": [4, 2, "sink", 0.5]}]}) == (4, 2)
    assert head_from_click({"points": [{"x": 3, "y": 7}]}) == (7, 3)          # layer x head heatmaps
    assert head_from_click({"points": []}) is None and head_from_click(None) is None


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
    from visapp import callbacks as cb
    from visapp import service
    key = analysed["key"]
    res = service.get_result(key)
    fig, side = cb.render_overview(state_for(key, "overview", metric="sink_metric"), "importance", "Viridis")
    assert sum(len(tr.x) for tr in fig.data if tr.customdata is not None) == res.n_layers * res.n_heads
    assert "Head 0.0" in str(side)
    out = cb.render_head(state_for(key, "head", head="5.3"), "max", None)
    assert out[0].data[0].type == "heatmap" and np.asarray(out[0].data[0].z).shape == (res.n_tokens,) * 2
    assert cb.render_head_graph(state_for(key, "head", head="5.3"), 0.1, None).data
    f_layers, f_rate, f_map, tbl = cb.render_sinks(state_for(key, "sinks"), 0.3)
    assert np.asarray(f_map.data[0].z).shape == (res.n_layers, res.n_heads) and "Hidden" not in str(type(tbl))
    summary, text, curves, options, order = cb.render_basin(state_for(key, "basin"), [])
    basin = res.extras["basin"]
    if basin.get("available", True):
        assert len(options) == len(basin["items"]) >= 2 and len(curves.data) == res.n_layers + 1
        _, _, _, _, order = cb.render_basin(state_for(key, "basin"), [options[-1]["value"]])
        assert "suggested order" in str(order) or "not available" in str(order)
    f_map, f_prof, flags = cb.render_entropy(state_for(key, "entropy"))
    assert len(f_prof.data) == 3
    f_heads, info, f_tok = cb.render_graphs(state_for(key, "graphs"), 0.1, None)
    assert "heads" in info and f_heads.data
    text, f_gen, tbl = cb.render_generate(state_for(key, "generate"))
    assert "no generated continuation" in str(text)
    # inactive views do nothing
    from dash.exceptions import PreventUpdate
    with pytest.raises(PreventUpdate):
        cb.render_sinks(state_for(key, "overview"), 0.3)


def test_missing_sections_say_not_available(analysed):
    from visapp import service
    from visapp.views import overview
    res = service.get_result(analysed["key"])
    summ = service.summary(res)
    values, why = overview.metric_values(res, summ, "role:induction")
    assert values is None and "probe" in why
    values, why = overview.metric_values(res, summ, "importance")
    assert values is None and why
    fig = overview.render_grid(res, summ, "importance", "importance", "Viridis", (0, 0))
    assert "not available" in fig.layout.annotations[0].text


def test_head_selection_latency_under_300ms(analysed):
    """Server time from a click on a glyph to the head-detail figures, serialised as Dash sends them,
    on a cached ~500-token analysis."""
    from dash._utils import to_json
    from visapp import callbacks as cb
    key = analysed["key"]
    search = f"?a={key}"
    cb.render_head(state_for(key, "head", head="0.0"), "max", None)            # first call imports modules
    times = []
    for l, h in [(3, 1), (3, 2), (17, 5), (29, 8), (10, 0), (10, 4)]:
        t = time.perf_counter()
        out = run_cb(cb.sync_state, "ov-graph", "/head", search, None,
                     {"points": [{"customdata": [l, h, "x", 0.0]}]}, None, None, None, 0, 0, "sink_metric", "log")
        st = out[1]
        assert st["head"] == f"{l}.{h}" and f"head={l}.{h}" in out[0]
        to_json([cb.render_head(st, "max", None), cb.render_head_graph(st, 0.1, None), cb.navigation(st)])
        times.append(time.perf_counter() - t)
    print(f"head selection server time: median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {len(times)} heads")
    assert statistics.median(times) < 0.3


def test_sync_state_merges_url_clicks_and_results(analysed):
    from visapp import callbacks as cb
    key = analysed["key"]
    out = run_cb(cb.sync_state, "analysis-done", "/sinks", "?head=99.99", {"key": key, "model": "smollm2-135m"},
                 None, None, None, None, None, None, "sink_metric", "log")
    search, st = out[0], out[1]
    assert st["a"] == key and st["view"] == "sinks" and st["head"] == "29.8"       # clamped to the model
    assert f"a={key}" in search
    assert len(out[6]) == 30 and len(out[7]) == 9
    hrefs = cb.navigation(st)
    assert hrefs[0] == f"/overview{search}" and "tab-active" in hrefs[len(hrefs) // 3 + 2]


def test_analysis_job_errors_keep_previous_results(env):
    from dash import no_update
    from visapp import callbacks as cb
    done, err = cb.analysis_job(lambda p: None, 1, None, None, "smollm2-135m", "", "   ", "auto", 512, 4, "auto",
                                [], [], 0, trigger="analyze-btn")
    assert done is no_update and "empty" in str(err)
    done, err = cb.analysis_job(lambda p: None, 1, None, None, "smollm2-135m", "/nonexistent/model", "hi", "auto",
                                512, 4, "auto", [], [], 0, trigger="analyze-btn")
    assert done is no_update and "/nonexistent/model" in str(err) and "Traceback" not in str(err)


def test_long_text_uses_pooled_map_and_zoom_block(analysed, lm, monkeypatch):
    """Above the full-map limit the head view shows the pooled map; a click loads an exact block."""
    from visapp import callbacks as cb
    from visapp import service
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
    from visapp import callbacks as cb
    from visapp import service
    if service.variants_available():
        pytest.skip(service.variants_available())
    key = analysed["key"]
    st = state_for(key, "variants", head="10.3")
    store, err = cb.compare_job(lambda p: None, 1, ["sinks:4+window:16"], "topk:8", "10", st)
    assert err == "", err
    cmp = service.get_comparison(store["ck"])
    assert cmp.specs == ["sinks:4+window:16", "topk:8"] and cmp.result["layers"] == [10]
    f_maps, f_diff, f_bars, tbl, note = cb.render_variants(st, cb.relay_compare(store))
    assert [tr.xaxis for tr in f_maps.data] == ["x", "x2", "x3"]
    assert f_diff.data[0].zmid == 0
    assert len(f_bars.data) == 2 and "softmax" in str(f_bars.layout.annotations)
    text = str(tbl)
    assert "sinks:4+window:16" in text and "topk:8" in text
    # window + sinks keeps a strict subset of the keys: retained mass < 1, top-k of a row likewise
    v = cmp.result["variants"]["sinks:4+window:16"]
    from visapp.views.variants import fidelity_at
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
    from visapp import service
    prompt = "The capital of France is"
    done, err = cb.analysis_job(lambda p: None, None, 1, None, "smollm2-135m", "", prompt, "auto", 512, 4, "none",
                                [], [], 6, trigger="gn-run")
    assert err == "", err
    res = service.get_result(done["key"])
    gen = res.extras["generation"]
    assert res.text.startswith(prompt) and 1 <= gen["new_tokens"] <= 6
    p = gen["prompt_tokens"]
    assert res.token_ids[:p] == lm.tokenizer(prompt)["input_ids"]
    assert list(res.token_top1[p - 1:]) == res.token_ids[p:]
    text, fig, tbl = cb.render_generate(state_for(done["key"], "generate", head="9.1"))
    assert "generated" in str(text) and np.asarray(fig.data[0].z).shape == (res.n_tokens - p, res.n_tokens)


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
