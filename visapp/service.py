"""The app's only door to compute/: analyses, cached results, on-demand maps, generation, variants.

Process model. The web process only loads models and reads cached results; every forward pass runs
in a background job (a process forked by dash's DiskcacheManager, or a Celery worker). Forked jobs
inherit the models the web process has loaded (copy-on-write), so a model loads once per web process.
Two fork hazards are handled here:
  * torch's OpenMP pool hangs in a forked child once the parent has used it: the web process keeps
    torch at one thread and never runs a forward; jobs set their own thread count (job_setup).
  * a fork while another thread holds the model-loading lock would leave the child's copy locked
    forever: forks wait for loads in progress (os.register_at_fork on _LOAD_LOCK).

Cache layout (flask-caching backend from visapp.state, keyed by the analysis key = sha1 of the
request: model, text, options, analysis settings):
  <key>:req          the request (so a link can be re-run after its result expired)
  <key>:core         AttentionResult without the full maps (row/column stats, pooled maps, extras)
  <key>:maps:<l>     float16 [H, N, N] full maps of layer l (texts up to full_map_max tokens)
  <key>:qk:<l>       one layer's q/k for on-demand blocks of longer texts
  <key>:zoom:<..>    a full-resolution block of one head
  <key>:cmp:<..>     a variant comparison
The core is written last, so a present core means its pieces were written; a failed write deletes the
pieces (see _store_result). Values are data (visapp.cache_codec), never pickles; every key expires.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from compute import models as _models
from compute import settings as csettings
from compute.analysis.settings import PROBES, AnalysisSettings
from compute.errors import InputError, UserError
from compute.options import AnalysisOptions, defaults
from kernels.names import BACKENDS

from . import cache_codec, state
from .presets import DEFAULT_PRESET, PRESETS

log = logging.getLogger(__name__)

CACHE_VERSION = "app-2"
DEFAULT_MODEL = _models.DEFAULT_MODEL
BACKENDS = BACKENDS
ITEMS = ("none", "auto")
PROBES = PROBES
_ENGINE = defaults(AnalysisOptions)
DEFAULT_MAX_TOKENS = _ENGINE["max_tokens"]   # the input panel's and the export CLI's default (part of the cache key)
ZOOM_SPAN = 256                  # full-resolution window of long texts: ZOOM_SPAN x ZOOM_SPAN cells
Progress = Callable[[float, str], None]


class NotCached(UserError):
    """The analysis is not (or no longer) in the cache."""


def app_full_map_max() -> int:
    """Texts up to this many tokens keep every head's full map (float16 [L, H, N, N]); longer ones
    use pooled maps plus on-demand blocks. 512 keeps a 30 x 9 head model at ~140 MB per analysis."""
    return csettings.get("ATTNVIS_APP_FULL_MAP_MAX")


def job_threads() -> int:
    return csettings.get("ATTNVIS_TORCH_THREADS") or (os.cpu_count() or 1)


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class Request:
    """What the user asked for; its sha1 is the cache key."""

    model: str = DEFAULT_MODEL
    text: str = PRESETS[DEFAULT_PRESET]["text"]
    backend: str = _ENGINE["backend"]
    max_tokens: int = DEFAULT_MAX_TOKENS
    sink_tokens: int = _ENGINE["sink_tokens"]
    items: str = "auto"
    probes: tuple = ()
    importance: bool = False
    generate: int = 0            # > 0: generate this many tokens after the text, then analyse both

    def key(self) -> str:
        payload = json.dumps({"v": CACHE_VERSION, **asdict(self), "full_map_max": app_full_map_max()},
                             sort_keys=True, ensure_ascii=True)
        return hashlib.sha1(payload.encode("utf-8", "surrogatepass")).hexdigest()[:24]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["probes"] = list(self.probes)
        return d


def make_request(model=None, text=None, backend=Request.backend, max_tokens=DEFAULT_MAX_TOKENS,
                 sink_tokens=Request.sink_tokens, items=Request.items, probes=(), importance=False,
                 generate=0) -> Request:
    """Validate the input panel's values (cheap checks only; the job checks the rest)."""
    from compute.limits import check_model_ref, check_text_size

    model = check_model_ref(model if model else DEFAULT_MODEL)
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty: type or paste a text, or pick an example")
    if "\x00" in text:
        raise InputError("the text contains NUL bytes (binary data?)")
    check_text_size(text)
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}")
    cap = csettings.get("ATTNVIS_MAX_TOKENS")
    try:
        max_tokens, sink_tokens, generate = int(max_tokens), int(sink_tokens), int(generate or 0)
    except (TypeError, ValueError):
        raise InputError("max tokens, sink count and tokens to generate must be whole numbers") from None
    if not 1 <= max_tokens <= cap:
        raise InputError(f"max tokens must be between 1 and {cap:,} (ATTNVIS_MAX_TOKENS)")
    AnalysisOptions(backend=backend, sink_tokens=sink_tokens, max_tokens=max_tokens).validate()
    if items not in ITEMS:
        raise InputError(f"items must be one of {', '.join(ITEMS)}")
    bad = set(probes or ()) - set(PROBES)
    if bad:
        raise InputError(f"unknown probe(s): {', '.join(sorted(bad))}")
    if not 0 <= generate <= 256:
        raise InputError("tokens to generate must be between 0 and 256")
    return Request(model=model, text=text, backend=backend, max_tokens=max_tokens, sink_tokens=sink_tokens,
                   items=items, probes=tuple(p for p in PROBES if p in set(probes or ())),
                   importance=bool(importance), generate=generate)


def default_request() -> Request:
    return Request(max_tokens=csettings.get("ATTNVIS_MAX_TOKENS"))


def list_models() -> list[dict]:
    from compute.models import list_models as _list
    return _list()


# ---------------------------------------------------------------- processes and models

_LOAD_LOCK = threading.RLock()
_WARM: dict[str, threading.Thread] = {}

# Imported in the web process before any job forks: a fork while another thread is half-way through
# importing a module leaves that module's import lock held forever in the child, which then hangs
# the first time it imports the module itself.
PRELOAD = ("torch", "transformers", "compute.engine", "compute.limits", "compute.summary", "compute.ondemand",
           "compute.pipeline", "compute.generate", "compute.analysis.sections", "compute.analysis.plan",
           "compute.analysis.reductions", "compute.analysis.text_roles", "compute.analysis.sinks", "compute.analysis.entropy",
           "compute.analysis.roles", "compute.analysis.graphs", "compute.analysis.basins",
           "compute.analysis.syntax", "compute.analysis.tokens", "compute.analysis.importance",
           "compute.analysis.probes", "compute.analysis.live", "compute.variants", "spacy")


def _fork_guard() -> None:
    """Forks wait while this process imports modules or loads a model (both hold _LOAD_LOCK)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_LOAD_LOCK.acquire, after_in_parent=_LOAD_LOCK.release,
                            after_in_child=_LOAD_LOCK.release)


_fork_guard()


def preload() -> None:
    import importlib
    with _LOAD_LOCK:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:            # optional parts (variants, spaCy) may be missing
                pass


def warm_up(model: str = DEFAULT_MODEL, wait: bool = False) -> None:
    """Import the compute stack and load a model in this (web) process, so the jobs forked later
    inherit both (copy-on-write). With wait=True the caller blocks until done. Load errors are left
    to the job, which reports them to the user."""
    def load():
        try:
            with _LOAD_LOCK:
                preload()
                from compute.limits import load_model_limited
                from compute.ondemand import set_torch_threads
                set_torch_threads(1)       # this process never runs a parallel region (see module doc)
                try:
                    from compute.analysis.syntax import load_spacy
                    load_spacy()           # cached: the jobs inherit the parsed pipeline
                except Exception:
                    pass
                load_model_limited(model)
        except Exception as exc:  # the analysis job will report it
            log.info("warm-up of %s failed: %s", model, exc)

    t = _WARM.get(model)
    if t is None:
        t = threading.Thread(target=load, name=f"warm-{model}", daemon=True)
        _WARM[model] = t
        t.start()
    if wait:
        t.join()


def job_setup() -> None:
    """Run first in every background job: full torch threads for the job's own forwards."""
    from compute.ondemand import set_torch_threads
    set_torch_threads(job_threads())


def _load(model: str):
    from compute.limits import load_model_limited
    return load_model_limited(model)


# ---------------------------------------------------------------- the analysis job

def _progress(progress: Optional[Progress], lo: float, hi: float) -> Progress:
    def p(frac: float, msg: str) -> None:
        if progress is not None:
            progress(lo + (hi - lo) * max(0.0, min(1.0, frac)), msg)
    return p


def options_for(req: Request) -> tuple[AnalysisOptions, AnalysisSettings]:
    """The pipeline's options for an app request (the app keeps full maps up to app_full_map_max)."""
    opts = AnalysisOptions(backend=req.backend, sink_tokens=req.sink_tokens, max_tokens=req.max_tokens,
                           full_map_max=app_full_map_max())
    sections = AnalysisSettings(items="auto" if req.items == "auto" else None, probes=tuple(req.probes),
                                importance=req.importance, ablation=False)
    return opts, sections


def run_analysis(req: Request, progress: Optional[Progress] = None, cancel=None) -> str:
    """Analyse the request through compute.pipeline and cache the result (runs in a job). Returns the
    key. Raises UserError."""
    from compute.pipeline import analyze

    key = req.key()
    # this process's memory is not enough: the shared store may have lost (evicted, corrupted) the entry
    if is_cached(key) and state.store().has(f"{key}:core"):
        return key
    p = _progress(progress, 0, 1)
    p(0.0, f"loading {req.model}")
    lm = _load(req.model)
    text, generation = req.text, None
    if req.generate:
        from compute.generate import generate_text
        from compute.limits import Deadline
        p(0.02, f"generating {req.generate} tokens")
        g = generate_text(lm, req.text, req.generate, req.max_tokens, cancel=Deadline(None, cancel))
        text, generation = g.text, g.record()
    opts, sections = options_for(req)
    res = analyze(lm, text, opts, sections, progress=_progress(progress, 0.05, 0.97), cancel=cancel)
    if req.items == "none":
        res.extras["basin"] = {"available": False, "reason": "items are off (choose 'auto' under options)"}
    if generation is not None:
        res.extras["generation"] = generation
    p(0.98, "saving")
    _store_result(key, req, res)
    p(1.0, "done")
    return key


def _store_result(key: str, req: Request, res) -> None:
    """Write the pieces, then the core (a present core means its pieces were written). A failed write
    (disk full, Redis maxmemory) deletes what was written and raises StoreWriteError: nothing partial
    stays, and the job reports it instead of saying done. Every key expires (ATTNVIS_CACHE_TIMEOUT_S)."""
    st = state.store()
    written: list[str] = []

    def put(k: str, value) -> None:
        written.append(k)
        st.set(k, value)

    maps = res.maps
    try:
        put(f"{key}:req", req.to_dict())
        if maps is not None:
            for layer in range(res.n_layers):
                put(f"{key}:maps:{layer}", np.ascontiguousarray(maps[layer]))
        res.maps = None
        res.extras["has_full_maps"] = maps is not None
        put(f"{key}:core", res)
    except BaseException:
        for k in reversed(written):
            try:
                st.delete(k)
            except Exception:
                log.warning("could not delete the partial entry %s", k)
        raise
    _remember(key, res)


# ---------------------------------------------------------------- reading results (web process)

_CORES: "OrderedDict[str, object]" = OrderedDict()
_LAYERS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_MEM_LOCK = threading.Lock()
MAX_CORES = 3
MAX_LAYERS = 4


def _remember(key: str, res) -> None:
    with _MEM_LOCK:
        _CORES[key] = res
        _CORES.move_to_end(key)
        while len(_CORES) > MAX_CORES:
            _CORES.popitem(last=False)


def _complete(key: str, res) -> bool:
    if not res.extras.get("has_full_maps"):
        return True
    st = state.store()
    return all(st.has(f"{key}:maps:{l}") for l in range(res.n_layers))


def get_result(key: str):
    """The cached AttentionResult (without full maps). Raises NotCached."""
    with _MEM_LOCK:
        if key in _CORES:
            _CORES.move_to_end(key)
            return _CORES[key]
    if not key:
        raise NotCached("no analysis selected")
    res = state.store().get(f"{key}:core")
    if res is None or not _complete(key, res):
        raise NotCached("this analysis is not in the cache (it expired or was evicted); analyse again")
    _remember(key, res)
    return res


def is_cached(key: str) -> bool:
    try:
        get_result(key)
        return True
    except NotCached:
        return False


def get_request(key: str) -> Optional[Request]:
    d = state.store().get(f"{key}:req") if key else None
    if not d:
        return None
    d = dict(d)
    d["probes"] = tuple(d.get("probes") or ())
    return Request(**{k: v for k, v in d.items() if k in Request.__dataclass_fields__})


def layer_maps(key: str, layer: int) -> Optional[np.ndarray]:
    """float16 [H, N, N] of one layer, or None for long texts (no full maps)."""
    ck = (key, layer)
    with _MEM_LOCK:
        if ck in _LAYERS:
            _LAYERS.move_to_end(ck)
            return _LAYERS[ck]
    m = state.store().get(f"{key}:maps:{layer}")
    if m is None:
        return None
    with _MEM_LOCK:
        _LAYERS[ck] = m
        while len(_LAYERS) > MAX_LAYERS:
            _LAYERS.popitem(last=False)
    return m


def head_map(key: str, layer: int, head: int) -> Optional[np.ndarray]:
    """float32 [N, N] full map of one head, or None when the text is too long for stored maps."""
    m = layer_maps(key, layer)
    return None if m is None else m[head].astype(np.float32)


# ---------------------------------------------------------------- on-demand blocks (jobs)

def zoom_span(n_tokens: int) -> int:
    """Side of a zoom window: ZOOM_SPAN tokens, or half the text when that is shorter (a zoom that
    showed the whole text would not be a zoom)."""
    return int(min(ZOOM_SPAN, max(32, n_tokens // 2)))


def zoom_key(key: str, layer: int, head: int, q0: int, k0: int, span: int) -> str:
    return f"{key}:zoom:{layer}.{head}:{q0}:{k0}:{span}"


def check_zoom(res, layer, head, q0, q1, k0, k1) -> tuple[int, ...]:
    """The zoom request a browser sent, checked on the server: whole numbers inside the text and the
    model, and a window no larger than zoom_span (ZOOM_SPAN) per side."""
    try:
        vals = tuple(int(v) for v in (layer, head, q0, q1, k0, k1))
    except (TypeError, ValueError):
        raise InputError("zoom: the window must be given as whole numbers") from None
    if any(isinstance(v, float) and not float(v).is_integer() for v in (layer, head, q0, q1, k0, k1)):
        raise InputError("zoom: the window must be given as whole numbers")
    layer, head, q0, q1, k0, k1 = vals
    n, span = res.n_tokens, zoom_span(res.n_tokens)
    if not (0 <= layer < res.n_layers and 0 <= head < res.n_heads):
        raise InputError(f"zoom: no head {layer}.{head} (the model has {res.n_layers} layers x {res.n_heads} heads)")
    if not (0 <= q0 < q1 <= n and 0 <= k0 < k1 <= n):
        raise InputError(f"zoom: the window must lie inside the text's {n} tokens")
    if q1 - q0 > span or k1 - k0 > span:
        raise InputError(f"zoom: the window may be at most {span} x {span} tokens (ZOOM_SPAN)")
    return vals


def compute_zoom(key: str, layer: int, head: int, q0: int, q1: int, k0: int, k1: int) -> str:
    """Full-resolution block of one head for a long text (runs in a job); returns its cache key."""
    from compute.ondemand import head_block, layer_qk

    res = get_result(key)
    layer, head, q0, q1, k0, k1 = check_zoom(res, layer, head, q0, q1, k0, k1)
    req = get_request(key)
    if req is None:
        raise NotCached("the request of this analysis is no longer cached; analyse again")
    zk = zoom_key(key, layer, head, q0, k0, q1 - q0)
    st = state.store()
    if st.has(zk):
        return zk
    qk = st.get(f"{key}:qk:{layer}")
    if qk is None:
        qk = layer_qk(_load(req.model), res.token_ids, layer)
        st.set(f"{key}:qk:{layer}", qk)
    st.set(zk, {"head": [layer, head], "q0": q0, "q1": q1, "k0": k0, "k1": k1,
                "z": head_block(qk, head, q0, q1, k0, k1)})
    return zk


def get_zoom(zk: str) -> Optional[dict]:
    return state.store().get(zk) if zk else None


# ---------------------------------------------------------------- variants (jobs)

def variants_available() -> Optional[str]:
    """None when compute.variants offers comparisons, else the reason."""
    try:
        import compute.variants as v
    except ImportError as exc:
        return f"compute.variants is not available ({exc})"
    if not hasattr(v, "compare_variants"):
        return "compute.variants has no compare_variants yet"
    return None


def split_specs(text: str) -> list[str]:
    """'topk:16, elu' -> ['topk:16', 'elu'] (compute.variants' grammar; InputError on bad specs)."""
    try:
        from compute.variants import split_specs as _split
    except ImportError:
        return [s.strip() for s in text.replace(";", ",").split(",") if s.strip()]
    return _split(text)


SHORT_TEXT_SPECS = ("sinks:4+window:16", "window:16", "topk:8")   # visible differences on short texts


def variant_choices() -> list[dict]:
    """[{spec, label}] for the picker: the registry's examples plus a few small-window specs."""
    try:
        from compute.variants import list_variants
        reg = [v for v in list_variants() if v["family"] != "reference"]
    except Exception:
        return [{"spec": s, "label": s} for s in SHORT_TEXT_SPECS + ("elu",)]
    out = [{"spec": s, "label": f"{s} (short texts)"} for s in SHORT_TEXT_SPECS]
    out += [{"spec": v["example"], "label": f"{v['example']} — {v['description'][:70]}"} for v in reg]
    return out


DEFAULT_VARIANTS = ("sinks:4+window:16", "elu")


@dataclass
class Comparison:
    specs: list                                      # canonical spec strings, in the user's order
    layers: Optional[list]
    result: dict = field(default_factory=dict)       # compute.variants.compare_variants (JSON-able)
    maps: dict = field(default_factory=dict)         # (spec | 'softmax', layer, head) -> [N, N] float32


cache_codec.register(Comparison)                     # cached as data (visapp.cache_codec), never pickled
MAX_SPECS = 8                                        # variants one comparison may run


def comparison_key(key: str, specs: list[str], layers: Optional[list[int]]) -> str:
    h = hashlib.sha1(json.dumps([sorted(specs), layers]).encode()).hexdigest()[:16]
    return f"{key}:cmp:{h}"


def canonical_specs(specs: list[str]) -> list[str]:
    from compute.variants import parse_specs
    out = []
    for sp in parse_specs(list(specs)):
        if sp.text not in out:
            out.append(sp.text)
    return out


def run_comparison(key: str, specs: list[str], layers: Optional[list[int]], head: tuple[int, int],
                   progress: Optional[Progress] = None) -> str:
    """Compare variants against softmax on the analysed text (runs in a job); caches the result and the
    selected head's maps; returns the cache key."""
    reason = variants_available()
    if reason:
        raise UserError(reason)
    from compute import variants
    from compute.limits import Deadline, hard_time_limit

    res = get_result(key)
    req = get_request(key)
    if req is None:
        raise NotCached("the request of this analysis is no longer cached; analyse again")
    if not specs:
        raise InputError("pick at least one variant")
    specs = canonical_specs(specs)
    if len(specs) > MAX_SPECS:
        raise InputError(f"at most {MAX_SPECS} variants per comparison, got {len(specs)}")
    l, h = check_zoom(res, head[0], head[1], 0, 1, 0, 1)[:2]
    ck = comparison_key(key, specs, layers)
    st = state.store()
    cmp = st.get(ck)
    lm = _load(req.model)
    deadline = Deadline()          # the analysis time limit (ATTNVIS_TIME_LIMIT_S), checked at every step,
    with hard_time_limit(          # and an alarm a little later for a step that does not return
            deadline.seconds * 1.5 + 5 if deadline.seconds else None):
        if cmp is None:
            out = variants.compare_variants(lm, res.text, specs, layers=layers, max_tokens=req.max_tokens,
                                            progress=_progress(progress, 0, 0.85), cancel=deadline)
            cmp = Comparison(specs=specs, layers=list(out.get("layers") or []) or layers,
                             result=variants.to_jsonable(out))
        if ("softmax", l, h) not in cmp.maps and res.n_tokens <= app_full_map_max():
            _progress(progress, 0.85, 1.0)(0.0, f"maps of head {l}.{h}")
            deadline()
            m = variants.variant_maps(lm, res.text, specs, l, h)
            cmp.maps[("softmax", l, h)] = np.asarray(m["softmax"], np.float32)
            for spec, z in m["maps"].items():
                cmp.maps[(spec, l, h)] = np.asarray(z, np.float32)
    st.set(ck, cmp)
    return ck


def get_comparison(ck: str) -> Optional[Comparison]:
    return state.store().get(ck) if ck else None


# ---------------------------------------------------------------- derived numbers (pure compute calls)

_SUMMARIES: "OrderedDict[int, dict]" = OrderedDict()


def summary(res) -> dict:
    """compute.summary per-head metrics [L, H] plus received [L, H, N] and normalised entropy [L, H, N],
    memoised per result object (the views ask for them on every head click)."""
    k = id(res)
    with _MEM_LOCK:
        if k in _SUMMARIES and _SUMMARIES[k]["_res"] is res:
            return _SUMMARIES[k]
    from compute.summary import entropy_norm, head_summary, received_mean
    s = dict(head_summary(res))
    s["received"] = received_mean(res)
    s["entropy_norm"] = entropy_norm(res)
    s["_res"] = res
    with _MEM_LOCK:
        _SUMMARIES[k] = s
        while len(_SUMMARIES) > MAX_CORES:
            _SUMMARIES.popitem(last=False)
    return s


def token_edges(attn: np.ndarray, tokens: list[str], threshold: float = 0.1, max_edges: int = 150,
                include_first: bool = False) -> list[tuple[int, int, float]]:
    """(query, key, weight) edges of one head's map above a threshold (compute.analysis.graphs)."""
    from compute.analysis.graphs import token_graph
    g = token_graph(attn, tokens, threshold=threshold, max_edges=max_edges, include_first=include_first)
    return [(e["source"], e["target"], e["weight"]) for e in g["edges"]]


def token_edges_block(z: np.ndarray, q0: int, k0: int, tokens: list[str], threshold: float = 0.1,
                      max_edges: int = 150, include_first: bool = False) -> list[tuple[int, int, float]]:
    """Edges of a zoomed block (rows q0.., keys k0..), in absolute token positions."""
    n = max(z.shape)
    sq = np.zeros((n, n), np.float32)
    sq[:z.shape[0], :z.shape[1]] = z
    if k0 == 0 and not include_first:
        sq[:, 0] = 0.0
    toks = [tokens[min(k0 + i, len(tokens) - 1)] for i in range(n)]
    edges = token_edges(sq, toks, threshold, max_edges, include_first=True)
    return [(q0 + q, k0 + k, w) for q, k, w in edges if q < z.shape[0] and k < z.shape[1]]


def sink_rate_curve(sink_metric: np.ndarray, eps_grid: np.ndarray) -> np.ndarray:
    from compute.analysis.sinks import sink_rate
    return np.array([sink_rate(sink_metric, float(e)) for e in eps_grid])


def attnrank_order(preference, important: list[int]) -> list[int]:
    from compute.analysis.basins import attnrank_order as _order
    return list(_order(np.asarray(preference, float), list(important)))
