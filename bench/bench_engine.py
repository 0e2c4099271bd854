"""Full analysis vs a plain sdpa forward (and HF eager output_attentions) on SmolLM2, on this machine.

Each measurement runs in its own subprocess so peak RSS is per configuration; all ratios come from
one invocation of this script. Usage: python bench/bench_engine.py [--sizes 512 2048 8192] [--repeat N] [--out FILE]
The last line reads: n=2048 ratio_vs_sdpa=X ratio_vs_eager=Y peak_rss_mib=Z
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SEED = ("Attention heads in small language models route information between tokens. Some heads attend "
             "to the previous token, others to the first token, which acts as a sink. ")


def make_ids(tok, n):
    ids = tok(TEXT_SEED * (n // 10 + 10)).input_ids[:n]
    assert len(ids) == n
    return ids


def one(mode: str, n: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from compute.engine import AnalysisOptions, analyze_text
    from compute.models import load_model
    torch.manual_seed(0)
    lm = load_model("smollm2-135m")
    ids = make_ids(lm.tokenizer, n)
    text = lm.tokenizer.decode(ids)
    m = lm.model
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "analysis":
            res = analyze_text(lm, text, AnalysisOptions(backend="torch", max_tokens=n + 64))
            got_n = res.n_tokens
        elif mode == "sdpa":
            m.set_attn_implementation("sdpa")
            m(input_ids=x)
            got_n = n
        elif mode == "eager":
            m.set_attn_implementation("eager")
            m(input_ids=x, output_attentions=True)
            got_n = n
    dt = time.perf_counter() - t0
    return {"mode": mode, "n": got_n, "seconds": dt,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_rss_mib": base_rss / 1024}


def run_child(mode: str, n: int, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--one", mode, str(n)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired:
        return {"mode": mode, "n": n, "error": f"timeout after {timeout}s"}
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"mode": mode, "n": n, "error": f"exit {p.returncode}: {last[:160]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def best(old: dict | None, new: dict) -> dict:
    """The faster of two runs of one mode (peak memory: the larger); an error wins only alone."""
    if old is None or "error" in old:
        return new
    if "error" in new:
        return old
    keep = dict(min(old, new, key=lambda x: x["seconds"]))
    keep["peak_rss_mib"] = max(old["peak_rss_mib"], new["peak_rss_mib"])
    return keep


def machine() -> str:
    import torch
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU used; torch {torch.__version__}, "
            f"python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--eager-max", type=int, default=2048, help="skip eager above this size (it runs out of memory)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each mode this many times, alternating, and keep the fastest (machine noise)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    rows = []
    print(f"machine: {machine()}", flush=True)
    for n in args.sizes:
        r = {"n": n}
        for _ in range(max(1, args.repeat)):
            for mode in ("sdpa", "analysis") + (("eager",) if n <= args.eager_max else ()):
                got = run_child(mode, n, args.timeout)
                print(json.dumps(got), flush=True)
                r[mode] = best(r.get(mode), got)
        rows.append(r)
    lines = ["| n | sdpa forward s | full analysis s | eager+output_attentions s | analysis / sdpa | analysis / eager "
             "| analysis peak RSS MiB | sdpa peak RSS MiB | eager peak RSS MiB |", "|" + "---|" * 9]
    summary = {}
    for r in rows:
        def sec(m):
            v = r.get(m)
            return None if v is None or "error" in v else v["seconds"]

        def rss(m):
            v = r.get(m)
            return "-" if v is None else (v.get("error", "")[:40] if "error" in v else f"{v['peak_rss_mib']:.0f}")
        s, a, e = sec("sdpa"), sec("analysis"), sec("eager")
        rs = a / s if a and s else None
        re_ = a / e if a and e else None
        fmt = lambda x, p=2: "-" if x is None else f"{x:.{p}f}"
        lines.append(f"| {r['n']} | {fmt(s)} | {fmt(a)} | {fmt(e) if 'eager' in r else 'not run'} | {fmt(rs)} | "
                     f"{fmt(re_)} | {rss('analysis')} | {rss('sdpa')} | {rss('eager')} |")
        summary[r["n"]] = (rs, re_, r["analysis"].get("peak_rss_mib"))
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(f"machine: {machine()}\n\n{table}\n")
    n = 2048 if 2048 in summary else rows[-1]["n"]
    rs, re_, pk = summary[n]
    f = lambda x: "nan" if x is None else f"{x:.3f}"
    print(f"n={n} ratio_vs_sdpa={f(rs)} ratio_vs_eager={f(re_)} peak_rss_mib={'nan' if pk is None else f'{pk:.0f}'}")


if __name__ == "__main__":
    main()
