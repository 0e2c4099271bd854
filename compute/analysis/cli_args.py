"""CLI flags of the analysis (added to `python -m compute analyze`) and their translation into
AnalysisSettings."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .settings import DEFAULT_ROLE_THRESHOLDS, PROBES, ROLES, AnalysisSettings


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis (sinks, entropy, roles, graphs, basins, probes, importance)")
    g.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                   help="add the analysis sections to report.json (default on)")
    g.add_argument("--items", metavar="auto|FILE",
                   help="basin over structured items: 'auto' (blank-line blocks, 'Document [k]' / 'Example k:' "
                        "markers) or a JSON file {\"items\": [[start, end], ...], \"query\": [start, end], "
                        "\"important\": [k, ...]} with character offsets")
    g.add_argument("--important", metavar="K,K", help="0-based indices of the items that matter (AttnRank order)")
    g.add_argument("--calibration", choices=["shipped", "self"], default="shipped",
                   help="positional preference for the suggested order: shipped prompts or this prompt")
    g.add_argument("--per-token", action="store_true", help="basin: also the mass on every token of each item")
    g.add_argument("--probes", metavar="LIST", help=f"built-in probes to run: {','.join(PROBES)}")
    g.add_argument("--importance", action="store_true",
                   help="head importance |dL/dgate| and, up to --ablation-max-tokens, the loss change when "
                        "each head is ablated (causal LMs)")
    g.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="with --importance: ablate each head (default on)")
    g.add_argument("--ablation-layers", metavar="L,L", help="ablate only these layers' heads (any length)")
    g.add_argument("--ablation-max-tokens", type=int, default=256,
                   help="ablate all layers only up to this many tokens (default 256)")
    g.add_argument("--roles", action=argparse.BooleanOptionalAction, default=True, help="head roles (default on)")
    g.add_argument("--syntax", action=argparse.BooleanOptionalAction, default=True,
                   help="spaCy dependency alignment for the syntactic role (default on; it recomputes every "
                        "attention row once, so it is skipped above --syntax-max-tokens)")
    g.add_argument("--syntax-max-tokens", type=int, default=4096, help="longest text for the syntax pass (4096)")
    g.add_argument("--role-threshold", action="append", default=[], metavar="ROLE=VALUE",
                   help="override a role threshold, e.g. sink=0.6 (repeatable); defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_ROLE_THRESHOLDS.items()))
    g.add_argument("--sink-eps", type=float, default=0.3, help="sink rate threshold on token-0 attention (0.3)")
    g.add_argument("--hidden-sink-tau", type=float, default=0.1,
                   help="hidden sink: mean received attention above this (0.1, as ACT)")
    g.add_argument("--collapse-threshold", type=float, default=0.1,
                   help="entropy collapse: mean normalised entropy below this (0.1)")
    g.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True, help="head graph (default on)")
    g.add_argument("--graph-source", choices=["pooled", "received"], default="pooled",
                   help="head distance from pooled maps or received-attention profiles")
    g.add_argument("--graph-knn", type=int, default=4, help="neighbours per head in the head graph (4)")


def _int_list(s: str, what: str) -> tuple:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {s!r}") from None


def read_items_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"items file not found: {path} (use --items auto to find items in the text)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"items file {path} is not valid JSON ({exc})") from None


def settings_from_args(args, text: Optional[str] = None) -> AnalysisSettings:
    """Flags -> settings; with the text, item spans are checked too (before any model is loaded)."""
    thr = {}
    for item in args.role_threshold:
        name, sep, val = item.partition("=")
        if not sep or name.strip() not in ROLES:
            raise InputError(f"--role-threshold expects ROLE=VALUE with ROLE one of {', '.join(ROLES)}, got {item!r}")
        try:
            thr[name.strip()] = float(val)
        except ValueError:
            raise InputError(f"--role-threshold {item!r}: {val!r} is not a number") from None
    probes = tuple(x.strip() for x in (args.probes or "").split(",") if x.strip())
    items = None
    if args.items is not None:
        items = "auto" if args.items == "auto" else read_items_file(args.items)
    important = _int_list(args.important, "--important") if args.important else ()
    if important and items is None:
        raise InputError("--important needs --items")
    s = AnalysisSettings(
        sink_eps=args.sink_eps, hidden_sink_tau=args.hidden_sink_tau, collapse_threshold=args.collapse_threshold,
        roles=args.roles, syntax=args.syntax, syntax_max_tokens=args.syntax_max_tokens, role_thresholds={**DEFAULT_ROLE_THRESHOLDS, **thr},
        probes=probes, importance=args.importance, ablation=args.ablation,
        ablation_layers=_int_list(args.ablation_layers, "--ablation-layers") if args.ablation_layers else None,
        ablation_max_tokens=args.ablation_max_tokens, items=items, important_items=important,
        calibration=args.calibration, per_token=args.per_token, graphs=args.graphs,
        graph_source=args.graph_source, graph_knn=args.graph_knn)
    s.validate()
    if text is not None and items is not None:
        from .basins import find_items, items_from_spec
        found = find_items(text) if items == "auto" else items_from_spec(items, text)
        n = len(found["items"])
        bad = [k for k in (*important, *found.get("important", ())) if k >= n]
        if bad:
            raise InputError(f"important item {bad[0]} is not an item (0..{n - 1})")
    return s
