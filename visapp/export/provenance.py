"""Provenance: software versions, the CLI command that re-renders a figure, and the caption files."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import plotly.graph_objects as go

from compute.errors import UserError

from . import registry as reg
from .options import ExportOptions
from .render import browser_path


# ---------------------------------------------------------------- provenance

@lru_cache(maxsize=1)
def _static_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "numpy", "plotly", "kaleido", "choreographer", "dash"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        out["attnvis_commit"] = (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        out["attnvis_commit"] = None
    try:
        v = subprocess.run([browser_path(), "--version"], capture_output=True, text=True, timeout=20).stdout
        out["chromium"] = (re.findall(r"[Cc]hrom\w*\s+([\d.]+)", v) or [v.strip()[-40:] or None])[-1]
    except (OSError, subprocess.SubprocessError, UserError):
        out["chromium"] = None
    return out


def software_versions() -> dict:
    return dict(_static_versions())


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def reproduce_command(figure: str, req, settings: reg.ViewSettings, opts: ExportOptions, *,
                      text_file: str = "text.txt", out: Optional[str] = None, variants: Sequence[str] = (),
                      variant_layers: Optional[Sequence[int]] = None, source: Optional[str] = None) -> list[str]:
    """The `python -m visapp.export` argument list that re-renders this figure (flags of visapp.export.cli);
    `source`: the saved analysis folder it was exported from (--from), instead of model and text."""
    d = reg.ViewSettings()
    view, _, part = figure.partition("/")
    name = f"head:{settings.head[0]}.{settings.head[1]}" if view == "head" else view
    args = ["python", "-m", "visapp.export"]
    args += ["--from", source] if source else ["--model", req.model, "--text-file", text_file]
    args += ["--figure", name]
    if part and part != reg.spec(view).part:
        args += ["--part", part]
    if view != "head" and settings.head != d.head:
        args += ["--head", f"{settings.head[0]}.{settings.head[1]}"]
    args += ["--format", opts.fmt, "--width", opts.width, "--font", opts.font, "--size", f"{float(opts.size_pt):g}"]
    if opts.fmt == "png":
        args += ["--dpi", str(int(opts.dpi))]
    if opts.height_in:
        args += ["--height", f"{float(opts.height_in):g}"]
    if opts.title:
        args.append("--title")
    if opts.highlight:
        args.append("--highlight")
    for flag, attr in (("--metric", "metric"), ("--size-by", "size_by"), ("--colours", "colours"),
                       ("--scale", "scale"), ("--pool", "pool"), ("--eps", "eps"),
                       ("--threshold", "head_threshold"), ("--graph-threshold", "graph_threshold")):
        v = getattr(settings, attr)
        if v != getattr(d, attr):
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    if settings.important:
        args += ["--important", ",".join(str(i) for i in settings.important)]
    if req is not None and not source:
        from ..service import Request
        r0 = Request()
        for flag, attr in (("--backend", "backend"), ("--max-tokens", "max_tokens"),
                           ("--sink-tokens", "sink_tokens"), ("--items", "items"), ("--generate", "generate")):
            v = getattr(req, attr)
            if v != getattr(r0, attr):
                args += [flag, str(v)]
        if req.probes:
            args += ["--probes", ",".join(req.probes)]
        if req.importance:
            args.append("--importance")
    if variants:
        args += ["--variants", ",".join(variants)]
    if variant_layers:
        args += ["--variant-layers", ",".join(str(l) for l in variant_layers)]
    if out:
        args += ["--out", out]
    return args


def provenance(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions, fig: Optional[go.Figure] = None,
               command: Optional[list[str]] = None) -> dict:
    """Everything needed to reproduce one figure: model, text hash, analysis and view settings, export
    options, software versions, and the CLI command."""
    from ..service import get_request
    res = ctx.res
    req = get_request(ctx.key)
    cmp = ctx.comparison
    prov = {
        "figure": sp.name, "label": sp.label, "caption": sp.caption(ctx),
        "screen_title": (fig.layout.title.text if fig is not None else None) or None,
        "model": res.model,
        "model_info": {"kind": res.model_kind, "causal": bool(res.causal), "n_layers": res.n_layers,
                       "n_heads": res.n_heads, "n_kv_heads": res.n_kv_heads},
        "text_sha256": text_sha256(res.text), "n_tokens": res.n_tokens, "n_chars": len(res.text),
        "analysis": {"key": ctx.key, "backend": res.backend, "options": _jsonable(res.options),
                     "request": {k: v for k, v in (req.to_dict() if req else {}).items() if k != "text"}},
        "view": ctx.settings.public(),
        "variants": ({"specs": list(cmp.specs), "layers": cmp.layers} if cmp is not None else None),
        "export": {**asdict(opts), "width_in": opts.width_in},
        "software": software_versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if command is None and req is not None:
        command = reproduce_command(sp.name, req, ctx.settings, opts,
                                    variants=list(cmp.specs) if cmp is not None else (),
                                    variant_layers=cmp.layers if cmp is not None else None)
    prov["reproduce"] = " ".join(_shell_quote(a) for a in command) if command else None
    return prov


def _shell_quote(a: str) -> str:
    import shlex
    return shlex.quote(str(a))


def _jsonable(o):
    return json.loads(json.dumps(o, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))


def caption_text(prov: dict) -> str:
    """A human-readable caption file (the JSON sidecar holds the same facts)."""
    sw = prov["software"]
    ex = prov["export"]
    lines = [
        f"Figure: {prov['figure']} ({prov['label']})",
        f"Caption: {prov['caption']}",
        f"Model: {prov['model']} ({prov['model_info']['n_layers']} layers x {prov['model_info']['n_heads']} heads, "
        f"{prov['model_info']['kind']})",
        f"Text: sha256 {prov['text_sha256']}, {prov['n_tokens']} tokens, {prov['n_chars']} characters",
        f"Analysis: {json.dumps(prov['analysis']['request'], sort_keys=True)} (backend {prov['analysis']['backend']}, "
        f"key {prov['analysis']['key']})",
        f"View settings: {json.dumps(prov['view'], sort_keys=True)}",
    ]
    if prov.get("variants"):
        lines.append(f"Variants: {json.dumps(prov['variants'])}")
    lines += [
        f"Export: {ex['fmt']}, {ex['width']} column ({ex['width_in']} in), {ex['font']} {ex['size_pt']:g} pt"
        + (f", {ex['dpi']} dpi" if ex["fmt"] == "png" else ""),
        "Software: " + ", ".join(f"{k} {v}" for k, v in sw.items() if v),
        f"Reproduce: {prov['reproduce']}",
    ]
    return "\n".join(lines) + "\n"
