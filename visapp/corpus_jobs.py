"""The app's door to the dataset views: corpus runs, query/key embeddings, context search and two analyses
side by side. Each `run_*` runs in a background job (the same manager as the analyses, visapp.state) and
returns a small cache key; each `get_*` reads the result in the web process. No compute logic here: the
work is compute.corpus (per-text summaries), compute.corpus_stats (overview), compute.embedding,
compute.context_search and compute.sidebyside, every analysis through `_analyze` (the one pipeline call).

Cache layout (visapp.state.store(), shared by every process):
  ds:corpus:<ck>      a chosen corpus: {"label", "items": [[id, text]], "kinds": {id: kind}}; ck = its hash
  ds:text:<tk>        one text's corpus summary {"ok", "summary"|"error"}; tk = sha1(model, options, text), so a
                      re-run reuses every finished text (also when a text is in another corpus)
  ds:run:<rk>         a finished corpus run (overview, aggregate, ids, kinds); rk = compute.corpus.run_key
  ds:emb:<ek>         an embedding (compute.embedding's embedding.json dict)
  ds:idx:<ik>         a context-search index of a corpus run (compute.context_search.SearchIndex)
  ds:search:<sk>      a search result (search.json's dict)
  ds:sbs:<dk>         a side-by-side comparison {"diff", "tokens_a", "tokens_b", "maps_a", "maps_b", ...}
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from compute import settings as csettings
from compute.errors import InputError, UserError

from . import cache_codec, service, state

Progress = Callable[[float, str], None]

SHIPPED = {"mixed": ("Shipped: 30 mixed texts (prose, dialogue, code, multi-document, repeats; CC0)",
                     Path(__file__).resolve().parent.parent / "compute" / "data" / "corpus" / "mixed.jsonl")}
MAX_TEXTS = 50                   # texts per corpus in the app (the CLI has no cap)
MAX_UPLOAD_BYTES = 2 << 20       # an uploaded JSONL file
MAX_TEXT_TOKENS = 512            # tokens per corpus text in the app (also capped by ATTNVIS_MAX_TOKENS)
SBS_MAX_TOKENS = 1024            # side by side: longest text
SBS_MAP_MAX = 128                # side by side keeps full maps up to this many tokens (float16, both sides)
SEARCH_K = 10
# compute.summary.head_summary's metrics (a test checks): the metric pickers' options before any result,
# so a Dash 4 dropdown keeps its default value
HEAD_METRICS = ("sink_metric", "sink_mass_mean", "sink_s_mass_mean", "entropy_mean", "entropy_norm_mean",
                "prev_token_mean", "local_mean", "exp_dist_mean", "top1_prob_mean")
SEARCH_MAX_K = 50


def limits_text() -> str:
    """The caps, as the pages state them."""
    return (f"at most {MAX_TEXTS} texts, {MAX_UPLOAD_BYTES >> 20} MiB per file, {text_token_cap()} tokens per text "
            "(longer texts are reported as failed, not cut)")


def text_token_cap() -> int:
    cap = csettings.get("ATTNVIS_MAX_TOKENS")
    return min(MAX_TEXT_TOKENS, cap) if cap else MAX_TEXT_TOKENS


def _sha(*parts) -> str:
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=True).encode("utf-8", "surrogatepass")
    return hashlib.sha1(payload).hexdigest()[:20]


def _analyze(lm, text: str, opts, sections=None):
    """The one call into the analysis (compute.pipeline)."""
    from compute.pipeline import analyze
    return analyze(lm, text, opts, sections)


def _load(model: str):
    from compute.limits import load_model_limited
    return load_model_limited(model)


# ---------------------------------------------------------------- corpora

def _check_items(items: list[tuple[str, str]], label: str) -> None:
    from compute.limits import check_text_size
    if len(items) > MAX_TEXTS:
        raise InputError(f"{label} holds {len(items)} texts; the app takes at most {MAX_TEXTS} "
                         "(run larger corpora with python -m compute analyze --corpus)")
    for tid, text in items:
        if "\x00" in text:
            raise InputError(f"{label}: text {tid[:80]!r} contains NUL bytes")
        try:
            check_text_size(text)
        except InputError as exc:
            raise InputError(f"{label}: text {tid[:80]!r}: {exc}") from None


def _save_corpus(label: str, items: list[tuple[str, str]], kinds: dict) -> str:
    ck = _sha("corpus", items)
    state.store().set(f"ds:corpus:{ck}", {"label": label, "items": [list(i) for i in items], "kinds": kinds},
                      timeout=0)
    return ck


def shipped_corpus(name: str = "mixed", limit: Optional[int] = None) -> str:
    """Store a shipped corpus (its first `limit` texts) and return its key."""
    from compute.corpus import read_corpus
    from compute.corpus_stats import corpus_kinds

    if name not in SHIPPED:
        raise InputError(f"no shipped corpus {name!r}; choose one of {', '.join(SHIPPED)}")
    label, path = SHIPPED[name]
    items = read_corpus(path)[:limit] if limit else read_corpus(path)
    _check_items(items, label)
    kinds = corpus_kinds(path)
    return _save_corpus(label if not limit else f"{label}, first {len(items)}", items,
                        {tid: kinds.get(tid) for tid, _ in items})


def uploaded_corpus(contents: Optional[str], filename: Optional[str]) -> str:
    """Store an uploaded JSONL corpus (dcc.Upload's data URL) and return its key; InputError with the
    file name and line for a bad file."""
    from compute.corpus import read_corpus
    from compute.corpus_stats import corpus_kinds

    name = re.sub(r"[^\w.\- ]+", "_", (filename or "upload.jsonl"))[:120] or "upload.jsonl"
    if not contents or "," not in contents:
        raise InputError("no file received: choose a .jsonl file with one {\"id\": ..., \"text\": ...} per line")
    b64 = contents.split(",", 1)[1]
    if len(b64) > (MAX_UPLOAD_BYTES * 4) // 3 + 8:
        raise InputError(f"{name} is larger than {MAX_UPLOAD_BYTES >> 20} MiB")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name}: the upload could not be decoded") from None
    if len(raw) > MAX_UPLOAD_BYTES:
        raise InputError(f"{name} is larger than {MAX_UPLOAD_BYTES >> 20} MiB")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "corpus.jsonl"
        p.write_bytes(raw)
        try:
            items = read_corpus(p, max_bytes=MAX_UPLOAD_BYTES)
            kinds = corpus_kinds(p)
        except InputError as exc:
            raise InputError(str(exc).replace(str(p), name)) from None
    _check_items(items, name)
    return _save_corpus(name, items, {tid: kinds.get(tid) for tid, _ in items})


def get_corpus(ck: Optional[str]) -> Optional[dict]:
    return state.store().get(f"ds:corpus:{ck}") if ck else None


def corpus_items(ck: str) -> list[tuple[str, str]]:
    c = get_corpus(ck)
    if c is None:
        raise UserError("the chosen corpus is no longer stored: choose it again")
    return [(str(t), str(x)) for t, x in c["items"]]


# ---------------------------------------------------------------- corpus runs

def corpus_options():
    """The options of every corpus text in the app (no full maps: the summaries need the statistics only)."""
    from compute.options import AnalysisOptions
    return AnalysisOptions(max_tokens=text_token_cap(), full_map_max=0)


def text_key(model: str, opts_dict: dict, text: str) -> str:
    from compute.corpus import CORPUS_VERSION, N_BUCKETS
    return _sha("text", CORPUS_VERSION, N_BUCKETS, model, opts_dict, text)


def _summarize_text(lm, text: str, opts) -> dict:
    """One text -> {"ok", "summary"|"error"} through the pipeline (compute.corpus.analyze_one)."""
    from compute.corpus import analyze_one
    try:
        out = {"ok": True, "summary": analyze_one(lm, text, opts)}
    except UserError as exc:
        out = {"ok": False, "error": str(exc)}
    return json.loads(json.dumps(out))      # the same JSON round trip as the CLI's runs


def run_corpus(ck: str, model: str, progress: Optional[Progress] = None) -> str:
    """Analyse every text of a stored corpus (finished texts reused), aggregate, store; returns the run key.
    Texts go to the Celery workers when REDIS_URL is set and a worker answers, else run here."""
    from compute.corpus import N_BUCKETS, aggregate, run_key
    from compute.corpus_stats import corpus_overview, report_from_summary

    corpus = get_corpus(ck)
    if corpus is None:
        raise UserError("the chosen corpus is no longer stored: choose it again")
    items = [(str(t), str(x)) for t, x in corpus["items"]]
    model = service.make_request(model=model, text="x").model          # the panel's model checks
    opts = corpus_options()
    od = asdict(opts)
    rk = run_key(items, model, od, N_BUCKETS)
    st = state.store()
    if st.has(f"ds:run:{rk}"):
        return rk
    report = progress or (lambda f, m: None)
    results: dict[str, dict] = {}
    todo = []
    for tid, text in items:
        r = st.get(f"ds:text:{text_key(model, od, text)}")
        if r is not None:
            results[tid] = r
        else:
            todo.append((tid, text))
    reused, n = len(results), len(items)
    done = [reused]

    def finished(tid, r, text):
        if r.get("ok"):                  # a failure (too long, time limit) is reported, not kept: a re-run retries
            st.set(f"ds:text:{text_key(model, od, text)}", r)
        results[tid] = r
        done[0] += 1
        report(done[0] / n, f"text {done[0]}/{n}" + (f" ({reused} reused)" if reused else ""))

    report(reused / n, f"text {reused}/{n}" + (f" ({reused} reused)" if reused else "") + f": loading {model}")
    mode = "in-process"
    texts = dict(todo)
    if todo and state.redis_url() and _can_fan_out(state.redis_url()):
        from compute import tasks
        mode = "celery"
        tasks.run_distributed(todo, model, od, state.redis_url(), n_buckets=N_BUCKETS,
                              on_done=lambda tid, r: finished(tid, r, texts[tid]))
    if mode == "in-process" and todo:
        lm = _load(model)
        for tid, text in todo:
            finished(tid, _summarize_text(lm, text, opts), text)
    agg = aggregate(items, results, {"model": model, "options": od, "mode": mode, "n_buckets": N_BUCKETS,
                                     "corpus": corpus["label"], "run_key": rk})
    ok = [tid for tid in agg["ids"]]
    if not ok:
        raise UserError("no text of the corpus could be analysed: " +
                        "; ".join(f"{t}: {e}" for t, e in list(agg["failed"].items())[:3]))
    per_text = [report_from_summary(tid, results[tid]["summary"]) for tid in ok]
    overview = corpus_overview(per_text)
    kinds = corpus.get("kinds") or {}
    st.set(f"ds:run:{rk}", {"run": rk, "model": model, "corpus": ck, "label": corpus["label"], "ids": ok,
                            "failed": agg["failed"], "reused": reused, "mode": mode, "overview": overview,
                            "aggregate": agg, "kinds": [kinds.get(t) for t in ok],
                            "n_tokens": {t: results[t]["summary"]["n_tokens"] for t in ok}})
    report(1.0, "done")
    return rk


def _can_fan_out(url: str) -> bool:
    """Send the texts to the Celery workers? Only when one answers, and, when this job is itself a Celery
    task (the app's jobs are, with REDIS_URL), when another worker can take them: with a single worker
    the job would wait for texts that nobody runs, so it analyses them itself."""
    from compute import tasks
    if tasks.unavailable_reason(url) is not None:
        return False
    try:
        from celery import current_task
        inside = bool(current_task and current_task.request.id)
    except Exception:
        inside = False
    if not inside:
        return True
    app = tasks.celery_app if tasks.celery_app.conf.broker_url == url else tasks.make_celery(url)
    try:
        return len(app.control.ping(timeout=2.0) or []) >= 2
    except Exception:
        return False


def get_run(rk: Optional[str]) -> Optional[dict]:
    return state.store().get(f"ds:run:{rk}") if rk else None


def run_text(rk: str, text_id: str) -> tuple[str, str]:
    """(model, text) of one text of a finished run (a click opens it as the current analysis)."""
    run = get_run(rk)
    if run is None:
        raise UserError("this corpus run is no longer stored: run it again")
    for tid, text in corpus_items(run["corpus"]):
        if tid == text_id:
            return run["model"], text
    raise InputError(f"no text {text_id!r} in this corpus")


def open_request(model: str, text: str) -> service.Request:
    """The analysis request that opens a corpus text (the panel's defaults)."""
    return service.make_request(model=model, text=text, max_tokens=service.default_request().max_tokens)


# ---------------------------------------------------------------- sources of texts (embedding, search)

def source_texts(source: dict) -> tuple[str, list[tuple[str, str]], str]:
    """(model, [(id, text)], label) of {"kind": "text", "a": analysis key} or {"kind": "corpus", "run": key}."""
    if source.get("kind") == "corpus":
        run = get_run(source.get("run"))
        if run is None:
            raise UserError("no corpus run yet: run one on the Corpus page first")
        keep = set(run["ids"])
        return run["model"], [(t, x) for t, x in corpus_items(run["corpus"]) if t in keep], run["label"]
    key = source.get("a")
    try:
        res = service.get_result(key)
    except service.NotCached:
        raise UserError("no analysed text yet: analyse a text first") from None
    return res.model, [("text", res.text)], "the current text"


# ---------------------------------------------------------------- embeddings

def source_token_cap(source: dict) -> int:
    """Longest text an embedding reads: the corpus cap, or for the current text the app's own limit (the
    points are sampled to max_points whatever the length)."""
    return text_token_cap() if source.get("kind") == "corpus" else csettings.get("ATTNVIS_MAX_TOKENS")


def embedding_key(source: dict, layer: int, head: Optional[int], method: str, max_points: int) -> str:
    from compute.embedding import SEED
    model, items, _ = source_texts(source)
    return _sha("emb", model, items, layer, head, method, max_points, SEED, source_token_cap(source))


def run_embedding(source: dict, layer: int, head: Optional[int], method: str, max_points: int,
                  progress: Optional[Progress] = None) -> str:
    """AttentionViz embedding of one head (head None: every head of the layer); returns its key."""
    from compute.embedding import embedding_for_texts

    ek = embedding_key(source, layer, head, method, max_points)
    st = state.store()
    if st.has(f"ds:emb:{ek}"):
        return ek
    model, items, label = source_texts(source)
    p = progress or (lambda f, m: None)
    p(0.0, f"loading {model}")
    lm = _load(model)
    emb = embedding_for_texts(lm, items, layer, head, method=method, max_points=max_points,
                              max_tokens=source_token_cap(source), progress=lambda f, m: p(0.9 * f, m))
    p(0.95, f"{method.upper()} done")
    emb["source"] = {**source, "label": label}
    st.set(f"ds:emb:{ek}", emb)
    p(1.0, "done")
    return ek


def get_embedding(ek: Optional[str]) -> Optional[dict]:
    return state.store().get(f"ds:emb:{ek}") if ek else None


# ---------------------------------------------------------------- context search

def run_search(a_key: str, position: int, rk: str, layer: int, head: int, by: str = "query", k: int = SEARCH_K,
               progress: Optional[Progress] = None) -> str:
    """The corpus tokens nearest to token `position` of the current analysis' text (by the head's query or
    the layer's hidden state); the corpus index is built once per (run, layer, head). Returns the result key."""
    from compute.context_search import BY, build_index, search

    if by not in BY:
        raise InputError(f"search by one of {', '.join(BY)}")
    if not 1 <= int(k) <= SEARCH_MAX_K:
        raise InputError(f"the number of hits must be between 1 and {SEARCH_MAX_K}")
    model, corpus, label = source_texts({"kind": "corpus", "run": rk})
    qmodel, (query_item,), _ = source_texts({"kind": "text", "a": a_key})
    if qmodel != model:
        raise InputError(f"the corpus run used {model}, the current text {qmodel}: run the corpus on the same model")
    sk = _sha("search", a_key, position, rk, layer, head, by, k)
    st = state.store()
    if st.has(f"ds:search:{sk}"):
        return sk
    p = progress or (lambda f, m: None)
    p(0.0, f"loading {model}")
    lm = _load(model)
    cap = text_token_cap()
    ik = _sha("idx", rk, layer, head, cap)
    index = st.get(f"ds:idx:{ik}")
    if index is None:
        index = build_index(lm, corpus, layer, head, hidden=True, max_tokens=cap,
                            progress=lambda f, m: p(0.9 * f, f"indexing the corpus: {m}"))
        st.set(f"ds:idx:{ik}", index)
    q = build_index(lm, [query_item], layer, head, hidden=True,
                    max_tokens=max(cap, service.default_request().max_tokens))
    n = len(q.tokens["text"])
    if not 0 <= position < n:
        raise InputError(f"the current text has positions 0..{n - 1}, not {position}")
    hits = search(index, q.vectors[by][q.row("text", position)], by, int(k))
    st.set(f"ds:search:{sk}", {"hits": hits, "by": by, "layer": layer, "head": head, "model": model, "k": int(k),
                               "corpus": label, "query": {"text_id": "current text", "position": position,
                                                          "token": q.tokens["text"][position]}})
    p(1.0, "done")
    return sk


def _register_index() -> None:
    """The search index is cached as data (visapp.cache_codec), never pickled."""
    from compute.context_search import SearchIndex
    cache_codec.register(SearchIndex)


_register_index()


def get_search(sk: Optional[str]) -> Optional[dict]:
    return state.store().get(f"ds:search:{sk}") if sk else None


# ---------------------------------------------------------------- side by side

def sbs_options():
    from compute.options import AnalysisOptions
    cap = csettings.get("ATTNVIS_MAX_TOKENS")
    return AnalysisOptions(max_tokens=min(SBS_MAX_TOKENS, cap) if cap else SBS_MAX_TOKENS, compute_loss=True,
                           full_map_max=SBS_MAP_MAX)


def run_sidebyside(a_key: str, mode: str, model_b: Optional[str] = None, text_b: Optional[str] = None,
                   progress: Optional[Progress] = None) -> str:
    """The current analysis (A) against B: mode 'models' = the same text on model_b, 'texts' = text_b on the
    same model. Returns the key of the stored comparison."""
    from compute.sidebyside import compare

    model_a, ((_, text_a),), _ = source_texts({"kind": "text", "a": a_key})
    if mode == "models":
        if not (model_b or "").strip():
            raise InputError("choose model B (a registry model or a local folder)")
        model_b = service.make_request(model=model_b.strip(), text="x").model
        b_text = text_a
    elif mode == "texts":
        if not isinstance(text_b, str) or not text_b.strip():
            raise InputError("text B is empty: type or paste a second text")
        b_text = service.make_request(model=model_a, text=text_b).text
        model_b = model_a
    else:
        raise InputError("mode must be 'models' or 'texts'")
    opts = sbs_options()
    dk = _sha("sbs", model_a, text_a, model_b, b_text, asdict(opts))
    st = state.store()
    if st.has(f"ds:sbs:{dk}"):
        return dk
    p = progress or (lambda f, m: None)
    p(0.0, f"loading {model_a}")
    lm_a = _load(model_a)
    p(0.05, f"analysing A ({model_a})")
    a = _analyze(lm_a, text_a, opts)
    p(0.4, f"loading {model_b}")
    lm_b = lm_a if model_b == model_a else _load(model_b)
    p(0.45, f"analysing B ({model_b})")
    b = _analyze(lm_b, b_text, opts)
    p(0.85, "matching heads")
    same_text = b_text == text_a
    la = a.model + ("" if same_text else " / text A")
    lb = b.model + ("" if same_text else " / text B")
    if la == lb:
        la, lb = f"A: {la}", f"B: {lb}"
    diff = compare(a, b, la, lb)
    st.set(f"ds:sbs:{dk}", {"diff": diff, "sides": {s: _side(r) for s, r in (("a", a), ("b", b))}})
    p(1.0, "done")
    return dk


def _side(res) -> dict:
    """What the page needs of one side: tokens, causal, and its maps (float16 full maps, else pooled)."""
    full = res.maps is not None
    return {"tokens": list(res.tokens), "causal": bool(res.causal), "n_tokens": res.n_tokens, "pool": res.pool,
            "full": full, "maps": np.asarray(res.maps if full else res.pooled_max, np.float16)}


def get_sidebyside(dk: Optional[str]) -> Optional[dict]:
    return state.store().get(f"ds:sbs:{dk}") if dk else None
