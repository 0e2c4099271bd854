"""Dodrio-style dataset overview from per-text reports: pure functions, no model, no torch.

corpus_overview(per_text) takes one report.json-like dict per text (`heads`: records with `layer`,
`head`, a `role` label when roles were computed, and numeric metric fields; optional `id` and
`sink_rate`) and returns, per head over the texts:
  mean, std     of every numeric metric (population std, ddof=0; NaN/None values skipped, `n` counts
                the finite ones). Nested numeric dicts (role_scores) are flattened to "role_scores.sink".
  role_mode     the head's most frequent role label (ties: the role first seen in corpus order, so the
                result does not depend on dict ordering of a Counter)
  role_stability share of the texts with a role label on which the head has role_mode
and, per text, the distributions the overview plots:
  sink_rate     the report's sink_rate when present, else the share of heads with sink_metric > eps
                (same definition as compute/summary.sink_rate)
  entropy_mean, entropy_norm_mean   the mean over heads of the head records' values
Booleans (collapsed) count as 0/1 metrics: their mean is the share of texts where the flag holds.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import InputError

SINK_EPS = 0.3                    # summary.sink_rate's default eps
_SKIP = {"layer", "head", "role", "id"}


def head_metrics(rec: dict) -> dict[str, float]:
    """Numeric fields of one head record, nested numeric dicts flattened ('role_scores.sink')."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        if k in _SKIP:
            continue
        if isinstance(v, dict):
            for k2, v2 in v.items():
                f = _num(v2)
                if f is not None or v2 is None:
                    out[f"{k}.{k2}"] = np.nan if f is None else f
        else:
            f = _num(v)
            if f is not None or v is None:
                out[k] = np.nan if f is None else f
    return out


def _num(v) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


def _grid(per_text: Sequence[dict]) -> tuple[int, int]:
    shapes = set()
    for i, rep in enumerate(per_text):
        heads = rep.get("heads")
        if not isinstance(heads, list) or not heads:
            raise InputError(f"text {_tid(rep, i)!r} has no head records")
        L = 1 + max(int(r["layer"]) for r in heads)
        H = 1 + max(int(r["head"]) for r in heads)
        shapes.add((L, H))
    if len(shapes) != 1:
        raise InputError(f"the texts' reports have different layer x head grids: {sorted(shapes)}")
    return shapes.pop()


def _tid(rep: dict, i: int) -> str:
    return str(rep.get("id", i))


def text_sink_rate(rep: dict, eps: float = SINK_EPS) -> float:
    if rep.get("sink_rate") is not None:
        return float(rep["sink_rate"])
    vals = [r["sink_metric"] for r in rep["heads"] if r.get("sink_metric") is not None]
    return float(np.mean(np.asarray(vals) > eps)) if vals else float("nan")


def _heads_mean(rep: dict, key: str) -> float:
    vals = [float(r[key]) for r in rep["heads"] if _num(r.get(key)) is not None and math.isfinite(float(r[key]))]
    return float(np.mean(vals)) if vals else float("nan")


def corpus_overview(per_text: Sequence[dict], eps: float = SINK_EPS) -> dict:
    """See the module docstring. Arrays are nested lists [L][H] with NaN as None (strict JSON)."""
    if not per_text:
        raise InputError("the corpus overview needs at least one text")
    L, H = _grid(per_text)
    T = len(per_text)
    names: list[str] = []
    for rep in per_text:
        for rec in rep["heads"]:
            for k in head_metrics(rec):
                if k not in names:
                    names.append(k)
    vals = {k: np.full((T, L, H), np.nan) for k in names}
    roles = np.full((T, L, H), None, dtype=object)
    for t, rep in enumerate(per_text):
        for rec in rep["heads"]:
            l, h = int(rec["layer"]), int(rec["head"])
            for k, v in head_metrics(rec).items():
                vals[k][t, l, h] = v
            if rec.get("role") is not None:
                roles[t, l, h] = str(rec["role"])
    metrics = {}
    for k, a in vals.items():
        n = np.isfinite(a).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(np.isfinite(a), a, 0.0).sum(0)
            mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            var = np.where(np.isfinite(a), (a - mean) ** 2, 0.0).sum(0) / np.maximum(n, 1)
        metrics[k] = {"mean": _plain(mean), "std": _plain(np.where(n > 0, np.sqrt(var), np.nan)),
                      "n": n.tolist()}
    mode, stability, n_roles = role_stability(roles)
    ids = [_tid(rep, i) for i, rep in enumerate(per_text)]
    return {
        "n_texts": T, "n_layers": L, "n_heads": H, "ids": ids,
        "statistic": "mean and population std (ddof=0) over texts, NaN-aware",
        "metrics": metrics,
        "role_mode": mode.tolist(), "role_stability": _plain(stability), "role_n_texts": n_roles.tolist(),
        "per_text": {
            "sink_rate": [_f(text_sink_rate(rep, eps)) for rep in per_text],
            "entropy_mean": [_f(_heads_mean(rep, "entropy_mean")) for rep in per_text],
            "entropy_norm_mean": [_f(_heads_mean(rep, "entropy_norm_mean")) for rep in per_text],
        },
        "sink_eps": eps,
    }


def role_stability(roles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """roles [T, L, H] (str or None) -> (role_mode [L, H] (None where no text has a role),
    role_stability [L, H] (share of the labelled texts with role_mode; NaN where none), n labelled)."""
    T, L, H = roles.shape
    mode = np.full((L, H), None, dtype=object)
    stab = np.full((L, H), np.nan)
    n_lab = np.zeros((L, H), dtype=int)
    for l in range(L):
        for h in range(H):
            labels = [r for r in roles[:, l, h] if r is not None]
            if not labels:
                continue
            counts: dict[str, int] = {}
            for r in labels:                       # insertion order = first seen: the tie rule
                counts[r] = counts.get(r, 0) + 1
            best = max(counts, key=lambda r: counts[r])      # max keeps the first of equal counts
            mode[l, h] = best
            stab[l, h] = counts[best] / len(labels)
            n_lab[l, h] = len(labels)
    return mode, stab, n_lab


def _f(x: float):
    return float(x) if math.isfinite(x) else None


def _plain(a: np.ndarray):
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return _f(float(a))
    return [_plain(x) for x in a]


def report_from_summary(text_id: str, summary: dict, thresholds: Optional[dict] = None) -> dict:
    """A corpus_overview input from compute/corpus.py's per-text summary ({'metrics': {name: {'shape',
    'flat'}}} with role scores as 'role_<name>'): head records with every metric and a role label from
    the summary's own labels (the pipeline's roles section) or, with other thresholds, relabelled from
    the role scores it holds (compute/analysis/roles.label_heads, the report's rule)."""
    from .analysis.roles import label_heads

    arrays = {k: np.array([np.nan if v is None else v for v in x["flat"]], float).reshape(x["shape"])
              for k, x in summary["metrics"].items()}
    scores = {k[len("role_"):]: v for k, v in arrays.items() if k.startswith("role_")}
    if summary.get("labels") and thresholds is None:       # the pipeline's own labels (every role)
        labels = np.asarray(summary["labels"], dtype=object)
    else:
        labels = label_heads(scores, thresholds) if scores else None
    L, H = int(summary["n_layers"]), int(summary["n_heads"])
    heads = []
    for l in range(L):
        for h in range(H):
            rec = {"layer": l, "head": h}
            rec.update({k: float(v[l, h]) for k, v in arrays.items() if not k.startswith("role_")})
            if scores:
                rec["role"] = str(labels[l, h])
                rec["role_scores"] = {r: float(v[l, h]) for r, v in scores.items()}
            heads.append(rec)
    return {"id": str(text_id), "heads": heads}


def corpus_kinds(path) -> dict[str, Optional[str]]:
    """{text id: its optional "kind" field} of a JSON-lines corpus (the shipped corpus has one per text),
    for colouring texts by kind. Call it on a file compute.corpus.read_corpus has accepted (not imported
    here: corpus.py imports this module); lines that are not objects with an id are skipped."""
    import json
    from pathlib import Path

    out: dict[str, Optional[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        try:
            obj = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "id" in obj:
            kind = obj.get("kind")
            out[str(obj["id"])] = str(kind) if isinstance(kind, (str, int)) and not isinstance(kind, bool) else None
    return out


def metric_array(overview: dict, metric: str, stat: str = "mean") -> np.ndarray:
    """[L, H] float array of one metric statistic (None -> NaN), for figures and tests."""
    if metric not in overview["metrics"]:
        raise InputError(f"no metric {metric!r} in the corpus overview; known: {', '.join(overview['metrics'])}")
    return np.array([[np.nan if v is None else v for v in row] for row in overview["metrics"][metric][stat]],
                    dtype=float)


def metric_names(overview: dict) -> Iterable[str]:
    return list(overview["metrics"])
