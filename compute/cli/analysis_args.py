"""CLI flags of the analysis sections (added to `python -m compute analyze`): the opt() fields of
AnalysisSettings, plus the flags that need parsing (items, probes, thresholds), into AnalysisSettings."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..analysis.settings import DEFAULT_ROLE_THRESHOLDS, PROBES, ROLES, AnalysisSettings
from ..errors import InputError
from ..options import add_flags, from_args


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis (sinks, entropy, roles, graphs, basins, probes, importance)")
    g.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                   help="add the analysis sections to report.json (default on)")
    add_flags(g, AnalysisSettings)
    g.add_argument("--items", metavar="auto|FILE",
                   help="basin over structured items: 'auto' (blank-line blocks, 'Document [k]' / 'Example k:' "
                        "markers) or a JSON file {\"items\": [[start, end], ...], \"query\": [start, end], "
                        "\"important\": [k, ...]} with character offsets")
    g.add_argument("--important", metavar="K,K", help="0-based indices of the items that matter (AttnRank order)")
    g.add_argument("--probes", metavar="LIST", help=f"built-in probes to run: {','.join(PROBES)}")
    g.add_argument("--ablation-layers", metavar="L,L", help="ablate only these layers' heads (any length)")
    g.add_argument("--role-threshold", action="append", default=[], metavar="ROLE=VALUE",
                   help="override a role threshold, e.g. sink=0.6 (repeatable); defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_ROLE_THRESHOLDS.items()))


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
    s = from_args(AnalysisSettings, args, role_thresholds={**DEFAULT_ROLE_THRESHOLDS, **thr}, probes=probes,
                  ablation_layers=_int_list(args.ablation_layers, "--ablation-layers") if args.ablation_layers else None,
                  items=items, important_items=important)
    s.validate()
    if text is not None and items is not None:
        from ..analysis.basins import find_items, items_from_spec
        found = find_items(text) if items == "auto" else items_from_spec(items, text)
        n = len(found["items"])
        bad = [k for k in (*important, *found.get("important", ())) if k >= n]
        if bad:
            raise InputError(f"important item {bad[0]} is not an item (0..{n - 1})")
    return s
