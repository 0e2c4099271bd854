"""Head switch, server side: what the server does when a head is selected on the head-detail page of
a ~1,600-token analysis (pooled maps: above the app's full-map limit), without a browser.

One switch = the head page's selection callback -> sync_state (URL state) -> the head page's render
callbacks (map, zoom, entropy, received, dependency arcs, summary; token graph; dropdown ranges) and
the navigation links, serialised to JSON as Dash sends them. The analysis is run once (cached in a
throw-away ATTNVIS_CACHE_DIR that shares the converted GGUF weights) and read back the way a web
process reads it (its in-memory copy dropped first, so the first switch pays the cache read).

    python bench/bench_head_switch.py [--tokens 1600] [--switches 30] [--out bench/results/head_switch_cpu.md]

Prints median and p90 in ms (target: median <= 300 ms).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from contextvars import copy_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402


def shared_cache() -> str:
    """A fresh result cache that reuses the converted GGUF weights of the usual cache."""
    from compute.models import cache_dir
    real = cache_dir() / "gguf"
    real.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="attnvis-bench-"))
    (tmp / "gguf").symlink_to(real, target_is_directory=True)
    return str(tmp)


def long_text(n_tokens: int) -> str:
    from compute.models import load_model
    from visapp.presets import CODE, MULTI_DOC, PROSE
    tok = load_model("smollm2-135m").tokenizer
    ids = tok("\n\n".join([PROSE, MULTI_DOC, CODE] * 12))["input_ids"][:n_tokens]
    assert len(ids) == n_tokens, len(ids)
    return tok.decode(ids)


def call(fn, trigger: str, *args):
    """A Dash callback outside a server, with `trigger` as ctx.triggered_id."""
    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    def go():
        context_value.set(AttributeDict(triggered_inputs=[{"prop_id": f"{trigger}.data", "value": None}],
                                        updated_props={}))
        return fn(*args)
    return copy_context().run(go)


def switch(key: str, layer: int, head: int) -> dict:
    """One head switch on the head page; returns the new URL state."""
    from dash._utils import to_json
    from visapp import callbacks as cb
    from visapp import ids
    from visapp.pages import head as hp
    sel = hp.select_head(layer, head)
    search, st = call(cb.sync_state, ids.SELECT, "/head", f"?a={key}", sel)
    to_json([search, st, hp.render_head(st, "max", None), hp.render_head_graph(st, 0.1, None), hp.head_options(st),
             cb.navigation(st), cb.run_info(st)])
    return st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1600)
    ap.add_argument("--switches", type=int, default=30)
    ap.add_argument("--out", default=None, help="append a results table (markdown) to this file")
    args = ap.parse_args()
    os.environ.setdefault("ATTNVIS_TORCH_THREADS", str(os.cpu_count() or 1))
    os.environ["ATTNVIS_CACHE_DIR"] = shared_cache()

    import app  # noqa: F401  (registers the pages and their callbacks, as in production)
    from visapp import service
    text = long_text(args.tokens)
    t = time.perf_counter()
    service.job_setup()
    key = service.run_analysis(service.make_request(text=text))
    analyse_s = time.perf_counter() - t
    res = service.get_result(key)
    assert not res.extras.get("has_full_maps"), "the bench needs a text above the app's full-map limit"
    service._CORES.clear()                           # read back as a web process does
    service._SUMMARIES.clear()
    rng = random.Random(0)
    heads = [(rng.randrange(res.n_layers), rng.randrange(res.n_heads)) for _ in range(args.switches)]
    t = time.perf_counter()
    switch(key, 0, 0)
    first_ms = 1000 * (time.perf_counter() - t)
    times = []
    for l, h in heads:
        t = time.perf_counter()
        st = switch(key, l, h)
        times.append(1000 * (time.perf_counter() - t))
        assert st["head"] == f"{l}.{h}"
    times.sort()
    med, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
    line = (f"head switch ({res.n_tokens} tokens, {res.n_layers}x{res.n_heads} heads, pooled maps): median "
            f"{med:.0f} ms, p90 {p90:.0f} ms, max {times[-1]:.0f} ms over {len(times)} switches "
            f"(first, cache read: {first_ms:.0f} ms; analysis {analyse_s:.0f} s)")
    print(line)
    if args.out:
        out = Path(args.out)
        head = "" if out.exists() else "# Head switch, server time (bench/bench_head_switch.py)\n\n"
        with out.open("a") as f:
            f.write(f"{head}- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
                    f"{os.cpu_count()} cores, python {platform.python_version()}: {line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
