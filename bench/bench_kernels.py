"""GPU benchmark of the instrumented attention kernels (issue 3).

All ratios come from one run on one GPU. Per shape it times
  stats off    the pass-1 kernel with every statistic compiled out (STATS=False): the overhead baseline
  pass1        the instrumented query-major kernel (O, lse and every row statistic)
  pass2        the key-major kernel alone (column sums, pooled maps, distance histogram)
  pass1+pass2  attention_stats_triton end to end (host tables and reductions included)
  sdpa flash   torch scaled_dot_product_attention restricted to the flash backend
  eager        HF transformers' eager_attention_forward, which materialises the weights
               (the output_attentions path); out-of-memory is recorded, not raised
and reports ms (median of triton.testing.do_bench), TFLOP/s, % of the GPU's dense bf16 peak and
peak memory above the inputs. FLOPs: attention 4*B*H*N^2*D, pass 2 2*B*H*N^2*D, x0.5 when causal;
pass1+pass2 counts both.

  python bench/bench_kernels.py [--out FILE] [--max-n 32768] [--no-eager]
  python bench/bench_kernels.py --cpu-smoke   # tiny shape under TRITON_INTERPRET=1 (tests the code path)

Works with torch 2.11 + triton 3.6 and torch 2.13 + triton 3.9 (only do_bench and stable torch APIs).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, matched against torch's device name.
PEAKS = [
    (r"H100.*PCIe", 756.0), (r"H100.*NVL", 835.0), (r"H100", 989.4), (r"H200", 989.4), (r"GH200", 989.4),
    (r"B200", 2250.0), (r"A100", 312.0), (r"L40S", 362.1), (r"L4\b", 121.0), (r"A10G", 70.0),
    (r"RTX 4090", 165.2), (r"A6000", 154.8),
]

TARGETS = ("targets (issue 3): pass1 <= 1.3x stats-off; pass1+pass2 <= 2.2x stats-off; "
           "stats-off >= 70% of SDPA-flash throughput; >= 5x faster than eager at 4k; completes at 32k")


def peak_tflops(name: str):
    for pat, tf in PEAKS:
        if re.search(pat, name):
            return tf
    return None


def shapes(args):
    """(label, B, H, Hkv, D, N, causal)."""
    out = []
    if args.cpu_smoke:
        return [("smoke", 1, 2, 1, 16, 64, True)]
    ns = [n for n in (1024, 2048, 4096, 8192, 16384, 32768) if n <= args.max_n]
    if args.suite in ("all", "llama"):
        out += [("llama B1 H32 kv8 D128", 1, 32, 8, 128, n, True) for n in ns]
    if args.suite in ("all", "tutorial"):
        out += [("tutorial B4 H32 D64", 4, 32, 32, 64, n, True) for n in ns if n <= 16384]
    return out


class Timer:
    """do_bench on a GPU; a plain median of a few wall-clock runs in the CPU smoke mode."""

    def __init__(self, gpu: bool, warmup: int, rep: int):
        self.gpu, self.warmup, self.rep = gpu, warmup, rep

    def __call__(self, fn) -> float:
        if self.gpu:
            from triton.testing import do_bench
            fn()                                   # compile and autotune outside the timed region
            res = do_bench(fn, warmup=self.warmup, rep=self.rep, quantiles=[0.5, 0.2, 0.8])
            return float(res[0] if isinstance(res, (list, tuple)) else res)
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)


def peak_mem_mb(torch, fn, gpu: bool):
    if not gpu:
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del r
    return (peak - base) / 2 ** 20


def eager_fn(torch, q, k, v, mask, scale, g):
    """HF's eager attention (materialised weights, returned as with output_attentions=True)."""
    try:
        from transformers.models.llama.modeling_llama import eager_attention_forward
    except Exception:                              # same computation, if transformers is unavailable
        def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0):
            key = key.repeat_interleave(module.num_key_value_groups, 1)
            value = value.repeat_interleave(module.num_key_value_groups, 1)
            w = torch.matmul(query, key.transpose(2, 3)) * scaling + attention_mask
            w = torch.softmax(w, -1, dtype=torch.float32).to(query.dtype)
            return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    class _M(torch.nn.Module):
        num_key_value_groups = g

    mod = _M().eval()
    return lambda: eager_attention_forward(mod, q, k, v, mask, scale, dropout=0.0)


def sdpa_fn(torch, q, k, v, causal, gpu: bool):
    """SDPA pinned to the flash backend on a GPU (native GQA via enable_gqa when that backend
    accepts it, else K/V repeated outside the timed call); the default backend in the CPU smoke."""
    import contextlib
    import torch.nn.functional as F
    g = q.shape[1] // k.shape[1]
    ctx = contextlib.nullcontext
    if gpu:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # noqa: E731
    note = "flash" if gpu else "default backend (cpu smoke)"
    kw = {}
    if g > 1:
        try:
            with ctx():
                F.scaled_dot_product_attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], is_causal=causal,
                                               enable_gqa=True)
            kw = dict(enable_gqa=True)
        except Exception:
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            note += ", kv repeated (enable_gqa unavailable)"

    def run():
        with ctx():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kw)
    return run, note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="markdown file (default bench/results/kernels_<gpu>.md)")
    ap.add_argument("--suite", choices=("all", "llama", "tutorial"), default="all")
    ap.add_argument("--max-n", type=int, default=32768)
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--cpu-smoke", "--dry-run", dest="cpu_smoke", action="store_true",
                    help="run a tiny shape under TRITON_INTERPRET=1 on the CPU (exercises this script only)")
    args = ap.parse_args(argv)

    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")     # must precede the first triton import
    import torch
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        print("bench_kernels: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to measure. "
              "Run it on a GPU machine, or use --cpu-smoke to exercise the code path under the interpreter.",
              file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import triton
    from kernels import triton_stats as ts
    from kernels.stats_types import StatsConfig

    dev = "cuda" if gpu else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gpu_name = torch.cuda.get_device_name() if gpu else "cpu-interpreter"
    peak = peak_tflops(gpu_name) if gpu else None
    timer = Timer(gpu, args.warmup, args.rep)
    cfg = StatsConfig()
    rows, notes = [], []
    machine = (f"{gpu_name}; torch {torch.__version__}; triton {triton.__version__}; "
               f"CUDA {torch.version.cuda}; {platform.node()}; {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(machine, flush=True)

    for label, B, H, Hkv, D, N, causal in shapes(args):
        torch.manual_seed(0)
        g = H // Hkv
        # HF layout as it arrives: [B,H,N,D] views of [B,N,H,D] projections
        q = torch.randn(B, N, H, D, device=dev, dtype=dtype).transpose(1, 2)
        k = torch.randn(B, N, Hkv, D, device=dev, dtype=dtype).transpose(1, 2)
        v = torch.randn(B, N, Hkv, D, device=dev, dtype=dtype).transpose(1, 2)
        scale = D ** -0.5
        cf = 0.5 if causal else 1.0
        fl_attn = 4.0 * B * H * N * N * D * cf
        fl_p2 = 2.0 * B * H * N * N * D * cf
        res = {}

        def measure(name, fn, flops):
            try:
                ms = timer(fn)
                mem = peak_mem_mb(torch, fn, gpu)
                res[name] = (ms, flops, mem)
            except Exception as e:                  # OOM (eager) or anything else: record, go on
                oom = "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"
                res[name] = ("OOM" if oom else f"error: {type(e).__name__}: {str(e)[:80]}", flops, float("nan"))
                if gpu:
                    torch.cuda.empty_cache()

        pp_off = ts.prepare(q, k, v, scale=scale, causal=causal)
        pp_on = ts.prepare(q, k, v, scale=scale, causal=causal, config=cfg)
        measure("stats off", lambda: ts.run_pass1(pp_off, stats=False), fl_attn)
        measure("pass1", lambda: ts.run_pass1(pp_on, stats=True), fl_attn)
        _, rs, _ = ts.run_pass1(pp_on, stats=True)
        measure("pass2", lambda: ts.run_pass2(pp_on, rs), fl_p2)
        del rs
        measure("pass1+pass2", lambda: ts.attention_stats_triton(q, k, v, scale=scale, causal=causal, config=cfg),
                fl_attn + fl_p2)
        run_sdpa, sdpa_note = sdpa_fn(torch, q, k, v, causal, gpu)
        measure("sdpa " + ("flash" if gpu else "cpu"), run_sdpa, fl_attn)
        if sdpa_note not in notes:
            notes.append(f"sdpa: {sdpa_note}")
        if not args.no_eager:
            mask = None
            try:
                mask = torch.full((N, N), torch.finfo(dtype).min, device=dev, dtype=dtype).triu_(1)[None, None] \
                    if causal else None
                measure("eager", eager_fn(torch, q, k, v, mask, scale, g), fl_attn)
            except Exception as e:                  # the N x N mask itself did not fit
                res["eager"] = ("OOM" if "memory" in str(e).lower() else f"error: {e}"[:80], fl_attn, float("nan"))
            del mask
            if gpu:
                torch.cuda.empty_cache()

        base = res["stats off"][0]
        for name, (ms, flops, mem) in res.items():
            if isinstance(ms, str):
                rows.append((label, N, name, ms, "", "", "", ""))
                continue
            tf = flops / (ms * 1e-3) / 1e12
            ratio = f"{ms / base:.2f}x" if isinstance(base, float) else ""
            rows.append((label, N, name, f"{ms:.3f}", f"{tf:.1f}", f"{100 * tf / peak:.1f}" if peak else "n/a",
                         f"{mem:.0f}" if mem == mem else "n/a", ratio))
        print(_table(rows[-len(res):], header=False), flush=True)
        del q, k, v, pp_off, pp_on
        if gpu:
            torch.cuda.empty_cache()

    summary = _summary(rows)
    text = "\n".join([f"# Instrumented attention kernels: {gpu_name}", "", f"Machine: {machine}", "",
                      f"dtype {args.dtype}, StatsConfig() defaults (auto pool), causal, q/k/v as HF-layout views; "
                      f"% peak against {peak if peak else 'unknown'} TFLOP/s dense; peak memory is above the inputs.",
                      "; ".join(notes), "", _table(rows), "", *summary, "", TARGETS, ""])
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / \
        f"kernels_{re.sub(r'[^A-Za-z0-9]+', '_', gpu_name).strip('_').lower()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


def _table(rows, header=True) -> str:
    lines = []
    if header:
        lines += ["| shape | N | method | ms | TFLOP/s | % peak | peak MB | vs stats off |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines)


def _summary(rows) -> list:
    """Per shape the ratios the issue's targets are stated in."""
    by = {}
    for label, n, name, ms, *_ in rows:
        by.setdefault((label, n), {})[name] = ms
    out = ["| shape | N | pass1 / off | (p1+p2) / off | off vs sdpa (throughput) | eager / pass1+pass2 |",
           "|---|---|---|---|---|---|"]
    for (label, n), d in by.items():
        def f(x):
            try:
                return float(d[x])
            except (KeyError, ValueError):
                return None
        off, p1, both = f("stats off"), f("pass1"), f("pass1+pass2")
        sd = f("sdpa flash") or f("sdpa cpu")
        eg = f("eager")
        cell = lambda a, b: f"{a / b:.2f}" if (a and b) else "n/a"  # noqa: E731
        eager_cell = cell(eg, both) if eg else (d.get("eager", "n/a") if "eager" in d else "n/a")
        out.append(f"| {label} | {n} | {cell(p1, off)} | {cell(both, off)} | "
                   f"{(f'{100 * sd / off:.0f}%' if (sd and off) else 'n/a')} | {eager_cell} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
