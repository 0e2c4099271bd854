"""`python -m compute search`: exBERT-style context search of a corpus, written to DIR/search.json.

The searched token is either in the corpus (--text-id ID --position P) or in a text of its own
(--text / --text-file with --position P).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import ProgressBar, load_for_cli, read_text_file
from ..errors import InputError


def register(sub) -> None:
    from ..context_search import BY, MAX_HITS, TOP_K_KEYS
    from ..models import DEFAULT_MODEL
    p = sub.add_parser("search", help="nearest corpus tokens by a head's query or the layer's hidden state "
                                      "(search.json)",
                       description="Find the corpus tokens whose query vector (of --layer/--head) or hidden "
                                   "state (output of --layer) is nearest by cosine to the chosen token's, with "
                                   "their contexts and where the head attends from them. Writes DIR/search.json.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name, model folder or .gguf (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    p.add_argument("--corpus", required=True, help="JSON-lines corpus, one {\"id\": ..., \"text\": ...} per line")
    p.add_argument("--layer", type=int, required=True, help="layer index (0-based)")
    p.add_argument("--head", type=int, required=True, help="query head index (0-based)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-id", help="the searched token is in this corpus text")
    src.add_argument("--text", help="the searched token is in this text")
    src.add_argument("--text-file", help="the searched token is in this UTF-8 file's text")
    p.add_argument("--position", type=int, required=True, help="token position of the searched token (0-based)")
    p.add_argument("--by", default="query", choices=list(BY), help="compare query vectors or hidden states")
    p.add_argument("--k", type=int, default=10, help=f"number of hits (1..{MAX_HITS}, default 10)")
    p.add_argument("--top-keys", type=int, default=TOP_K_KEYS, help=f"keys listed per hit (default {TOP_K_KEYS})")
    p.add_argument("--max-tokens", type=int, default=1024, help="refuse texts longer than this (default 1024)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from .embed import max_tokens_from_args, texts_from_args
    from ..context_search import MAX_HITS, build_index, search, search_at

    if not 1 <= args.k <= MAX_HITS:
        raise InputError(f"--k must be between 1 and {MAX_HITS}")
    if args.position < 0:
        raise InputError("--position must be non-negative")
    args_corpus = argparse_copy(args, text=None, text_file=None)
    items = texts_from_args(args_corpus)
    if args.text_id is not None and args.text_id not in {tid for tid, _ in items}:
        raise InputError(f"no text {args.text_id!r} in {args.corpus}")
    own = None
    if args.text_id is None:
        own = args.text if args.text is not None else read_text_file(args.text_file)
        texts_from_args(argparse_copy(args, corpus=None, text=own))            # same checks as the corpus texts
    max_tokens = max_tokens_from_args(args)
    lm = load_for_cli(args)
    hidden = args.by == "hidden"
    with ProgressBar("search", args.quiet) as progress:
        index = build_index(lm, items, args.layer, args.head, hidden=hidden, top_k=args.top_keys,
                            max_tokens=max_tokens, progress=progress)
    if own is None:
        index.row(args.text_id, args.position)                                # position in range
        query = {"text_id": args.text_id, "position": args.position,
                 "token": index.tokens[args.text_id][args.position]}
        hits = search_at(index, args.text_id, args.position, args.by, args.k)
    else:
        probe = build_index(lm, [("query", own)], args.layer, args.head, hidden=hidden, top_k=args.top_keys,
                            max_tokens=max_tokens)
        row = probe.row("query", args.position)
        query = {"text_id": None, "position": args.position, "token": probe.tokens["query"][args.position]}
        hits = search(index, probe.vectors[args.by][row], args.by, args.k)
    out = {"model": lm.info.name, "layer": args.layer, "head": args.head, "by": args.by,
           "similarity": "cosine", "query": query, "n_tokens": len(index.text_id), "hits": hits}
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "search.json").write_text(json.dumps(out, allow_nan=False))
    print(f"wrote {d}/search.json ({len(hits)} hits among {len(index.text_id)} tokens of {len(items)} texts; "
          f"best {hits[0]['similarity']:.3f})", file=sys.stderr)
    return 0


def argparse_copy(args, **changes):
    from argparse import Namespace
    return Namespace(**{**vars(args), **changes})
