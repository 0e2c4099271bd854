"""`python -m compute analyze`: writes DIR/report.json and DIR/stats.npz."""
from __future__ import annotations

import sys

from .cli import ProgressBar, add_model_args, get_text, load_for_cli


def register(sub) -> None:
    from kernels import BACKENDS
    p = sub.add_parser("analyze", help="exact attention statistics of a text (report.json + stats.npz)",
                       description="Run the model on the text with instrumented attention and write "
                                   "DIR/report.json (per-head records) and DIR/stats.npz (arrays).")
    add_model_args(p, corpus=True)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="statistics backend: triton (GPU, or CPU interpreter with TRITON_INTERPRET=1), "
                        "torch (exact chunked CPU/GPU path), auto (triton on GPU, else torch)")
    p.add_argument("--max-tokens", type=int, default=8192, help="refuse longer texts (default 8192)")
    p.add_argument("--sink-tokens", type=int, default=4, help="S in 'mass on the first S tokens' (default 4)")
    p.add_argument("--local-window", type=int, default=8,
                   help="keys within this distance count as local (default 8)")
    p.add_argument("--full-map-max", type=int, default=1024,
                   help="store every head's full map up to this many tokens (default 1024)")
    p.add_argument("--pool-cells", type=int, default=128,
                   help="pooled maps have about this many cells per side (default 128)")
    p.add_argument("--mem-budget-mb", type=int, default=256,
                   help="transient memory per query chunk in MiB (default 256)")
    p.add_argument("--no-loss", action="store_true", help="skip the next-token loss")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .corpus import add_args as add_corpus_args
    add_corpus_args(p)
    from .analysis.cli_args import add_analysis_args
    add_analysis_args(p)
    p.set_defaults(func=run)


def options_from_args(args):
    from .engine import AnalysisOptions
    return AnalysisOptions(backend=args.backend, sink_tokens=args.sink_tokens, local_window=args.local_window,
                           max_tokens=args.max_tokens, full_map_max=args.full_map_max,
                           pool_cells=args.pool_cells, mem_budget_mb=args.mem_budget_mb,
                           compute_loss=not args.no_loss)


def run(args) -> int:
    from .engine import analyze_text, validate_text
    from .report import build_report

    if getattr(args, "corpus", None):
        from .corpus import run_cli
        return run_cli(args)
    from .analysis.cli_args import settings_from_args

    text = validate_text(get_text(args))
    opts = options_from_args(args)
    opts.validate()
    settings = settings_from_args(args, text) if args.analysis else None
    lm = load_for_cli(args)
    with ProgressBar("analyze", args.quiet) as progress:
        res = analyze_text(lm, text, opts, progress=lambda f, m: progress(0.5 * f if settings else f, m))
        if settings is not None:
            from .analysis import attach, run_analysis
            attach(res, run_analysis(lm, res, settings, progress=lambda f, m: progress(0.5 + 0.5 * f, m)))
    res.save(args.out, build_report(res))
    print(f"wrote {args.out}/report.json and stats.npz ({res.n_tokens} tokens, {res.n_layers}x{res.n_heads} heads, "
          f"backend {res.backend}, {res.timings['total_s']:.1f} s)", file=sys.stderr)
    return 0
