"""`python -m compute analyze`: writes DIR/report.json and DIR/stats.npz (or DIR/corpus.json with --corpus)."""
from __future__ import annotations

import sys

from ..options import AnalysisOptions, add_flags, from_args
from .common import ProgressBar, add_model_args, check_out_dir, get_text, load_for_cli


def register(sub) -> None:
    from .analysis_args import add_analysis_args
    from .corpus import add_corpus_args
    p = sub.add_parser("analyze", help="exact attention statistics of a text (report.json + stats.npz)",
                       description="Run the model on the text with instrumented attention and write "
                                   "DIR/report.json (per-head records) and DIR/stats.npz (arrays).")
    add_model_args(p, corpus=True)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    add_flags(p.add_argument_group("statistics"), AnalysisOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_corpus_args(p)
    add_analysis_args(p)
    p.set_defaults(func=run)


def options_from_args(args) -> AnalysisOptions:
    opts = from_args(AnalysisOptions, args)
    opts.validate()
    return opts


def run(args) -> int:
    from ..engine import validate_text
    from ..pipeline import analyze
    from ..report import build_report
    from .analysis_args import settings_from_args

    opts = options_from_args(args)                 # every bound checked before any model loads
    check_out_dir(args.out)
    if getattr(args, "corpus", None):
        from .corpus import run_cli
        return run_cli(args, opts)
    text = validate_text(get_text(args))
    settings = settings_from_args(args, text) if args.analysis else None
    lm = load_for_cli(args)
    with ProgressBar("analyze", args.quiet) as progress:
        res = analyze(lm, text, opts, settings, progress=progress)
    res.save(args.out, build_report(res))
    print(f"wrote {args.out}/report.json and stats.npz ({res.n_tokens} tokens, {res.n_layers}x{res.n_heads} heads, "
          f"backend {res.backend}, {res.timings['total_s']:.1f} s)", file=sys.stderr)
    return 0
