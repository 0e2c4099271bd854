"""Corpus mode: analyse many texts and aggregate per-head statistics into DIR/corpus.json.

`python -m compute analyze --corpus FILE.jsonl --out DIR`: one JSON object per line, {"id": ..., "text": ...}.
Each text is reduced to a small JSON summary (per-head metrics [L][H] and the positional calibration
[L][H][B]); the aggregate is computed from those summaries only, in corpus order, so the in-process run
and the Celery fan-out (compute/tasks.py, when REDIS_URL is set) give the same numbers, and a text that
is delivered twice (its worker died) still counts once: results are keyed by text id.

Aggregates per head: mean and std (population, ddof=0) over the texts, NaN-aware (a one-token text has
no normalised entropy). Positional calibration (the AttnRank prior, "intrinsic positional attention
preference"): the keys of each text are split by relative position j/N into B equal buckets;
  position_mass[l,h,b]     share of the attention mass received by keys 1..N-1 (token 0, the sink,
                           is excluded) that lands on bucket b (sums to 1 over b);
  position_received[l,h,b] mean over the bucket's keys of the attention a key receives per query that
                           can see it (colsum / n_queries), free of the causal visibility bias.
A text too short to put a key (other than token 0) in every bucket is left out of the calibration.
Role scores (sink, previous-token, local, broad, delimiter) come from compute/analysis/roles.py.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import InputError, UserError

N_BUCKETS = 10
CORPUS_VERSION = 2          # bump when the per-text summary changes (invalidates cached task results)
# The sections each corpus text gets (roles with syntax and the text's own induction; no head graph).
CORPUS_SECTIONS = None      # None: AnalysisSettings(graphs=False)


# ---------------------------------------------------------------- input

def read_corpus(path: str | Path, max_bytes: int = 1 << 30) -> list[tuple[str, str]]:
    """[(id, text)] in file order; any bad line raises InputError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"corpus file not found: {path}")
    if p.stat().st_size > max_bytes:
        raise InputError(f"corpus file {path} is larger than {max_bytes >> 20} MiB")
    raw = p.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{path} line {line}: not UTF-8 text (bad byte at offset {exc.start})") from None
    items: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for no, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path} line {no}: expected an object {{\"id\": ..., \"text\": ...}}")
        tid = obj.get("id")
        if isinstance(tid, bool) or not isinstance(tid, (str, int)) or (isinstance(tid, str) and not tid.strip()):
            raise InputError(f"{path} line {no}: \"id\" must be a non-empty string or an integer")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path} line {no}: \"text\" must be a non-empty string")
        tid = str(tid)
        if tid in seen:
            raise InputError(f"{path} line {no}: id {tid[:80]!r} already used on line {seen[tid]}")
        seen[tid] = no
        items.append((tid, text))
    if not items:
        raise InputError(f"{path}: the corpus holds no texts")
    return items


# ---------------------------------------------------------------- one text -> summary

def bucket_of(n: int, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """Relative-position bucket of each key 0..n-1: floor(b * j / n)."""
    return (np.arange(n) * n_buckets) // max(n, 1)


def positional_calibration(colsum: np.ndarray, n_queries: np.ndarray, n_buckets: int = N_BUCKETS):
    """(position_mass, position_received), each [L, H, B]; all NaN when a bucket holds no key
    other than token 0 (texts shorter than about 2B tokens), so averages over texts stay consistent."""
    L, H, n = colsum.shape
    b = bucket_of(n, n_buckets)
    keys = np.arange(n) >= 1                               # drop the sink token 0
    mass = np.zeros((L, H, n_buckets))
    recv = np.full((L, H, n_buckets), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        received = np.where(n_queries > 0, colsum / np.maximum(n_queries, 1), 0.0)
        for k in range(n_buckets):
            sel = keys & (b == k)
            if sel.any():
                mass[..., k] = colsum[..., sel].sum(-1)
                recv[..., k] = received[..., sel].mean(-1)
        total = mass.sum(-1, keepdims=True)
        mass = np.where(total > 0, mass / np.where(total > 0, total, 1), np.nan)
    if not all((keys & (b == k)).any() for k in range(n_buckets)):
        # too short to fill every bucket: leave the text out of the calibration rather than bias it
        mass[:] = np.nan
        recv[:] = np.nan
    return mass, recv


def role_scores(res, lm=None) -> dict[str, np.ndarray]:
    """[L, H] role scores that need no probe (compute/analysis/roles.py: sink, previous-token, local,
    broad, delimiter), when that module is present; probe roles (induction, retrieval) are per model,
    not per text, so they do not belong in a corpus aggregate."""
    try:
        from .analysis.common import delimiter_mask
        from .analysis.roles import stat_role_scores
    except ImportError:
        return {}
    special = getattr(getattr(lm, "tokenizer", None), "all_special_ids", None) or []
    scores = stat_role_scores(res, delimiter_mask(res.tokens, res.token_ids, special))
    return {f"role_{name}": np.asarray(v, dtype=float) for name, v in scores.items()}


def summarize(res, n_buckets: int = N_BUCKETS, lm=None) -> dict:
    """JSON-able per-text summary of an AttentionResult (all that aggregation needs)."""
    from .summary import head_summary

    metrics = {k: np.asarray(v, dtype=float) for k, v in head_summary(res).items()}
    metrics.update(role_scores(res, lm))
    roles = res.extras.get("roles") or {}
    for name, v in (roles.get("scores") or {}).items():       # the full role set of the pipeline's sections
        metrics[f"role_{name}"] = np.asarray(v, dtype=float)
    mass, recv = positional_calibration(res.colsum.astype(np.float64), res.n_queries.astype(np.float64),
                                        n_buckets)
    return {"n_tokens": res.n_tokens, "n_layers": res.n_layers, "n_heads": res.n_heads, "model": res.model,
            "metrics": {k: _tolist(v) for k, v in metrics.items()},
            "position_mass": _tolist(mass), "position_received": _tolist(recv), "loss": res.loss,
            "labels": roles.get("labels")}


def _tolist(a) -> dict:
    """Compact strict-JSON array: {"shape": [...], "flat": [...]} with NaN as null."""
    a = np.asarray(a, dtype=float)
    return {"shape": list(a.shape), "flat": [x if math.isfinite(x) else None for x in a.ravel().tolist()]}


def _array(x: dict) -> np.ndarray:
    """Inverse of _tolist."""
    return np.array([np.nan if v is None else v for v in x["flat"]], dtype=float).reshape(x["shape"])


def analyze_one(lm, text: str, opts, time_limit_s: Optional[float] = None, n_buckets: int = N_BUCKETS) -> dict:
    """Analyse one text through the pipeline (every limit applied there) and summarise it."""
    from .analysis.settings import AnalysisSettings
    from .pipeline import analyze

    res = analyze(lm, text, opts, CORPUS_SECTIONS or AnalysisSettings(graphs=False), time_limit_s=time_limit_s)
    return summarize(res, n_buckets, lm)


# ---------------------------------------------------------------- aggregate

def aggregate(items: list[tuple[str, str]], results: dict[str, dict], meta: dict) -> dict:
    """corpus.json from per-text results {id: {"ok": bool, "summary"|"error": ...}}, in corpus order.

    Each text id counts at most once whatever the number of deliveries: results is keyed by id.
    """
    ok_ids = [tid for tid, _ in items if results.get(tid, {}).get("ok")]
    failed = {tid: results[tid].get("error", "unknown error") for tid, _ in items
              if tid in results and not results[tid].get("ok")}
    missing = [tid for tid, _ in items if tid not in results]
    out = dict(meta)
    out.update({"n_texts": len(ok_ids), "n_failed": len(failed), "ids": ok_ids, "failed": failed,
                "missing": missing, "statistic": "mean and population std (ddof=0) over texts, NaN-aware"})
    if not ok_ids:
        return out
    sums = [results[t]["summary"] for t in ok_ids]
    out["n_tokens_total"] = int(sum(s["n_tokens"] for s in sums))
    out["n_layers"], out["n_heads"] = sums[0]["n_layers"], sums[0]["n_heads"]
    losses = [s["loss"] for s in sums if s.get("loss") is not None]
    out["mean_loss"] = float(np.mean(losses)) if losses else None

    heads = {}
    for metric in sums[0]["metrics"]:
        heads[metric] = _mean_std(np.stack([_array(s["metrics"][metric]) for s in sums if metric in s["metrics"]]))
    out["heads"] = heads
    labelled = [s["labels"] for s in sums if s.get("labels")]
    if labelled:
        from .corpus_stats import role_stability
        mode, share, _ = role_stability(np.asarray(labelled, dtype=object))
        out["role_mode"], out["role_stability"] = mode.tolist(), share.tolist()
        out["role_stability_texts"] = len(labelled)
        out["per_head"] = [{"id": f"{l}.{h}", "layer": l, "head": h, "role_mode": out["role_mode"][l][h],
                            "role_stability": out["role_stability"][l][h]}
                           for l in range(mode.shape[0]) for h in range(mode.shape[1])]
    cal = {}
    for key in ("position_mass", "position_received"):
        stack = np.stack([_array(s[key]) for s in sums])                  # [texts, L, H, B]
        cal[key] = _mean_std(stack)
        cal[key + "_all_heads"] = _plain(_quiet(np.nanmean, stack.reshape(-1, stack.shape[-1]), axis=0))
    cal["n_buckets"] = int(_array(sums[0]["position_mass"]).shape[-1])
    cal["bucket_edges"] = [k / cal["n_buckets"] for k in range(cal["n_buckets"] + 1)]
    out["positional_calibration"] = cal
    return out


def _quiet(fn, *args, **kw):
    """numpy nan-reductions warn on all-NaN slices (a bucket no text filled): NaN is the answer."""
    import warnings
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def _mean_std(stack: np.ndarray) -> dict:
    """Over axis 0 (texts): NaN-aware mean, population std and the count of finite values."""
    return {"mean": _plain(_quiet(np.nanmean, stack, axis=0)), "std": _plain(_quiet(np.nanstd, stack, axis=0)),
            "n": np.isfinite(stack).sum(0).tolist()}


def _plain(a: np.ndarray):
    """Nested lists, NaN -> None."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return None if not math.isfinite(float(a)) else float(a)
    return [_plain(x) for x in a]


# ---------------------------------------------------------------- runs

def run_key(items: list[tuple[str, str]], model: str, opts_dict: dict, n_buckets: int) -> str:
    """Content hash of a run: the same corpus, model and options reuse finished texts' results."""
    h = hashlib.sha1()
    h.update(json.dumps([CORPUS_VERSION, model, opts_dict, n_buckets], sort_keys=True).encode())
    for tid, text in items:
        h.update(hashlib.sha1(tid.encode("utf-8", "surrogatepass")).digest())
        h.update(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


def run_in_process(items, lm, opts, time_limit_s=None, n_buckets: int = N_BUCKETS,
                   on_done: Optional[Callable[[str, dict], None]] = None) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for tid, text in items:
        try:
            results[tid] = {"ok": True, "summary": analyze_one(lm, text, opts, time_limit_s, n_buckets)}
        except UserError as exc:
            results[tid] = {"ok": False, "error": str(exc)}
        # round-trip through JSON so both paths aggregate identical numbers
        results[tid] = json.loads(json.dumps(results[tid]))
        if on_done:
            on_done(tid, results[tid])
    return results
