"""`python -m compute diff`: two analyses side by side (two models on one text, or two texts on one
model), written to DIR/diff.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import ProgressBar, add_model_args, get_text, load_for_cli, read_text_file
from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("diff", help="two models on one text, or two texts on one model (diff.json)",
                       description="Analyse A (--model, --text-file) and B (--model-b and/or --text-file-b) and "
                                   "write DIR/diff.json: per-head metric deltas (B - A, when the layer x head "
                                   "grids match), per-layer profiles, and each head of A matched to a head of B "
                                   "by the Jensen-Shannon distance of their maps (when the tokens are the same).")
    add_model_args(p)
    p.add_argument("--model-b", help="model B (registry name, folder or .gguf); default: the same as --model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text-file-b", help="text B (UTF-8 file); default: the same text as A")
    src.add_argument("--text-b", help="text B itself")
    p.add_argument("--max-tokens", type=int, default=1024, help="refuse texts longer than this (default 1024)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from argparse import Namespace

    from ..engine import validate_text
    from ..options import AnalysisOptions
    from ..sidebyside import JS_FULL_MAX, diff_texts

    if args.model_b is None and args.text_file_b is None and args.text_b is None:
        raise InputError("nothing to compare: give --model-b (same text, two models) or --text-file-b "
                         "(two texts, one model)")
    if args.max_tokens < 1:
        raise InputError("--max-tokens must be at least 1")
    text_a = validate_text(get_text(args))
    if args.text_b is not None or args.text_file_b is not None:
        text_b = validate_text(args.text_b if args.text_b is not None else read_text_file(args.text_file_b))
    else:
        text_b = text_a
    lm_a = load_for_cli(args)
    same_model = args.model_b is None or args.model_b.strip() == args.model.strip()
    lm_b = lm_a if same_model else load_for_cli(Namespace(**{**vars(args), "model": args.model_b}))
    # full maps only as long as the matching reads them: longer texts keep pooled maps (bounded memory)
    opts = AnalysisOptions(max_tokens=args.max_tokens, compute_loss=True, full_map_max=JS_FULL_MAX)
    label_a = f"{lm_a.info.name}" + ("" if text_b == text_a else " / text A")
    label_b = f"{lm_b.info.name}" + ("" if text_b == text_a else " / text B")
    with ProgressBar("diff", args.quiet) as progress:
        out = diff_texts(lm_a, text_a, lm_b, text_b, opts, label_a, label_b, progress=progress)
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "diff.json").write_text(json.dumps(out, allow_nan=False))
    m = out["matching"]
    print(f"wrote {d}/diff.json (A {out['a']['model']} {out['a']['n_tokens']} tokens, B {out['b']['model']} "
          f"{out['b']['n_tokens']} tokens; deltas {'per head' if out['grid_match'] else 'per layer only'}; "
          f"matching: {m['reason'] if not m['available'] else m['source']})", file=sys.stderr)
    return 0
