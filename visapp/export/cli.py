"""`python -m visapp.export`: render the app's figures headless, for papers.

    python -m visapp.export --model smollm2-135m --text-file t.txt --figure head:3.4 --format pdf --out f.pdf
    python -m visapp.export --model smollm2-135m --text-file t.txt --figure sinks --part map --format png \
        --dpi 600 --width double --font sans --out sinks.png --data sinks.csv --caption sinks.caption.txt
    python -m visapp.export --model smollm2-135m --text-file t.txt --bundle figs/ --format pdf,svg
    python -m visapp.export --from out/ --figure sinks --format pdf --out sinks.pdf   # no model runs

The analysis is the app's own (visapp.service, same request and cache key as the app with the same
inputs, cached in ATTNVIS_CACHE_DIR), or a saved `python -m compute analyze --out DIR` (--from DIR:
report.json + stats.npz, loaded without the model), and the figure is the view's own figure
(visapp.export.registry). Prints the written paths; on bad input prints `error: ...` and exits 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from compute.errors import InputError, UserError
from compute.options import from_args

from .. import service
from . import registry as reg

FIGURE_HELP = ("overview | head:L.H | sinks | basin | entropy | graph | variants | generate; a view's other "
               "figures with --part (head: map entropy received tokens deps; sinks: layers rate map; entropy: "
               "map profile; graph: heads tokens; variants: maps diff bars)")


def parser() -> argparse.ArgumentParser:
    from compute.options import add_flags

    from ..service import BACKENDS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL, ITEMS, Request
    from ..view_settings import ViewSettings
    from .options import DPI_RANGE, FONTS, WIDTHS

    p = argparse.ArgumentParser(prog="python -m visapp.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name, model folder or .gguf (default %(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-file", help="UTF-8 text to analyse ('-' reads stdin)")
    src.add_argument("--from", dest="from_dir", metavar="DIR",
                     help="a saved analysis (`python -m compute analyze --out DIR`: report.json + stats.npz); "
                          "runs no model, so --model and the analysis options do not apply")
    p.add_argument("--figure", default="overview", help=FIGURE_HELP)
    p.add_argument("--part", default=None, help="which figure of the view (default: its first)")
    p.add_argument("--format", default=None,
                   help="svg | pdf | png (default: from --out's suffix, else pdf); with --bundle a comma list")
    p.add_argument("--width", default="single", choices=WIDTHS, help="single (3.3 in) or double (6.9 in) column")
    p.add_argument("--dpi", type=int, default=300, help=f"PNG resolution, {DPI_RANGE[0]}-{DPI_RANGE[1]} (default 300)")
    p.add_argument("--font", default="serif", choices=FONTS)
    p.add_argument("--size", type=float, default=8.0, help="font size in pt, 7-10 (default 8)")
    p.add_argument("--height", type=float, default=None, help="height in inches (default: the figure's aspect)")
    p.add_argument("--title", action="store_true", help="keep the figure's title (default: caption only)")
    p.add_argument("--highlight", action="store_true", help="keep the selected-head marks")
    p.add_argument("--out", default=None, help="figure file to write")
    p.add_argument("--data", default=None, help="also write the figure's numbers (.csv, .json, or .zip of CSVs)")
    p.add_argument("--caption", default=None, help="also write the caption/provenance (.json or text)")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="write every figure, its data (CSV and JSON), caption files and the text into DIR")
    g = p.add_argument_group("view settings (the app's controls)")
    g.add_argument("--head", default=None, help="selected head L.H for the views that show one (default 0.0)")
    add_flags(g, ViewSettings)
    g.add_argument("--important", default="", help="basin items marked important, e.g. 1,3")
    a = p.add_argument_group("analysis (the app's input panel)")
    a.add_argument("--backend", default=Request.backend, choices=BACKENDS)
    a.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help="refuse longer texts (default %(default)s, as in the app)")
    a.add_argument("--sink-tokens", type=int, default=Request.sink_tokens)
    a.add_argument("--items", default=Request.items, choices=ITEMS)
    a.add_argument("--probes", default="", help="comma list: induction, retrieval")
    a.add_argument("--importance", action="store_true", help="head importance (gradients)")
    a.add_argument("--generate", type=int, default=0, help="generate N tokens first, then analyse both")
    v = p.add_argument_group("variants")
    v.add_argument("--variants", default="", help="variant specs to compare, e.g. 'window:64,topk:16' "
                                                   "(default for --figure variants: the app's first two)")
    v.add_argument("--variant-layers", default="", help="layers the variants are swapped into (default all)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _head(text: str) -> tuple[int, int]:
    try:
        l, h = (int(x) for x in text.strip().split("."))
    except ValueError:
        raise InputError(f"bad head {text!r}: write L.H, e.g. 3.4") from None
    return l, h


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise InputError(f"{what} must be a comma list of whole numbers") from None


def _formats(args, bundle: bool) -> list[str]:
    from .options import FORMATS
    if args.format:
        fmts = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    elif args.out and Path(args.out).suffix.lower().lstrip(".") in FORMATS:
        fmts = [Path(args.out).suffix.lower().lstrip(".")]
    else:
        fmts = ["pdf"]
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise InputError(f"format must be one of {', '.join(FORMATS)} (got {bad[0]!r})")
    if len(fmts) > 1 and not bundle:
        raise InputError("one --format per figure (comma lists are for --bundle)")
    return fmts


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {path} does not exist")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def _writable(path: Optional[str], what: str) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise InputError(f"{what}: folder {Path(path).parent} does not exist")


class SavedAnalysis:
    """The service as the registry sees it, for a result loaded from a saved CLI analysis: its own
    result, summary and stored full maps instead of the app's cache (no model, no cache writes)."""

    def __init__(self, res, key: str):
        self.res, self.key = res, key

    def get_result(self, key: str):
        return self.res

    def head_map(self, key: str, layer: int, head: int):
        m = self.res.maps
        return None if m is None else np.asarray(m[layer, head], np.float32)

    def __getattr__(self, name):          # summary, token_edges_block, sink_rate_curve, ... from the service
        return getattr(service, name)


def load_saved(folder: str) -> SavedAnalysis:
    """A saved `compute analyze` folder as a SavedAnalysis; one-line errors for a wrong folder."""
    from compute.result import AttentionResult
    d = Path(folder)
    missing = [f for f in ("report.json", "stats.npz") if not (d / f).is_file()]
    if missing:
        raise InputError(f"--from {folder}: no {' or '.join(missing)} there (write one with "
                         "`python -m compute analyze --out DIR`)")
    try:
        res = AttentionResult.load(d)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"--from {folder}: not a readable analysis ({exc.__class__.__name__}: {exc})") from None
    return SavedAnalysis(res, "saved-" + hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:16])


def run(args) -> int:
    from .. import export as ex

    bundle = args.bundle is not None
    fmts = _formats(args, bundle)
    opts = ex.ExportOptions(fmt=fmts[0], width=args.width, dpi=args.dpi, font=args.font, size_pt=args.size,
                            height_in=args.height, title=args.title, highlight=args.highlight).validate()
    view, part, fig_head = reg.parse_figure(args.figure)
    sp = reg.spec(view, part or args.part)
    head = fig_head or (_head(args.head) if args.head else (0, 0))
    settings = from_args(reg.ViewSettings, args, head=head, important=_ints(args.important, "--important")).validate()
    if not bundle:
        if not args.out:
            raise InputError("give --out FILE (or --bundle DIR)")
        suffix = Path(args.out).suffix.lower().lstrip(".")
        if suffix in ex.FORMATS and suffix != opts.fmt:
            raise InputError(f"--out {args.out} says {suffix} but --format is {opts.fmt}")
        if args.data and Path(args.data).suffix.lower() not in (".csv", ".json", ".zip"):
            raise InputError("--data must end in .csv, .json or .zip")
        _writable(args.out, "--out")
        _writable(args.data, "--data")
        _writable(args.caption, "--caption")
    if args.from_dir:
        return _run_saved(args, ex, opts, fmts, view, sp, head, settings, bundle)
    text = _read_text(args.text_file)
    probes = tuple(x.strip() for x in args.probes.split(",") if x.strip())
    req = service.make_request(model=args.model, text=text, backend=args.backend, max_tokens=args.max_tokens,
                               sink_tokens=args.sink_tokens, items=args.items, probes=probes,
                               importance=args.importance, generate=args.generate)

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            print(f"[{int(round(100 * frac)):3d}%] {msg}", file=sys.stderr, flush=True)

    service.job_setup()
    key = service.run_analysis(req, progress=progress)
    res = service.get_result(key)
    _check_head(res, head)
    specs, layers, cmp = [], None, None
    if args.variants or (view == "variants" and not bundle):
        reason = service.variants_available()
        if reason:
            raise UserError(reason)
        specs = service.split_specs(args.variants) if args.variants else \
            [c["spec"] for c in service.variant_choices()[:2]]
        if args.variant_layers:
            from ..pages.variants import parse_layers
            try:
                layers = parse_layers(args.variant_layers, res.n_layers)
            except ValueError as exc:
                raise InputError(f"--variant-layers: {exc}") from None
        ck = service.run_comparison(key, specs, layers, head, progress=progress)
        cmp = service.get_comparison(ck)
    ctx = reg.make_context(key, settings, comparison=cmp)
    if bundle:
        index = ex.write_bundle(ctx, args.bundle, opts, fmts, variants=specs, variant_layers=layers,
                                progress=None if args.quiet else (lambda f, m: progress(f, f"rendering {m}")))
        for name, why in index["skipped"].items():
            if not args.quiet:
                print(f"skipped {name}: {why}", file=sys.stderr)
        print(os.path.join(args.bundle, "bundle.json"))
        return 0
    text_file = args.text_file if args.text_file != "-" else "text.txt"
    cmd = ex.reproduce_command(sp.name, req, settings, opts, text_file=text_file, out=args.out, variants=specs,
                               variant_layers=layers)
    return _write_outputs(args, ex, ctx, sp, opts, cmd)


def _write_outputs(args, ex, ctx, sp, opts, cmd) -> int:
    """The figure file, and --data / --caption when asked for; prints each written path."""
    out = ex.export_figure(ctx, sp, opts, command=cmd)
    Path(args.out).write_bytes(out.content)
    print(args.out)
    if args.data:
        suffix = Path(args.data).suffix.lower()
        fmt = "json" if suffix == ".json" else "csv"
        content, ext = ex.data_bytes(out.tables, fmt, out.provenance if fmt == "json" else None)
        if ext == "zip" and suffix != ".zip":
            raise InputError(f"{sp.name} has {len(out.tables)} tables ({', '.join(out.tables)}): write --data "
                             "as .json or .zip")
        Path(args.data).write_bytes(content)
        print(args.data)
    if args.caption:
        if args.caption.lower().endswith(".json"):
            Path(args.caption).write_text(json.dumps(out.provenance, indent=1, ensure_ascii=False), encoding="utf-8")
        else:
            Path(args.caption).write_text(ex.caption_text(out.provenance), encoding="utf-8")
        print(args.caption)
    return 0


def _check_head(res, head) -> None:
    if not (0 <= head[0] < res.n_layers and 0 <= head[1] < res.n_heads):
        raise InputError(f"head {head[0]}.{head[1]} does not exist: {res.model} has {res.n_layers} layers x "
                         f"{res.n_heads} heads (0-based)")


def _run_saved(args, ex, opts, fmts, view, sp, head, settings, bundle) -> int:
    """--from DIR: the figures of a saved analysis, without a model (variants need one)."""
    if args.variants or (view == "variants" and not bundle):
        raise InputError("--from: variant comparisons run the model; export them with --text-file")
    saved = load_saved(args.from_dir)
    _check_head(saved.res, head)
    ctx = reg.make_context(saved.key, settings, service=saved)
    if bundle:
        index = ex.write_bundle(ctx, args.bundle, opts, fmts)
        for name, why in index["skipped"].items():
            if not args.quiet:
                print(f"skipped {name}: {why}", file=sys.stderr)
        print(os.path.join(args.bundle, "bundle.json"))
        return 0
    cmd = ex.reproduce_command(sp.name, None, settings, opts, out=args.out, source=args.from_dir)
    return _write_outputs(args, ex, ctx, sp, opts, cmd)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        from .render import shutdown
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
