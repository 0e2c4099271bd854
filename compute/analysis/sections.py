"""The analysis sections on top of the engine's statistics: sinks, entropy, head roles (with probes and
syntax), head importance, head graphs and basins over structured items.

    sections = run_analysis(lm, res, AnalysisSettings(...))   # dict of JSON-able sections
    attach(res, sections)                                      # -> res.extras, merged by build_report

Sections (each documented where it is built):
  sinks        sinks.sinks_section          entropy     entropy.entropy_section
  roles        roles.roles_section          probes      {'induction': .., 'retrieval': ..}
  syntax       {available, reason | baseline, n_queries, ...}
  importance   importance.head_importance   graphs      {'heads': graphs.head_graph}
  basin        basins.basin_section (only with items)
  head_fields  {'L.H': {role, role_scores {role: score}, collapsed, induction_control?, importance?,
                        ablation_delta?, community?}} -> added to every head record of report.json
  analysis     {settings, timings {stage: seconds}}
Everything is computed from the engine's statistics and the exact reductions planned before its single
forward (plan.py, reductions.py: syntax pairs and offsets, basin region, repeats in the text), plus the
probes' own short inputs and, when asked, importance's own differentiable passes; nothing builds
n x n for all heads at once.
  text_patterns {induction [L][H], induction_queries, duplicate_token [L][H], ...}: text_roles.py
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable, Optional

import numpy as np

from ..capture import check_cancel
from ..errors import InputError
from ..result import AttentionResult
from .common import delimiter_mask, head_id, plain
from .plan import Plan
from .settings import ROLES, AnalysisSettings

Progress = Callable[[float, str], None]


def run_analysis(lm, res: AttentionResult, settings: AnalysisSettings, plan: Plan,
                 progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> dict:
    """All analysis sections for one analysed text, from the engine's statistics and the reductions
    the plan had filled during the same forward (see the module docstring). compute.pipeline is the
    caller: it plans, runs the one forward, then calls this."""
    from . import basins, entropy, graphs, importance, probes, roles, sinks, syntax

    s = settings
    s.validate()
    if lm.info.name != res.model or lm.info.n_layers != res.n_layers or lm.info.n_heads != res.n_heads:
        raise InputError(f"the result is from {res.model}, not from the loaded {lm.info.name}")
    L, H = res.n_layers, res.n_heads
    timings: dict[str, float] = {}
    out: dict = {}

    def step(frac: float, msg: str) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(frac, msg)

    t = time.perf_counter()
    step(0.0, "sinks and entropy")
    out["sinks"] = sinks.sinks_section(res, s.sink_eps, s.hidden_sink_tau, s.hidden_min_query_frac,
                                       s.hidden_uniform_ratio)
    out["entropy"] = entropy.entropy_section(res, s.collapse_threshold)
    timings["sinks_entropy_s"] = time.perf_counter() - t
    syntax_info, related = plan.syntax_info, plan.related
    if plan.dependency is not None:
        out["dependency"] = plan.dependency

    if plan.layout is not None:
        t = time.perf_counter()
        step(0.3, "basin")
        out["basin"] = basins.basin_section(lm, res, plan.layout, plan.basin.rc, plan.important, s.calibration,
                                            s.per_token, s.mem_budget_mb)
        timings["basin_s"] = time.perf_counter() - t
    elif s.items is not None:
        out["basin"] = {"available": False, "reason": plan.basin_reason}

    # Probes (their own short inputs).
    probe_out = {}
    if "induction" in s.probes:
        t = time.perf_counter()
        step(0.35, "induction probe")
        probe_out["induction"] = probes.cached(probes.induction_probe, lm, length=s.induction_length,
                                               batch=s.induction_batch, seed=s.probe_seed,
                                               mem_budget_mb=s.mem_budget_mb, cancel=cancel)
        timings["induction_probe_s"] = time.perf_counter() - t
    if "retrieval" in s.probes:
        t = time.perf_counter()
        step(0.45, "retrieval probe")
        probe_out["retrieval"] = probes.cached(probes.retrieval_probe, lm, trials=s.retrieval_trials,
                                               seed=s.probe_seed, require_correct=s.retrieval_require_correct,
                                               cancel=cancel)
        timings["retrieval_probe_s"] = time.perf_counter() - t
    if probe_out:
        out["probes"] = plain(probe_out)

    head_fields: dict[str, dict] = {head_id(l, h): {} for l in range(L) for h in range(H)}
    collapsed = np.asarray(out["entropy"]["collapsed"], bool)
    for l in range(L):
        for h in range(H):
            head_fields[head_id(l, h)]["collapsed"] = bool(collapsed[l, h])

    if s.roles:
        t = time.perf_counter()
        step(0.55, "roles")
        dmask = delimiter_mask(res.tokens, res.token_ids, lm.tokenizer.all_special_ids)
        scores = roles.stat_role_scores(res, dmask)
        unavailable = {}
        extra_fields = {}
        if related is not None:
            pos = syntax.positional_expectation(plan.syntax_offsets.full(res.n_tokens), related, res.causal)
            sy = syntax.syntactic_scores(plan.syntax_mass.mass, pos, related, res.top1_idx, res.n_visible)
            scores["syntactic"] = sy["syntactic"]
            for k in ("syntactic_mass", "syntactic_positional", "syntactic_top1"):
                extra_fields[k] = sy[k]
            syntax_info.update({"baseline": sy["baseline"], "n_queries": sy["n_queries"]})
        else:
            unavailable["syntactic"] = (syntax_info or {}).get("reason", "not computed")
        text_ind = _text_patterns(plan, s, out)
        if text_ind is not None:
            extra_fields["induction_text"] = text_ind
        for name in ("induction", "retrieval"):
            if name in probe_out:
                scores[name] = probe_out[name]["score"]
            elif not (name == "induction" and text_ind is not None):
                unavailable[name] = (f"the {name} probe was not run (--probes {name})"
                                     + (f"; {out['text_patterns']['induction_reason']}" if name == "induction"
                                        and "text_patterns" in out else ""))
        if "induction" in probe_out:
            extra_fields["induction_control"] = probe_out["induction"]["control"]
            extra_fields["induction_probe"] = probe_out["induction"]["score"]
        if text_ind is not None:              # the user's own text first; the probe's score stays beside it
            scores["induction"] = text_ind
        if plan.duplicate is not None and "text_patterns" in out:
            extra_fields["duplicate_token"] = np.asarray(out["text_patterns"]["duplicate_token"])
        thr = s.thresholds()
        labels = roles.label_heads(scores, thr)
        out["roles"] = roles.roles_section(scores, labels, thr, unavailable)
        out["roles"]["delimiter_tokens"] = int(dmask.sum())
        for l in range(L):
            for h in range(H):
                f = head_fields[head_id(l, h)]
                f["role"] = str(labels[l, h])
                f["role_scores"] = {r: float(scores[r][l, h]) for r in ROLES if r in scores}
                for k, v in extra_fields.items():
                    f[k] = float(v[l, h])
        timings["roles_s"] = time.perf_counter() - t
    if syntax_info is not None:
        out["syntax"] = plain(syntax_info)

    if s.importance:
        t = time.perf_counter()
        step(0.65, "head importance")
        imp = importance.head_importance(
            lm, res.token_ids, ablation=s.ablation, ablation_layers=None if s.ablation_layers is None else list(s.ablation_layers),
            ablation_max_tokens=s.ablation_max_tokens, importance_max_tokens=s.importance_max_tokens,
            progress=lambda f, m: step(0.65 + 0.25 * f, m), cancel=cancel)
        out["importance"] = plain(imp)
        if imp["available"]:
            for l in range(L):
                for h in range(H):
                    f = head_fields[head_id(l, h)]
                    f["importance"] = float(imp["importance"][l, h])
                    f["importance_norm"] = float(imp["importance_norm"][l, h])
                    if imp["ablation_delta"] is not None and np.isfinite(imp["ablation_delta"][l, h]):
                        f["ablation_delta"] = float(imp["ablation_delta"][l, h])
        timings["importance_s"] = time.perf_counter() - t

    if s.graphs:
        t = time.perf_counter()
        step(0.92, "graphs")
        hg = graphs.head_graph(res, s.graph_source, s.graph_cells, s.graph_knn, s.graph_seed)
        out["graphs"] = {"heads": hg}
        for node in hg["nodes"]:
            head_fields[node["id"]]["community"] = node["community"]
        timings["graphs_s"] = time.perf_counter() - t

    out["head_fields"] = head_fields
    settings_d = asdict(s)
    settings_d["items"] = s.items if isinstance(s.items, (str, type(None))) else "spans"
    out["analysis"] = plain({"settings": settings_d, "timings": timings})
    step(1.0, "analysis done")
    return out


def _text_patterns(plan: Plan, s: AnalysisSettings, out: dict) -> Optional[np.ndarray]:
    """Fill out['text_patterns'] from the plan's induction/duplicate pairs; return the text's induction
    score [L, H] when enough queries sit in repeated spans, else None."""
    from .text_roles import pair_score
    if plan.induction is None:
        return None
    ind, n_ind = pair_score(plan.induction.mass, plan.induction_rows)
    dup, n_dup = pair_score(plan.duplicate.mass, plan.duplicate_rows)
    enough = n_ind >= s.text_induction_min_queries
    out["text_patterns"] = plain({
        "definitions": {"induction": "mean over queries ending a repeated bigram of the attention on the "
                                     "tokens after the bigram's earlier occurrences",
                        "duplicate_token": "mean over repeated tokens of the attention on their earlier occurrences"},
        "induction": ind if n_ind else None, "induction_queries": n_ind,
        "induction_reason": None if enough else (f"the text has {n_ind} queries in repeated spans; its own "
                                                 f"induction score needs {s.text_induction_min_queries}"),
        "duplicate_token": dup, "duplicate_queries": n_dup})
    return ind if enough else None


def attach(res: AttentionResult, sections: dict) -> AttentionResult:
    """Put the sections into res.extras (build_report merges them into report.json)."""
    res.extras.update(sections)
    return res
