"""Corpus flags of `python -m compute analyze --corpus FILE.jsonl` and their run."""
from __future__ import annotations

import sys

from ..corpus import N_BUCKETS
from ..errors import InputError, UserError


def add_corpus_args(p) -> None:
    """Corpus flags of `python -m compute analyze` (the --corpus source itself is in cli.add_model_args)."""
    p.add_argument("--buckets", type=int, default=N_BUCKETS,
                   help=f"corpus mode: relative-position buckets of the positional calibration (default {N_BUCKETS})")
    p.add_argument("--per-text", action="store_true", help="corpus mode: also write DIR/texts/NNNNN.json per text")


def run_cli(args, opts) -> int:
    from ..corpus_run import run_corpus

    if not 1 <= args.buckets <= 1000:
        raise InputError("--buckets must be between 1 and 1000")
    agg = run_corpus(args.corpus, args.out, args.model, opts, n_buckets=args.buckets, per_text=args.per_text,
                     quiet=args.quiet, device=args.device)
    print(f"wrote {args.out}/corpus.json ({agg['n_texts']} texts aggregated, {agg['n_failed']} failed, "
          f"mode {agg['mode']})", file=sys.stderr)
    for tid, msg in list(agg["failed"].items())[:10]:
        print(f"warning: text {tid[:80]!r}: {msg}", file=sys.stderr)
    if agg["missing"]:
        raise UserError(f"{len(agg['missing'])} texts got no result (first: {agg['missing'][0][:80]!r})")
    if agg["n_texts"] == 0:
        raise UserError("no text of the corpus could be analysed")
    return 0
