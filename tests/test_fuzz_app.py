"""Bad-input fuzzing of the app's callbacks (issue 8 item 7) with hypothesis.

Through the Flask test client (Dash's real request handling, including the app's on_error handler):
random URL paths and query strings, random clicks, and random JSON in every input of every
non-background callback: never a 500, never a traceback in the response. The analysis and comparison
jobs are called as plain functions (forking a job per example would be slow) with hostile texts,
megabyte texts, invalid model paths, invalid numbers, invalid item spans and invalid variant specs: the
answer is the page's error box with one clear line, never "internal error". Small example counts.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
odd = st.sampled_from(["\x00", "\x01", "\x1b[31m", "\x7f", "\u202e", "\ufeff", "\ud800", "\U0010ffff", "\r\n", "<script>",
                       "'\"", "../", "%00", "&amp;", "{{", "🙂"])
hostile = st.lists(st.one_of(st.text(max_size=8), odd), max_size=8).map("".join)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                                     st.floats(allow_nan=False, allow_infinity=False), hostile),
                           lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(hostile, c, max_size=4)),
                           max_leaves=12)


def _cache(tmp_path_factory):
    from compute.models import cache_dir
    d = tmp_path_factory.mktemp("fuzz-cache")
    real = cache_dir() / "gguf"
    real.mkdir(parents=True, exist_ok=True)
    (d / "gguf").symlink_to(real, target_is_directory=True)
    return d


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """The app on a fresh cache, with one small cached analysis (MiniLM: 6 layers) to act on."""
    old = {k: os.environ.get(k) for k in ("ATTNVIS_CACHE_DIR", "REDIS_URL", "ATTNVIS_SERVER_MODE")}
    os.environ["ATTNVIS_CACHE_DIR"] = str(_cache(tmp_path_factory))
    os.environ.pop("REDIS_URL", None)
    os.environ["ATTNVIS_SERVER_MODE"] = "1"
    from visapp import service, state
    state.reset()
    import app as app_module
    req = service.make_request(model="minilm-l6", text="Cats sit. Dogs run.\n\nBirds fly.", items="none")
    key = service.run_analysis(req)
    client = app_module.app.server.test_client()
    client.get("/")
    deps = client.get("/_dash-dependencies").get_json()
    yield {"app": app_module, "client": client, "deps": deps, "key": key, "service": service}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    state.reset()


def outputs(dep):
    out = dep["output"]
    return out[2:-2].split("...") if out.startswith("..") else [out]


def concrete(cid):
    """A pattern-matching id ('{"type":..,"view":["MATCH"]}') made concrete, as the renderer sends it."""
    if isinstance(cid, str) and cid.startswith("{"):
        d = json.loads(cid)
        return {k: ("overview" if v == ["MATCH"] else v) for k, v in d.items()}
    if isinstance(cid, dict):
        return {k: ("overview" if v == ["MATCH"] else v) for k, v in cid.items()}
    return cid


def post(client, dep, values: dict, changed: list):
    outs = outputs(dep)
    outspec = [{"id": concrete(o.rsplit(".", 1)[0]), "property": o.rsplit(".", 1)[1]} for o in outs]

    def spec(x):
        key = f"{x['id'] if isinstance(x['id'], str) else json.dumps(x['id'], sort_keys=True)}.{x['property']}"
        return {"id": concrete(x["id"]), "property": x["property"], "value": values.get(key)}
    body = {"output": dep["output"], "outputs": outspec if len(outspec) > 1 else outspec[0],
            "inputs": [spec(x) for x in dep["inputs"]], "state": [spec(x) for x in dep.get("state", [])],
            "changedPropIds": changed}
    return client.post("/_dash-update-component", json=body)


def assert_no_crash(resp):
    assert resp.status_code in (200, 204), f"HTTP {resp.status_code}: {resp.get_data(as_text=True)[:500]}"
    body = resp.get_data(as_text=True)
    assert "Traceback" not in body, body[:2000]


@FUZZ
@given(path=hostile, search=hostile, head=st.one_of(hostile, st.integers().map(str)))
def test_url_state_fuzz(app_env, path, search, head):
    """What anyone can type into the address bar."""
    from visapp import ids
    dep = next(d for d in app_env["deps"] if f"{ids.URL}.search" in outputs(d))
    for s in (search, f"?a={app_env['key']}&head={head}&metric={search}", "?" + search):
        r = post(app_env["client"], dep, {f"{ids.URL}.pathname": "/" + path, f"{ids.URL}.search": s},
                 [f"{ids.URL}.pathname"])
        assert_no_crash(r)
        assert "internal error" not in r.get_data(as_text=True)


@FUZZ
@given(points=json_values)
def test_head_click_fuzz(app_env, points):
    """clickData as a tampered client could send it."""
    from visapp import ids
    click_deps = [d for d in app_env["deps"] if any(x["property"] == "clickData" for x in d["inputs"])]
    sync = next(d for d in app_env["deps"] if f"{ids.URL}.search" in outputs(d))
    assert len(click_deps) >= 5
    for click in (points, {"points": points}, {"points": [{"customdata": points, "x": points, "y": points}]}):
        for dep in click_deps:
            source = next(x["id"] for x in dep["inputs"] if x["property"] == "clickData")
            r = post(app_env["client"], dep, {f"{source}.clickData": click, "view-state.data": {"a": app_env["key"]}},
                     [f"{source}.clickData"])
            assert_no_crash(r)
        r = post(app_env["client"], sync, {f"{ids.URL}.pathname": "/head", f"{ids.URL}.search": f"?a={app_env['key']}",
                                           f"{ids.SELECT}.data": points}, [f"{ids.SELECT}.data"])
        assert_no_crash(r)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_every_callback_with_random_json(app_env, data):
    """Random JSON in every input and state of a random non-background callback: no 500, no traceback
    (a tampered request may get a one-line 'internal error', never a crash)."""
    deps = [d for d in app_env["deps"] if not d.get("background") and not d.get("clientside_function")
            and '["ALL' not in json.dumps(d)]              # ALL/ALLSMALLER need list-valued specs
    dep = data.draw(st.sampled_from(deps))
    values = {}
    for x in dep["inputs"] + dep.get("state", []):
        cid = x["id"] if isinstance(x["id"], str) else json.dumps(x["id"], sort_keys=True)
        values[f"{cid}.{x['property']}"] = data.draw(json_values)
    if data.draw(st.booleans()):           # half the time a valid state, so the views really render
        values["view-state.data"] = {"a": app_env["key"], "view": data.draw(st.sampled_from(
            ["overview", "head", "sinks", "basin", "entropy", "graphs", "variants", "generate", "x"])),
            "head": data.draw(hostile)}
    changed = [f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"]
    assert_no_crash(post(app_env["client"], dep, values, changed))


# ---------------------------------------------------------------- the jobs as plain functions

def run_job(fn, trigger, *args):
    from contextvars import copy_context
    return copy_context().run(lambda: fn(lambda *_: None, *args, trigger=trigger) if trigger is not None
                              else fn(lambda *_: None, *args))


def box_text(box) -> str:
    return json.dumps(box.to_plotly_json() if hasattr(box, "to_plotly_json") else box, default=str)


def assert_clear_error(err):
    text = box_text(err)
    assert err not in ("", None), "no error shown"
    assert "internal error" not in text and "Traceback" not in text, text[:500]


@FUZZ
@given(model=st.one_of(hostile, st.sampled_from(["../../etc", "/etc/passwd", "/dev/zero", "~", "x" * 5000,
                                                 "smollm2-135m/..", "minilm-l6\x00", "/proc/self/environ"])))
def test_analysis_job_invalid_model_paths(app_env, model):
    from visapp import callbacks as cb, ids
    done, err = run_job(cb.analysis_job, ids.ANALYZE, 1, None, None, "smollm2-135m", model, "hello world", "auto",
                        64, 4, "none", [], [])
    if model.strip() in ("", "smollm2-135m", "minilm-l6"):
        return
    assert_clear_error(err)


@FUZZ
@given(text=st.one_of(hostile, st.sampled_from(["", "   ", "\x00\x00", "a\ud800b", "x" * 1_000_001, "🙂" * 300_000])),
       max_tokens=st.one_of(st.integers(-5, 10**7), hostile, st.none(), st.floats(allow_nan=True)),
       sink=st.one_of(st.integers(-3, 500), hostile, st.none()))
def test_analysis_job_hostile_texts_and_numbers(app_env, text, max_tokens, sink):
    from visapp import callbacks as cb, ids
    done, err = run_job(cb.analysis_job, ids.ANALYZE, 1, None, None, "minilm-l6", "", text, "auto",
                        max_tokens, sink, "none", [], [])
    if err == "":                                   # a valid request: it was analysed and cached
        assert done and app_env["service"].is_cached(done["key"])
    else:
        assert_clear_error(err)


@settings(FUZZ, max_examples=10)
@given(spans=st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6)), max_size=4),
       junk=hostile)
def test_analysis_job_invalid_item_spans(app_env, spans, junk):
    """Item markers the basin view finds in the text ('auto'), made inconsistent: the job still answers
    with results (the basin section says why it is unavailable) or a clear error."""
    from visapp import callbacks as cb, ids
    text = "".join(f"Document [{a}] {junk}\n\n" for a, _ in spans) or junk
    done, err = run_job(cb.analysis_job, ids.ANALYZE, 1, None, None, "minilm-l6", "", text, "auto", 128, 4, "auto",
                        [], [])
    if err != "":
        assert_clear_error(err)


@settings(FUZZ, max_examples=12)
@given(custom=st.one_of(hostile, st.from_regex(r"[a-z+]{0,8}:[a-z0-9=,.+\-]{0,12}", fullmatch=True)),
       layers=st.one_of(hostile, st.from_regex(r"[0-9,\- ]{0,8}", fullmatch=True)))
def test_compare_job_invalid_variant_specs(app_env, custom, layers):
    from visapp.pages import variants as cb
    state = {"a": app_env["key"], "view": "variants", "head": "0.0"}
    store, err = run_job(cb.compare_job, None, 1, [], custom, layers, state)
    if err not in ("", None):
        assert_clear_error(err)


def test_user_text_is_never_rendered_as_html():
    """Dash renders strings as text; the only ways around it would be raw-HTML components."""
    for p in list((REPO / "visapp").rglob("*.py")) + [REPO / "app.py"]:
        src = p.read_text()
        assert not re.search(r"dangerously_allow_html\s*=\s*True", src), p
        assert "Iframe(" not in src or "srcDoc" not in src, p
