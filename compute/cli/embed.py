"""`python -m compute embed`: AttentionViz query/key embedding of one head, written to DIR/embedding.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import ProgressBar, add_model_args, get_text, load_for_cli
from ..errors import InputError


def register(sub) -> None:
    from ..embedding import DEFAULT_METHOD, MAX_POINTS, METHODS, SEED
    p = sub.add_parser("embed", help="joint 2-D embedding of one head's queries and keys (embedding.json)",
                       description="Capture one head's query and key vectors (position encoding applied) over a "
                                   "text or a corpus, align them as AttentionViz does (same mean norm, key "
                                   "centroid on the query centroid) and project them together to 2-D. Writes "
                                   "DIR/embedding.json: method and points {kind, text_id, position, token, x, y}.")
    add_model_args(p, corpus=True)
    p.add_argument("--layer", type=int, required=True, help="layer index (0-based)")
    p.add_argument("--head", type=head_arg, required=True,
                   help="query head index (0-based), or 'all' for every head of the layer (one embedding per head, "
                        "--max-points each; points carry their 'head')")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help=f"2-D reduction (default {DEFAULT_METHOD}: linear and deterministic; tsne for clusters)")
    p.add_argument("--max-points", type=int, default=MAX_POINTS,
                   help=f"sample tokens so that queries + keys stay within this many points (default {MAX_POINTS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"sampling and t-SNE seed (default {SEED})")
    p.add_argument("--max-tokens", type=int, default=1024, help="refuse texts longer than this (default 1024)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def head_arg(value: str):
    """argparse type: a head index or 'all' (-> None)."""
    import argparse
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a head index or 'all'") from None


def texts_from_args(args) -> list[tuple[str, str]]:
    """[(id, text)] from --corpus, or [('text', ...)] from --text / --text-file; sizes checked."""
    from ..corpus import read_corpus
    from ..engine import validate_text
    from ..limits import check_text_size

    if getattr(args, "corpus", None):
        items = read_corpus(args.corpus)
    else:
        items = [("text", get_text(args))]
    for tid, text in items:
        try:
            validate_text(text)
            check_text_size(text)
        except InputError as exc:
            raise InputError(f"text {tid!r}: {exc}") from None
    return items


def max_tokens_from_args(args) -> int:
    from .. import settings
    if args.max_tokens < 1:
        raise InputError("--max-tokens must be at least 1")
    cap = settings.get("ATTNVIS_MAX_TOKENS")
    return min(args.max_tokens, cap) if cap else args.max_tokens


def run(args) -> int:
    from ..embedding import embedding_for_texts

    if not 2 <= args.max_points <= 200_000:
        raise InputError("--max-points must be between 2 and 200000")
    if args.layer < 0 or (args.head is not None and args.head < 0):
        raise InputError("--layer and --head must be non-negative")
    items = texts_from_args(args)
    max_tokens = max_tokens_from_args(args)
    lm = load_for_cli(args)
    with ProgressBar("embed", args.quiet) as progress:
        emb = embedding_for_texts(lm, items, args.layer, args.head, method=args.method, max_points=args.max_points,
                                  seed=args.seed, max_tokens=max_tokens, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding.json").write_text(json.dumps(emb, allow_nan=False))
    print(f"wrote {out}/embedding.json ({emb['n_points']} points from {emb['n_tokens']} tokens of {len(items)} "
          f"texts, layer {args.layer} head {'all' if args.head is None else args.head}, {args.method})", file=sys.stderr)
    return 0
