"""Model view, server side: build and serialise the all-heads figure (visapp.pages.model.render_view, the
function the /model page and its export call) for a long text, without a browser.

The pooled maps come from a real statistics-only analysis of SmolLM2-135M (30 x 9 heads) of a text of
--tokens tokens (compute.pipeline.analyze, no sections, no full maps); the figure is then built and
serialised to JSON as Dash sends it (plotly's JSON encoder), --repeats times.

    OMP_NUM_THREADS=1 python bench/bench_model_view.py [--tokens 2048] [--repeats 20]

Prints the median and max of build and serialise times and the JSON size (budget: 1.5 s server time,
visapp.pages.model.BUDGET_S).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    import plotly.io as pio
    from compute.models import load_model
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze
    from visapp.pages.model import BUDGET_S, render_view
    from visapp.presets import CODE, MULTI_DOC, PROSE

    lm = load_model("smollm2-135m")
    ids = lm.tokenizer("\n\n".join([PROSE, MULTI_DOC, CODE] * 16))["input_ids"][:args.tokens]
    if len(ids) != args.tokens:
        raise SystemExit(f"the bench text has only {len(ids)} tokens")
    text = lm.tokenizer.decode(ids)
    t = time.perf_counter()
    res = analyze(lm, text, AnalysisOptions(max_tokens=args.tokens + 16, full_map_max=0), None)
    analyse_s = time.perf_counter() - t
    build, ser, size = [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fig = render_view(res, None, (3, 4))
        t1 = time.perf_counter()
        js = pio.to_json(fig.to_plotly_json(), validate=False)
        t2 = time.perf_counter()
        build.append(t1 - t0)
        ser.append(t2 - t1)
        size = len(js)
    total = [b + s for b, s in zip(build, ser)]
    cells = fig.data[0].z.size if hasattr(fig.data[0].z, "size") else len(fig.data[0].z) * len(fig.data[0].z[0])
    print(f"model view ({res.n_tokens} tokens, {res.n_layers}x{res.n_heads} heads, pooled maps "
          f"{res.pooled_mean.shape[-1]}x{res.pooled_mean.shape[-1]} -> {cells} tiled cells, JSON {size / 1e6:.2f} MB) on "
          f"{cpu_name()}: build median {1e3 * statistics.median(build):.0f} ms (max {1e3 * max(build):.0f}), "
          f"serialise median {1e3 * statistics.median(ser):.0f} ms (max {1e3 * max(ser):.0f}), "
          f"total median {1e3 * statistics.median(total):.0f} ms, max {1e3 * max(total):.0f} ms "
          f"(budget {1e3 * BUDGET_S:.0f} ms; {args.repeats} repeats; analysis {analyse_s:.0f} s)")
    return 0 if max(total) <= BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
