"""The corpus, Q/K embedding (+ context search) and side-by-side pages: their callbacks called as plain
functions on tiny inputs (3 short texts cut from the shipped corpus, SmolLM2), the numbers checked
against independent per-text analyses and dense references."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.corpus_helpers import valid_figure

pytestmark = pytest.mark.integration          # loads SmolLM2 (conftest: not part of the fast unit loop)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
LAYER, HEAD = 3, 1


def data_url(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return "data:application/octet-stream;base64," + base64.b64encode(raw).decode()


def short_texts(n: int = 3) -> list[tuple[str, str]]:
    """n shipped texts of different kinds, cut to their first ~120 characters (< 64 tokens)."""
    from compute.corpus import read_corpus
    seen, out = set(), []
    for tid, text in read_corpus(ROOT / "compute" / "data" / "corpus" / "mixed.jsonl"):
        kind = tid.split("-")[0]
        if kind not in seen:
            seen.add(kind)
            out.append((tid, text[:120]))
        if len(out) == n:
            return out
    raise AssertionError("the shipped corpus lost its kinds")


def jsonl(items) -> str:
    return "\n".join(json.dumps({"id": t, "text": x, "kind": t.split("-")[0]}) for t, x in items) + "\n"


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """A private app cache (the converted GGUF weights shared with the normal cache)."""
    from visapp import state
    cache = tmp_path_factory.mktemp("pages-cache")
    real = Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "attnvis" / "gguf"
    real.mkdir(parents=True, exist_ok=True)
    (cache / "gguf").symlink_to(real, target_is_directory=True)
    old = {k: os.environ.get(k) for k in ("ATTNVIS_CACHE_DIR", "REDIS_URL", "ATTNVIS_TORCH_THREADS")}
    os.environ.update(ATTNVIS_CACHE_DIR=str(cache), ATTNVIS_TORCH_THREADS="1")
    os.environ.pop("REDIS_URL", None)
    state.reset()
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    state.reset()


def progress_log():
    msgs = []
    return msgs, lambda f, m: msgs.append((f, m))


# ---------------------------------------------------------------- corpus choice: bad files, one message each

@pytest.mark.parametrize("content, needle", [
    ('{"id": "a", "text": "fine"}\n{"id": "b", "text": }\n', "line 2: not valid JSON"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "line 2: id 'a' already used on line 1"),
    ('{"id": "a"}\n', "line 1: \"text\" must be a non-empty string"),
    (b'{"id": "a", "text": "\xff"}\n', "line 1: not UTF-8"),
    ("\n\n", "holds no texts"),
    ("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in range(51)), "at most 50"),
])
def test_bad_uploads_get_one_message(app_env, content, needle):
    from visapp.pages.corpus import choose_corpus
    store, info = choose_corpus("upload", data_url(content), "my corpus.jsonl")
    assert store is None
    msg = str(info.to_plotly_json())
    assert needle in msg and "my corpus.jsonl" in msg or needle in msg and "at most" in needle, msg
    assert "Traceback" not in msg and "/tmp" not in msg


def test_upload_too_large_and_not_base64(app_env):
    from visapp import corpus_jobs as cj
    from visapp.pages.corpus import choose_corpus
    big = data_url(b"x" * (cj.MAX_UPLOAD_BYTES + 10))
    assert "larger than" in str(choose_corpus("upload", big, "big.jsonl")[1].to_plotly_json())
    assert "could not be decoded" in str(choose_corpus("upload", "data:x;base64,@@@", "b.jsonl")[1].to_plotly_json())
    store, info = choose_corpus("mixed", None, None)
    assert store["ck"] and "30 texts" in str(info.to_plotly_json())


# ---------------------------------------------------------------- corpus run, overview, click-through

@pytest.fixture(scope="module")
def corpus_run(app_env):
    from visapp.pages.corpus import choose_corpus, corpus_body
    items = short_texts(3)
    store, _ = choose_corpus("upload", data_url(jsonl(items)), "three.jsonl")
    msgs, prog = progress_log()
    out = corpus_body(prog, store, MODEL, "")
    return {"items": items, "result": out, "msgs": msgs, "corpus": store}


def test_corpus_overview_matches_per_text_reports(corpus_run):
    """The page's overview equals the mean / std / role counts of independent per-text reports."""
    from compute.analysis.settings import AnalysisSettings
    from compute.corpus_stats import corpus_overview, metric_array
    from compute.limits import load_model_limited
    from compute.pipeline import analyze
    from compute.report import build_report
    from visapp import corpus_jobs as cj

    run = cj.get_run(corpus_run["result"]["run"])
    ov = run["overview"]
    assert ov["ids"] == [t for t, _ in corpus_run["items"]] and not run["failed"]
    assert [m for _, m in corpus_run["msgs"]][1:4] == ["text 1/3", "text 2/3", "text 3/3"]
    lm = load_model_limited(MODEL)
    reps = [dict(build_report(analyze(lm, text, cj.corpus_options(), AnalysisSettings(graphs=False))), id=tid)
            for tid, text in corpus_run["items"]]
    L, H = ov["n_layers"], ov["n_heads"]
    for m in ("sink_metric", "entropy_mean", "prev_token_mean"):
        per = np.array([[[next(r[m] for r in rep["heads"] if (r["layer"], r["head"]) == (l, h)) for h in range(H)]
                         for l in range(L)] for rep in reps], float)
        np.testing.assert_allclose(metric_array(ov, m), per.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(metric_array(ov, m, "std"), per.std(0), rtol=1e-5, atol=1e-9)
    assert ov["per_text"]["sink_rate"] == [pytest.approx(r["sink_rate"]) for r in reps]
    ref = corpus_overview(reps)
    assert ref["role_mode"] == ov["role_mode"]
    np.testing.assert_allclose(np.array(ref["role_stability"], float), np.array(ov["role_stability"], float))


def test_corpus_page_renders_and_rerun_reuses_texts(corpus_run, app_env):
    from visapp import corpus_jobs as cj
    from visapp.pages.corpus import choose_corpus, corpus_body, render_corpus

    state = {"view": "corpus", "head": "2.3"}
    summary, grid, spread, stab, dist, options = render_corpus(corpus_run["result"], "entropy_norm_mean", state)
    for f in (grid, spread, stab, dist):
        valid_figure(f)
    assert "3 texts" in str(summary.to_plotly_json())
    assert {o["value"] for o in options} >= {"sink_metric", "entropy_norm_mean"}
    assert set(cj.HEAD_METRICS) == {o["value"] for o in options if not o["value"].startswith("role_scores.")}
    ids = [c for tr in dist.data if tr.customdata is not None for c in tr.customdata]
    assert sorted(ids) == sorted([t for t, _ in corpus_run["items"]] * 2)     # two panels, one point per text
    # a fourth text: the first three come from the per-text cache
    items = corpus_run["items"] + [("extra-one", "A fourth and very short text about rivers.")]
    store, _ = choose_corpus("upload", data_url(jsonl(items)), "four.jsonl")
    msgs, prog = progress_log()
    out = corpus_body(prog, store, MODEL, "")
    assert msgs[0][1].startswith("text 3/4 (3 reused)") and msgs[-2][1] == "text 4/4 (3 reused)"
    run4 = cj.get_run(out["run"])
    assert run4["reused"] == 3 and run4["overview"]["n_texts"] == 4
    # the same corpus again: the stored run itself
    msgs2, prog2 = progress_log()
    assert corpus_body(prog2, store, MODEL, "")["run"] == out["run"] and msgs2 == []


def test_click_opens_text_as_analysis(corpus_run):
    from visapp.pages.corpus import open_text
    tid, text = corpus_run["items"][1]
    autorun, path, note = open_text({"points": [{"customdata": tid}]}, corpus_run["result"])
    assert autorun["request"]["text"] == text and autorun["request"]["model"] == MODEL
    assert "analysing it" in str(note.to_plotly_json())
    _, _, note = open_text({"points": [{"customdata": "nope"}]}, corpus_run["result"])
    assert "no text 'nope'" in str(note.to_plotly_json())


def test_corpus_export_data_and_figure(corpus_run):
    from visapp.dataset_export_ui import dataset_download
    dl, msg = dataset_download("corpus", "csv", part="grid", store=corpus_run["result"], control_value="sink_metric",
                               state={"head": "0.0"})
    rows = base64.b64decode(dl["content"]).decode().strip().split("\n")
    assert rows[0].startswith("layer,head,role_mode,role_stability,sink_metric_mean") and len(rows) == 1 + 30 * 9
    dl, msg = dataset_download("corpus", "json", part="distributions", store=corpus_run["result"])
    doc = json.loads(base64.b64decode(dl["content"]))
    assert len(doc["tables"]["texts"]["rows"]) == 3 and doc["provenance"]["headless"].startswith("python -m compute")
    dl, msg = dataset_download("corpus", "figure", part="grid", fmt="svg", store=corpus_run["result"],
                               control_value="sink_metric")
    assert base64.b64decode(dl["content"]).lstrip().startswith(b"<svg") or b"<svg" in base64.b64decode(dl["content"])[:500]
    _, msg = dataset_download("corpus", "csv", part="grid", store=None)
    assert msg.startswith("export failed: nothing to export yet")


# ---------------------------------------------------------------- embedding and context search

@pytest.fixture(scope="module")
def current(corpus_run):
    """The current analysis: the first corpus text (so its tokens are in the corpus too)."""
    from visapp import service
    tid, text = corpus_run["items"][0]
    key = service.run_analysis(service.make_request(model=MODEL, text=text))
    return {"view": "embedding", "a": key, "head": f"{LAYER}.{HEAD}", "text_id": tid}


def test_embedding_of_current_text_and_corpus(current, corpus_run):
    from visapp import corpus_jobs as cj
    from visapp import service
    from visapp.pages.embedding import embed_body, open_point, pickers, render_embedding

    res = service.get_result(current["a"])
    layers, heads, tokens, l, h = pickers("text", current, None)
    assert len(layers) == res.n_layers and heads[0]["value"] == -1 and len(tokens) == res.n_tokens
    assert (l, h) == (LAYER, HEAD)
    out = embed_body(lambda f, m: None, "text", LAYER, HEAD, "pca", 4000, current, None)
    emb = cj.get_embedding(out["ek"])
    assert emb["n_points"] == 2 * res.n_tokens                       # nothing sampled away
    assert [p["token"] for p in emb["points"] if p["kind"] == "query"] == list(res.tokens)
    fig, note = render_embedding(out, "position")
    valid_figure(fig)
    assert all(t.type == "scattergl" for t in fig.data) and "explained" in str(note.to_plotly_json())
    # PCA: the plotted coordinates are the projection of the aligned q/k (numpy SVD reference)
    from compute.embedding import align_keys, head_qk
    from compute.engine import tokenize
    from compute.limits import load_model_limited
    lm = load_model_limited(MODEL)
    q, k, meta = head_qk(lm, tokenize(lm, res.text, 512), LAYER, HEAD)
    qa, ka, _ = align_keys(q, k, meta["scale"])
    x = np.concatenate([qa, ka])
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    ref = x @ vt[:2].T
    got = np.array([[p["x"], p["y"]] for p in emb["points"]])
    np.testing.assert_allclose(np.abs(got), np.abs(ref), rtol=1e-4, atol=1e-4)     # up to the axes' signs
    # the corpus, sampled to 100 points, and every head of the layer
    corp = embed_body(lambda f, m: None, "corpus", LAYER, HEAD, "pca", 100, current, corpus_run["result"])
    ce = cj.get_embedding(corp["ek"])
    assert ce["n_points"] == 100 and {p["text_id"] for p in ce["points"]} <= {t for t, _ in corpus_run["items"]}
    valid_figure(render_embedding(corp, "group")[0])
    allh = cj.get_embedding(embed_body(lambda f, m: None, "text", LAYER, -1, "pca", 200, current, None)["ek"])
    assert len(allh["heads"]) == res.n_heads
    valid_figure(render_embedding({"ek": cj.embedding_key({"kind": "text", "a": current["a"]}, LAYER, None, "pca",
                                                           200)}, "kind")[0])
    # a click opens the corpus text at that head
    tid = corpus_run["items"][2][0]
    autorun, path, sel, _ = open_point({"points": [{"customdata": [tid, 4, "key"]}]}, corp, current)
    assert sel["head"] == f"{LAYER}.{HEAD}" and autorun["request"]["text"] == corpus_run["items"][2][1]
    with pytest.raises(Exception) as exc:
        embed_body(lambda f, m: None, "text", LAYER, HEAD, "pca", 5, current, None)
    assert "max points" in str(exc.value)


def test_context_search_against_dense_cosine(current, corpus_run):
    """Hits equal a brute-force cosine over every corpus token's query vector; the query token itself
    (the current text is corpus text 0) is the first hit with similarity 1."""
    from compute.embedding import head_qk
    from compute.engine import tokenize
    from compute.limits import load_model_limited
    from visapp import corpus_jobs as cj
    from visapp.pages.embedding import search_body, show_search

    pos = 5
    out = search_body(lambda f, m: None, pos, "query", 5, LAYER, HEAD, current, corpus_run["result"])
    res = cj.get_search(out["sk"])
    lm = load_model_limited(MODEL)
    rows, tags = [], []
    for tid, text in corpus_run["items"]:
        q, _, _ = head_qk(lm, tokenize(lm, text, 512), LAYER, HEAD)
        rows.append(q)
        tags += [(tid, i) for i in range(len(q))]
    x = np.concatenate(rows).astype(np.float64)
    v = x[pos]
    sims = x @ v / np.linalg.norm(x, axis=1) / np.linalg.norm(v)
    order = np.argsort(-sims, kind="stable")[:5]
    assert [(h["text_id"], h["position"]) for h in res["hits"]] == [tags[i] for i in order]
    np.testing.assert_allclose([h["similarity"] for h in res["hits"]], sims[order], atol=1e-5)
    assert res["hits"][0]["text_id"] == current["text_id"] and res["hits"][0]["position"] == pos
    assert res["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert all(abs(sum(a["weight"] for a in h["attends"])) <= 1 + 1e-5 for h in res["hits"])
    valid_figure(show_search(out))
    hid = cj.get_search(search_body(lambda f, m: None, pos, "hidden", 3, LAYER, HEAD, current,
                                    corpus_run["result"])["sk"])
    assert hid["by"] == "hidden" and hid["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    from compute.errors import UserError
    with pytest.raises(UserError, match="no corpus run yet"):
        search_body(lambda f, m: None, pos, "query", 5, LAYER, HEAD, current, None)
    with pytest.raises(UserError, match="one head"):
        search_body(lambda f, m: None, pos, "query", 5, LAYER, -1, current, corpus_run["result"])
    from visapp.dataset_export_ui import dataset_download
    dl, msg = dataset_download("embedding", "csv", part="search", store=None, extra=out)
    assert msg.startswith("export failed: nothing to export")


# ---------------------------------------------------------------- side by side

def test_side_by_side_identity_and_two_texts(current, corpus_run):
    """B = A (same text, same model): every delta 0, every head matched to itself at JS 0; two texts:
    deltas are B's head summary minus A's, no map matching (different tokens)."""
    from compute.errors import UserError
    from visapp import corpus_jobs as cj
    from visapp.pages.sidebyside import compare_body, render_sidebyside

    st = dict(current, view="sidebyside")
    same = compare_body(lambda f, m: None, "models", MODEL, "", "", st)
    d = cj.get_sidebyside(same["dk"])["diff"]
    assert d["grid_match"] and d["same_tokens"] and d["matching"]["source"] == "full"
    assert np.nanmax(np.abs(np.array(d["deltas"]["sink_metric"], float))) == 0.0
    assert all(m["a"] == m["b"] and m["js"] < 1e-6 for m in d["matches"])
    out = render_sidebyside(same, "entropy_mean", st)
    assert set(out[6]) == set(cj.HEAD_METRICS)
    for f in out[1:6]:
        valid_figure(f)
    a_map, b_map = out[4], out[5]
    np.testing.assert_array_equal(np.asarray(a_map.data[0].z, float), np.asarray(b_map.data[0].z, float))
    two = compare_body(lambda f, m: None, "texts", None, "", corpus_run["items"][1][1], st)
    d2 = cj.get_sidebyside(two["dk"])
    from compute.limits import load_model_limited
    from compute.pipeline import analyze
    from compute.summary import head_summary
    lm = load_model_limited(MODEL)
    sa = head_summary(analyze(lm, corpus_run["items"][0][1], cj.sbs_options()))
    sb = head_summary(analyze(lm, corpus_run["items"][1][1], cj.sbs_options()))
    np.testing.assert_allclose(np.array(d2["diff"]["deltas"]["sink_metric"], float), sb["sink_metric"] - sa["sink_metric"],
                               atol=1e-6)
    assert not d2["diff"]["matching"]["available"] and d2["diff"]["matches"] == []
    assert "different tokens" in str(render_sidebyside(two, "sink_metric", st)[2].layout.annotations[0].text)
    for f in render_sidebyside(two, "sink_metric", st)[1:6]:
        valid_figure(f)
    with pytest.raises(UserError, match="model B"):
        compare_body(lambda f, m: None, "models", None, "  ", "", st)
    with pytest.raises(UserError, match="text B is empty"):
        compare_body(lambda f, m: None, "texts", None, "", "   ", st)
    with pytest.raises(UserError):
        compare_body(lambda f, m: None, "models", None, "/no/such/model/folder", "", st)
    from visapp.dataset_export_ui import dataset_download
    dl, msg = dataset_download("sidebyside", "csv", part="match", store=same, control_value="sink_metric",
                               state={"head": "0.0"})
    assert base64.b64decode(dl["content"]).decode().count("\n") == 1 + 30 * 9


# ---------------------------------------------------------------- the Celery path (real redis-server + worker)

def test_corpus_run_on_celery_workers_gives_the_same_numbers(corpus_run, tmp_path):
    """With REDIS_URL set and a worker answering, the page's run sends the texts to the worker (mode celery)
    and gets the in-process run's numbers."""
    from deploy_procs import REDIS_BIN, Redis, base_env, celery_worker, shared_cache_dir, stop, wait_log

    from compute.corpus_stats import metric_array
    from visapp import corpus_jobs as cj
    from visapp import state
    from visapp.pages.corpus import choose_corpus, corpus_body

    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed")
    redis = Redis(tmp_path)
    log = tmp_path / "w1.log"
    worker = celery_worker("w1", base_env(REDIS_URL=redis.url, ATTNVIS_CACHE_DIR=shared_cache_dir(tmp_path),
                                          ATTNVIS_PRELOAD_MODELS=MODEL), log)
    old = os.environ.get("REDIS_URL")
    try:
        wait_log(log, " ready.", 180, worker)
        os.environ["REDIS_URL"] = redis.url
        state.reset()
        store, _ = choose_corpus("upload", data_url(jsonl(corpus_run["items"])), "three.jsonl")
        out = corpus_body(lambda f, m: None, store, MODEL, "")
        run, ref = cj.get_run(out["run"]), None
        assert run["mode"] == "celery" and run["overview"]["ids"] == [t for t, _ in corpus_run["items"]]
        assert "w1@" in log.read_text(errors="replace") and "attnvis.corpus_text" in log.read_text(errors="replace")
    finally:
        if old is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = old
        state.reset()
        stop(worker)
        redis.stop()
    ref = cj.get_run(corpus_run["result"]["run"])["overview"]
    for m in ("sink_metric", "entropy_mean", "prev_token_mean"):
        np.testing.assert_allclose(metric_array(run["overview"], m), metric_array(ref, m), rtol=1e-5, atol=1e-7)
    assert run["overview"]["role_mode"] == ref["role_mode"]


def test_routes_build_the_pages_with_their_export_block(app_env):
    """Each new view's page builds from a URL (no result yet) with its "Export for a paper" block."""
    import app  # noqa: F401  (registers the pages and the shell's callbacks)
    from visapp import callbacks as cb
    for view, parts in (("corpus", 4), ("embedding", 2), ("sidebyside", 4)):
        content = cb.route(f"/{view}", "?head=4.2")
        assert content[0].id == f"view-{view}" and len(content) == 2
        found = {str(c.id): c for c in content[1]._traverse() if getattr(c, "id", None)}
        part = next(c for k, c in found.items() if "dexport-part" in k)
        assert len(part.options) == parts


def test_a_too_long_text_is_reported_and_not_kept(corpus_run):
    from dataclasses import asdict

    from visapp import corpus_jobs as cj
    from visapp import state
    from visapp.pages.corpus import choose_corpus, corpus_body, render

    long_text = "word " * (cj.text_token_cap() + 50)
    items = corpus_run["items"][:1] + [("long-one", long_text)]
    store, _ = choose_corpus("upload", data_url(jsonl(items)), "two.jsonl")
    run = cj.get_run(corpus_body(lambda f, m: None, store, MODEL, "")["run"])
    assert run["ids"] == [items[0][0]] and "tokens" in run["failed"]["long-one"]
    assert "1 texts failed: long-one:" in str(render(run, "sink_metric")[0].to_plotly_json())
    od = asdict(cj.corpus_options())
    assert state.store().has(f"ds:text:{cj.text_key(MODEL, od, items[0][1])}")
    assert not state.store().has(f"ds:text:{cj.text_key(MODEL, od, long_text)}")
