"""Exporting one figure (bytes, tables, provenance) or a bundle of every figure of an analysis."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import plotly.graph_objects as go

from compute.errors import InputError

from . import registry as reg
from .options import DATA_FORMATS, ExportOptions
from .provenance import caption_text, provenance, reproduce_command, software_versions, text_sha256
from .render import paper_figure, paper_template_name, plain_title, render
from .tables import data_bytes


# ---------------------------------------------------------------- exporting one figure / its data

@dataclass
class Exported:
    name: str                  # 'head/map'
    fig: go.Figure             # the paper figure
    content: bytes
    tables: dict
    provenance: dict


def figure_of(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions) -> tuple[go.Figure, go.Figure]:
    """(the view's figure built with the paper template, the restyled paper figure)."""
    opts.validate()
    why = sp.unavailable(ctx)
    if why:
        raise InputError(f"{sp.name}: not available ({why})")
    raw = reg.build(sp, ctx, paper_template_name(opts.font, float(opts.size_pt)))
    return raw, paper_figure(raw, opts, sp.aspect_for(ctx, opts.width))


def figure_title(raw: go.Figure, sp: reg.FigureSpec) -> str:
    """The document title of an exported file: the screen figure's title, else the figure's label."""
    return plain_title(raw.layout.title.text) or sp.label


def export_figure(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions,
                  command: Optional[list[str]] = None) -> Exported:
    raw, fig = figure_of(ctx, sp, opts)
    content = render(fig, opts, title=figure_title(raw, sp))
    return Exported(sp.name, fig, content, sp.tables(ctx, raw), provenance(ctx, sp, opts, raw, command))


def tables_of(ctx: reg.Context, sp: reg.FigureSpec) -> dict:
    why = sp.unavailable(ctx)
    if why:
        raise InputError(f"{sp.name}: not available ({why})")
    return sp.tables(ctx, reg.build(sp, ctx))


def file_stem(ctx: reg.Context, sp: reg.FigureSpec) -> str:
    base = f"{ctx.res.model}_{sp.view}"
    if sp.view in ("head", "variants", "generate") or (sp.view, sp.part) in (("graphs", "tokens"),
                                                                              ("entropy", "profile")):
        base += f"-L{ctx.head[0]}H{ctx.head[1]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{base}_{sp.part}")


def write_bundle(ctx: reg.Context, out_dir: str | Path, opts: ExportOptions, formats: Sequence[str] = ("pdf",),
                 text_name: str = "text.txt", variants: Sequence[str] = (),
                 variant_layers: Optional[Sequence[int]] = None, progress=None) -> dict:
    """Every available figure of every view in `formats`, its data (CSV and JSON) and caption files,
    the text itself and an index (bundle.json). Returns the index."""
    from ..service import get_request

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / text_name).write_text(ctx.res.text, encoding="utf-8")
    req = get_request(ctx.key)
    index = {"model": ctx.res.model, "text_sha256": text_sha256(ctx.res.text), "text_file": text_name,
             "figures": {}, "skipped": {}, "software": software_versions()}
    todo = reg.all_specs()
    for i, sp in enumerate(todo):
        why = sp.unavailable(ctx)
        if why:
            index["skipped"][sp.name] = why
            continue
        if progress:
            progress(i / len(todo), sp.name)
        stem = file_stem(ctx, sp)
        files = []
        raw = None
        for fmt in formats:
            o = ExportOptions(**{**asdict(opts), "fmt": fmt})
            raw, fig = figure_of(ctx, sp, o)
            (out / f"{stem}.{fmt}").write_bytes(render(fig, o, title=figure_title(raw, sp)))
            files.append(f"{stem}.{fmt}")
        cmd = reproduce_command(sp.name, req, ctx.settings, ExportOptions(**{**asdict(opts), "fmt": formats[0]}),
                                text_file=text_name, out=f"{stem}.{formats[0]}", variants=variants,
                                variant_layers=variant_layers) if req is not None else None
        prov = provenance(ctx, sp, ExportOptions(**{**asdict(opts), "fmt": formats[0]}), raw, cmd)
        tables = sp.tables(ctx, raw)
        if tables:
            for fmt in DATA_FORMATS:
                content, ext = data_bytes(tables, fmt, prov if fmt == "json" else None)
                (out / f"{stem}.data.{ext}").write_bytes(content)
                files.append(f"{stem}.data.{ext}")
        (out / f"{stem}.caption.json").write_text(json.dumps(prov, indent=1, ensure_ascii=False), encoding="utf-8")
        (out / f"{stem}.caption.txt").write_text(caption_text(prov), encoding="utf-8")
        files += [f"{stem}.caption.json", f"{stem}.caption.txt"]
        index["figures"][sp.name] = files
    (out / "bundle.json").write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    return index
