"""Corpus mode's run: every text of a corpus file through the pipeline, in this process or fanned out
to Celery workers (compute/tasks.py) when REDIS_URL is set, aggregated into DIR/corpus.json."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .corpus import N_BUCKETS, aggregate, read_corpus, run_in_process, run_key


def run_corpus(corpus_path: str, out_dir: str, model: str, opts, *, redis_url: Optional[str] = None,
               n_buckets: int = N_BUCKETS, per_text: bool = False, quiet: bool = False,
               time_limit_s: Optional[float] = None, device: Optional[str] = None, log=None) -> dict:
    """Analyse a corpus file and write out_dir/corpus.json (+ texts/NNNNN.json with per_text)."""
    from . import settings
    from .limits import limited_options

    log = log or (lambda msg: print(msg, file=sys.stderr))
    items = read_corpus(corpus_path)
    opts = limited_options(opts)
    opts.validate()
    redis_url = settings.get("REDIS_URL") if redis_url is None else redis_url
    bar = None
    if not quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc="corpus", unit="text", file=sys.stderr, mininterval=0.5)

    def on_done(tid, r):
        if bar is not None:
            bar.update(1)

    mode = "in-process"
    results = None
    try:
        if redis_url:
            from . import tasks  # noqa: the fan-out (Celery): imported only when Redis is configured
            reason = tasks.unavailable_reason(redis_url)
            if reason is None:
                mode = "celery"
                results = tasks.run_distributed(items, model, asdict(opts), redis_url, n_buckets=n_buckets,
                                                time_limit_s=time_limit_s, on_done=on_done)
            else:
                log(f"warning: {reason}; analysing the corpus in this process instead")
        if results is None:
            from .limits import load_model_limited
            lm = load_model_limited(model, device)
            results = run_in_process(items, lm, opts, time_limit_s, n_buckets, on_done)
    finally:
        if bar is not None:
            bar.close()
    meta = {"model": model, "options": asdict(opts), "mode": mode, "n_buckets": n_buckets,
            "corpus": str(corpus_path), "run_key": run_key(items, model, asdict(opts), n_buckets)}
    agg = aggregate(items, results, meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "corpus.json.tmp"
    tmp.write_text(json.dumps(agg, indent=1, allow_nan=False))
    tmp.replace(out / "corpus.json")                 # never a half-written corpus.json
    if per_text:
        tdir = out / "texts"
        tdir.mkdir(exist_ok=True)
        for i, (tid, _) in enumerate(items):
            if tid in results:
                (tdir / f"{i:05d}.json").write_text(json.dumps({"id": tid, **results[tid]}, allow_nan=False))
    return agg
