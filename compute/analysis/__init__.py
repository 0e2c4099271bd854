"""Attention analysis on top of the engine's statistics: sinks, entropy, head roles (with probes and
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
Everything is computed from the engine's statistics, plus at most one extra forward pass of the
text for the exact reductions the statistics do not hold (syntax rows, basin query rows), plus the
probes' own short inputs; nothing builds n x n for all heads at once.
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
from .settings import DEFAULT_ROLE_THRESHOLDS, PROBES, ROLES, AnalysisSettings

__all__ = ["run_analysis", "attach", "AnalysisSettings", "DEFAULT_ROLE_THRESHOLDS", "ROLES", "PROBES"]

Progress = Callable[[float, str], None]


def run_analysis(lm, res: AttentionResult, settings: Optional[AnalysisSettings] = None,
                 progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> dict:
    """All analysis sections for one analysed text (see the module docstring)."""
    from . import basins, entropy, graphs, importance, probes, roles, sinks, syntax
    from .live import forward_reduce
    from .tokens import token_char_spans

    s = settings or AnalysisSettings()
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

    # One live forward for the exact reductions the statistics do not hold.
    t = time.perf_counter()
    reducers, related, syntax_info, layout, important, basin_red = [], None, None, None, [], None
    char_spans = None
    if (s.roles and s.syntax) or s.items is not None:
        try:
            char_spans = token_char_spans(lm, res.text, res.token_ids)
        except InputError as exc:
            if s.items is not None:
                raise
            syntax_info = {"available": False, "reason": str(exc)}
    if s.roles and s.syntax and res.n_tokens > s.syntax_max_tokens:
        syntax_info = {"available": False, "reason": f"the text is {res.n_tokens} tokens; syntactic alignment "
                       f"recomputes every attention row and runs up to {s.syntax_max_tokens} (syntax_max_tokens)"}
    elif s.roles and s.syntax and char_spans is not None:
        related, info = syntax.prepare(lm, res, char_spans)
        if related is None:
            syntax_info = {"available": False, **info}
        else:
            syntax_info = {"available": True, **info}
            syn_red = syntax.SyntaxReducer(related, L, H, s.mem_budget_mb)
            reducers.append(syn_red)
    elif s.roles and not s.syntax:
        syntax_info = {"available": False, "reason": "switched off"}
    if s.items is not None:
        layout, important = basins.resolve_layout(lm, res, s.items)
        important = sorted(set(important) | set(s.important_items))
        if any(k >= layout.n_items for k in important):
            raise InputError(f"important item {max(important)} is not an item (0..{layout.n_items - 1})")
        basin_red = basins.BasinReducer(*layout.query, L, H, res.n_tokens, s.mem_budget_mb)
        reducers.append(basin_red)
    if reducers:
        step(0.05, "exact reductions (one forward)")
        forward_reduce(lm, res.token_ids, reducers,
                       progress=lambda l: step(0.05 + 0.25 * (l + 1) / L, f"reductions layer {l + 1}/{L}"),
                       cancel=cancel)
    timings["live_forward_s"] = time.perf_counter() - t

    if layout is not None:
        t = time.perf_counter()
        step(0.3, "basin")
        out["basin"] = basins.basin_section(lm, res, layout, basin_red.rc, important, s.calibration,
                                            s.per_token, s.mem_budget_mb)
        timings["basin_s"] = time.perf_counter() - t

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
            pos = syntax.positional_expectation(syn_red.offset_sum, related, res.causal)
            sy = syntax.syntactic_scores(syn_red.mass, pos, related, res.top1_idx, res.n_visible)
            scores["syntactic"] = sy["syntactic"]
            for k in ("syntactic_mass", "syntactic_positional", "syntactic_top1"):
                extra_fields[k] = sy[k]
            syntax_info.update({"baseline": sy["baseline"], "n_queries": sy["n_queries"]})
        else:
            unavailable["syntactic"] = (syntax_info or {}).get("reason", "not computed")
        for name in ("induction", "retrieval"):
            if name in probe_out:
                scores[name] = probe_out[name]["score"]
            else:
                unavailable[name] = f"probe not run (--probes {name})"
        if "induction" in probe_out:
            extra_fields["induction_control"] = probe_out["induction"]["control"]
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


def attach(res: AttentionResult, sections: dict) -> AttentionResult:
    """Put the sections into res.extras (build_report merges them into report.json)."""
    res.extras.update(sections)
    return res
