"""Corpus per-head overview time: T texts x N tokens on SmolLM2, W worker processes (issue 13 target:
50 texts x 256 tokens in < 5 minutes with 2 workers on CPU).

Texts are built from the shipped corpus (compute/data/corpus/mixed.jsonl): text i starts at corpus
text i mod 30 and continues with the next ones until it has N tokens, cut to N token ids and decoded
(a few ids fewer when the decoded text would re-tokenise longer). Each worker process loads the model
once and analyses its share as corpus mode does (compute.corpus.analyze_one: the pipeline with roles
and syntax, no head graph); the
overview (compute/corpus_stats.corpus_overview) runs once at the end. Workers use one torch thread each (W workers on W cores).

Usage: python bench/bench_corpus.py [--texts 50] [--tokens 256] [--workers 2] [--out FILE]
The last line reads: texts=T tokens=N workers=W total_s=... per_text_s=... overview_s=...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_name  # noqa: E402
CORPUS = ROOT / "compute" / "data" / "corpus" / "mixed.jsonl"
MODEL = "smollm2-135m"
_LM = None


def bench_texts(tokenizer, n_texts: int, n_tokens: int) -> list[tuple[str, str]]:
    base = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n_texts):
        ids, j = [], i
        while len(ids) < n_tokens:
            ids += tokenizer(base[j % len(base)] + "\n\n")["input_ids"]
            j += 1
        ids = ids[:n_tokens]
        text = tokenizer.decode(ids)
        while len(tokenizer(text)["input_ids"]) > n_tokens:      # decoding can merge into extra tokens
            ids = ids[:-1]
            text = tokenizer.decode(ids)
        out.append((f"bench-{i:03d}", text))
    return out


def _init(threads: int) -> None:
    global _LM
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(threads)
    from compute.models import load_model
    _LM = load_model(MODEL)


def report_for(lm, text: str, max_tokens: int) -> dict:
    """What corpus mode does for one text (compute.corpus.analyze_one: the pipeline with the corpus'
    sections), as the report-like record the overview reads."""
    from compute.corpus import analyze_one
    from compute.corpus_stats import report_from_summary
    from compute.options import AnalysisOptions

    summ = analyze_one(lm, text, AnalysisOptions(max_tokens=max_tokens, compute_loss=False))
    rep = report_from_summary("t", summ)
    rep["n_tokens"] = summ["n_tokens"]
    return rep


def _work(item: tuple[str, str, int]) -> tuple[str, dict, float, int]:
    tid, text, max_tokens = item
    t0 = time.perf_counter()
    rep = report_for(_LM, text, max_tokens)
    keep = {"id": tid, "heads": rep["heads"]}                                     # what the overview reads
    return tid, keep, time.perf_counter() - t0, rep["n_tokens"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from compute.corpus_stats import corpus_overview

    t_start = time.perf_counter()
    _init(1)
    items = [(tid, text, args.tokens + 16) for tid, text in bench_texts(_LM.tokenizer, args.texts, args.tokens)]
    t_ready = time.perf_counter()
    per_text: dict[str, float] = {}
    reports: dict[str, dict] = {}
    n_tok = 0
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init,
                             initargs=(1,)) as ex:
        for tid, rep, dt, n in ex.map(_work, items):
            reports[tid], per_text[tid] = rep, dt
            n_tok += n
    t_an = time.perf_counter()
    ov = corpus_overview([reports[tid] for tid, _, _ in items])
    t_ov = time.perf_counter()
    result = {
        "bench": "corpus_overview", "model": MODEL, "texts": args.texts, "tokens": args.tokens,
        "tokens_total": n_tok, "workers": args.workers, "cpu": cpu_name(), "cores": os.cpu_count(),
        "prepare_s": t_ready - t_start, "analyse_s": t_an - t_ready, "overview_s": t_ov - t_an,
        "total_s": t_ov - t_start, "per_text_mean_s": sum(per_text.values()) / len(per_text),
        "heads": ov["n_layers"] * ov["n_heads"], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print(f"texts={args.texts} tokens={args.tokens} workers={args.workers} total_s={result['total_s']:.1f} "
          f"per_text_s={result['per_text_mean_s']:.2f} overview_s={result['overview_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
