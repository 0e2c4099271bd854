"""`python -m compute compare`: attention variants against softmax, written to DIR/compare.json;
`python -m compute variants`: the variant registry."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import ProgressBar, add_model_args, check_out_dir, get_text, load_for_cli


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare attention variants with softmax (compare.json)",
                       description="Per-head fidelity of attention variants against softmax on the same q/k/v, "
                                   "and end-to-end loss / perplexity / top-1 agreement with each variant "
                                   "swapped into the model. Writes DIR/compare.json. "
                                   "`python -m compute variants` lists the variants and their parameters.")
    add_model_args(p)
    p.add_argument("--variants", required=True, action="append",
                   help="comma-separated specs, e.g. window:64,sinks:4+window:64,topk:32,elu,hedgehog "
                        "(repeatable)")
    p.add_argument("--layers", nargs="+", help="layers to measure and swap: indices or ranges a-b "
                                               "(default: all)")
    p.add_argument("--heads", nargs="+", help="heads swapped end to end in each chosen layer: indices or "
                                              "ranges a-b (default: all; fidelity covers every head)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end swapped forwards")
    p.add_argument("--max-tokens", type=int, default=8192, help="refuse longer texts (default 8192)")
    p.add_argument("--pair-rows-max", type=int, default=512,
                   help="row metrics on every query row up to this many tokens, else on a sample (default 512)")
    p.add_argument("--row-sample", type=int, default=256, help="rows sampled for long texts (default 256)")
    p.add_argument("--overlap-k", type=int, default=8, help="k of the top-k overlap metric (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    lv = sub.add_parser("variants", help="list the attention variants (spec, parameters, paper)")
    lv.add_argument("--json", action="store_true", help="machine-readable output")
    lv.set_defaults(func=list_cmd)


MAX_INDEX = 4095           # no model has more layers or heads: bigger indices are refused before any list is built


def parse_indices(items, what: str):
    """['0', '3-5', '7,8'] -> [0, 3, 4, 5, 7, 8]; None stays None."""
    if items is None:
        return None
    out = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
            except ValueError:
                raise InputError(f"--{what}: {part!r} is not an index or a range a-b") from None
            if b < a:
                raise InputError(f"--{what}: empty range {part!r}")
            if a < 0 or b > MAX_INDEX:
                raise InputError(f"--{what}: {part!r} is out of range (indices 0..{MAX_INDEX})")
            out.extend(range(a, b + 1))
    if not out:
        raise InputError(f"--{what}: no indices given")
    return out


def run(args) -> int:
    from ..engine import validate_text
    from ..variants import FidelityOptions, compare_variants, parse_specs, to_jsonable

    specs = parse_specs(",".join(args.variants))          # bad specs fail before the model loads
    layers = parse_indices(args.layers, "layers")
    heads = parse_indices(args.heads, "heads")
    check_out_dir(args.out)
    for name in ("max_tokens", "pair_rows_max", "row_sample", "overlap_k"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    text = validate_text(get_text(args))
    lm = load_for_cli(args)
    opts = FidelityOptions(overlap_k=args.overlap_k, pair_rows_max=args.pair_rows_max, row_sample=args.row_sample)
    with ProgressBar("compare", args.quiet) as progress:
        res = compare_variants(lm, text, specs, layers=layers, heads=heads, e2e=not args.no_e2e,
                               max_tokens=args.max_tokens, options=opts, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(to_jsonable(res), allow_nan=False))
    base = res["baseline"]
    lines = [f"wrote {out}/compare.json ({res['n_tokens']} tokens, layers {_span(res['layers'])}, "
             f"{len(res['variants'])} variants, {res['timings']['total_s']:.1f} s)",
             f"  softmax: loss {_f(base['loss'])}" + (f" ({base['loss_unavailable']})" if base["loss"] is None else "")]
    for spec, v in res["variants"].items():
        e = v["e2e"] or {}
        fm = v["fidelity_mean"]
        lines.append(f"  {spec}: KL {_f(fm['kl'])}, out err {_f(fm['out_rel_l2'])}, loss {_f(e.get('loss'))}, "
                     f"top-1 agreement {_f(e.get('top1_agreement'))}, hidden cos {_f(e.get('hidden_cosine'))}")
    print("\n".join(lines), file=sys.stderr)
    return 0


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _span(layers) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2 \
        else ",".join(map(str, layers))


def list_cmd(args) -> int:
    from ..variants import list_variants
    vs = list_variants()
    if args.json:
        print(json.dumps(vs, indent=1))
        return 0
    for v in vs:
        params = ", ".join(f"{p['name']}={p['default'] if p['default'] is not None else '(required)'}"
                           for p in v["params"])
        print(f"{v['example']:26s} [{v['family']}] {v['description']}")
        if params:
            print(f"{'':26s}   params: {params}")
        print(f"{'':26s}   source: {v['paper']}")
    return 0
