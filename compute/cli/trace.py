"""`python -m compute trace`: writes DIR/trace.json for one query position (see compute/tracing/trace.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError, UserError
from .common import ProgressBar, add_model_args, check_out_dir, get_text, load_for_cli


def register(sub) -> None:
    from ..options import MAX_TOKENS_DEFAULT as DEFAULT_MAX_TOKENS
    from ..tracing.flow import FLOW_MAX_TOKENS
    from ..tracing.logit_lens import TOP_K
    p = sub.add_parser("trace", help="trace one token: logit lens, rollout and flow, head contributions (trace.json)",
                       description="One forward of the text; for query position P writes DIR/trace.json with the "
                                   "logit lens per layer, attention rollout and flow, and each head's direct "
                                   "contribution to the predicted token's logit.")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--position", type=int, default=None, help="query position P (default: the last token)")
    p.add_argument("--top-k", type=int, default=TOP_K, help=f"logit lens tokens per layer (default {TOP_K})")
    p.add_argument("--flow-max-tokens", type=int, default=FLOW_MAX_TOKENS,
                   help=f"compute attention flow only up to this many tokens (default {FLOW_MAX_TOKENS}; "
                        "one max-flow per token, cost grows with the cube of the length)")
    p.add_argument("--neuron", default=None, metavar="LAYER.HEAD.KEY",
                   help="also write the neuron view of query P and key KEY in head LAYER.HEAD")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"refuse longer texts (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_neuron(spec):
    if spec is None:
        return None
    parts = spec.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        return tuple(int(x) for x in parts)
    except ValueError:
        raise InputError(f"--neuron {spec!r}: expected LAYER.HEAD.KEY, e.g. 3.4.0") from None


def run(args) -> int:
    from ..engine import tokenize, validate_text
    from ..tracing.flow import check_flow_limit
    from ..tracing.trace import build_trace, validate_request

    check_flow_limit(args.flow_max_tokens)                 # before loading the model
    check_out_dir(args.out)
    neuron = parse_neuron(args.neuron)
    text = validate_text(get_text(args))
    lm = load_for_cli(args)
    ids = tokenize(lm, text, args.max_tokens)
    position = validate_request(lm, len(ids), args.position, top_k=args.top_k,   # before the progress bar
                                flow_max_tokens=args.flow_max_tokens, neuron=neuron)
    with ProgressBar("trace", args.quiet) as progress:
        tr = build_trace(lm, ids, position, top_k=args.top_k, flow_max_tokens=args.flow_max_tokens,
                         neuron=neuron, progress=progress)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "trace.json").write_text(json.dumps(tr))
    except OSError as exc:
        raise UserError(f"cannot write {out}/trace.json: {exc.strerror or exc}") from None
    pred = tr.get("prediction")
    said = f", predicts {pred['token']!r} ({pred['prob']:.3f})" if pred else ""
    print(f"wrote {out}/trace.json (position {tr['position']} of {len(tr['tokens'])} tokens{said}; "
          f"{tr['timings']['total_s']:.1f} s)", file=sys.stderr)
    for name, why in tr["omitted"].items():
        print(f"note: {name} omitted: {why}", file=sys.stderr)
    return 0
