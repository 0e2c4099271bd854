"""What a user waits for, against a plain sdpa forward and HF eager output_attentions, on SmolLM2.

Modes, each in its own subprocess (peak RSS per configuration), all ratios from one invocation:
  sdpa    one plain forward of the n tokens (model loaded: the forward only)
  engine  compute.pipeline.analyze with no sections: the instrumented forward alone (model loaded)
  e2e     the whole command `python -m compute analyze --text-file F --out D` with the default sections,
          wall time of the process, minus the same command on a 12-token text ("extra over a short
          run": loading Python, torch, the model and spaCy cancel out, the work on the n tokens stays)
  eager   one forward with attn_implementation="eager" and output_attentions=True (model loaded)
Usage: python bench/bench_engine.py [--sizes 512 2048 8192] [--repeat N] [--out FILE]
The last line reads: n=2048 e2e_ratio_vs_sdpa=X engine_ratio_vs_sdpa=Y ratio_vs_eager=Z peak_rss_mib=M
(ratio_vs_eager: e2e extra / eager; peak_rss_mib: the e2e command's peak at the largest size).
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
TEXT = ROOT / "bench" / "data" / "english.txt"   # natural English prose (bench/data/README.md)


def make_ids(tok, n):
    """The first n tokens of the benchmark text (its end is re-decoded and checked by text_file)."""
    ids = tok(TEXT.read_text()).input_ids[:n]
    assert len(ids) == n, f"the benchmark text has only {len(ids)} tokens"
    return ids


def one(mode: str, n: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from compute.models import load_model
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze
    torch.manual_seed(0)
    lm = load_model("smollm2-135m")
    ids = make_ids(lm.tokenizer, n)
    text = lm.tokenizer.decode(ids)
    m = lm.model
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.tensor([ids])
    if mode in ("sdpa", "eager"):
        m.set_attn_implementation(mode)
    with torch.no_grad():                       # warm-up: first-call initialisation is not the forward's cost
        if mode == "engine":
            analyze(lm, text[:64], AnalysisOptions(backend="torch"), None)
        else:
            m(input_ids=x[:, :16])
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "engine":
            res = analyze(lm, text, AnalysisOptions(backend="torch", max_tokens=n + 64), None)
            got_n = res.n_tokens
        elif mode == "sdpa":
            m(input_ids=x)
            got_n = n
        elif mode == "eager":
            m(input_ids=x, output_attentions=True)
            got_n = n
    dt = time.perf_counter() - t0
    return {"mode": mode, "n": got_n, "seconds": dt,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_rss_mib": base_rss / 1024}


def text_file(n: int) -> Path:
    """The benchmark text of n SmolLM2 tokens, written once (the e2e command reads a file, as users do)."""
    p = ROOT / "artifacts" / "bench" / f"text_{n}.txt"
    if not p.exists():
        sys.path.insert(0, str(ROOT))
        from compute.models import load_model
        tok = load_model("smollm2-135m").tokenizer
        p.parent.mkdir(parents=True, exist_ok=True)
        text = tok.decode(make_ids(tok, n))
        assert len(tok(text).input_ids) == n, f"the first {n} tokens do not re-tokenise to {n}: pick another size"
        p.write_text(text)
    return p


def run_e2e(n: int, timeout: int) -> dict:
    """Wall time and peak RSS of the whole CLI command on the n-token text (default sections)."""
    import shutil
    import tempfile
    out = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    cmd = [sys.executable, "-m", "compute", "analyze", "--text-file", str(text_file(n)), "--out", str(out / "o"),
           "--quiet", "--backend", "torch", "--max-tokens", str(max(n, 16))]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        shutil.rmtree(out, ignore_errors=True)
    dt = time.perf_counter() - t0
    if status != 0:
        return {"mode": "e2e", "n": n, "error": f"exit {status}: {(err.strip().splitlines() or [''])[-1][:160]}"}
    return {"mode": "e2e", "n": n, "seconds": dt, "peak_rss_mib": ru.ru_maxrss / 1024}


SHORT = 12


def run_child(mode: str, n: int, timeout: int) -> dict:
    if mode == "e2e":
        return run_e2e(n, timeout)
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
    from bench.machine import cpu_name
    cpu = cpu_name()
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
    short = None
    for n in args.sizes:
        r = {"n": n}
        for _ in range(max(1, args.repeat)):
            short = best(short, run_e2e(SHORT, args.timeout))
            for mode in ("sdpa", "engine", "e2e") + (("eager",) if n <= args.eager_max else ()):
                got = run_child(mode, n, args.timeout)
                print(json.dumps(got), flush=True)
                r[mode] = best(r.get(mode), got)
        rows.append(r)
    print(json.dumps({"short_run": short}), flush=True)
    base = short.get("seconds") if short and "error" not in short else None
    lines = [f"e2e = the whole `python -m compute analyze` command with default sections, minus the same command "
             f"on a {SHORT}-token text ({'-' if base is None else f'{base:.2f}'} s)", "",
             "| n | sdpa forward s | engine s | e2e extra s | eager+output_attentions s | engine / sdpa | e2e / sdpa "
             "| e2e / eager | e2e peak RSS MiB | sdpa peak RSS MiB | eager peak RSS MiB |", "|" + "---|" * 11]
    summary = {}
    for r in rows:
        def sec(m):
            v = r.get(m)
            return None if v is None or "error" in v else v["seconds"]

        def rss(m):
            v = r.get(m)
            return "-" if v is None else (v.get("error", "")[:40] if "error" in v else f"{v['peak_rss_mib']:.0f}")
        s, g, e = sec("sdpa"), sec("engine"), sec("eager")
        x = sec("e2e") - base if sec("e2e") is not None and base is not None else None
        ratio = lambda a, b: a / b if a is not None and b else None    # noqa: E731
        fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"         # noqa: E731
        lines.append(f"| {r['n']} | {fmt(s)} | {fmt(g)} | {fmt(x)} | {fmt(e) if 'eager' in r else 'not run'} | "
                     f"{fmt(ratio(g, s))} | {fmt(ratio(x, s))} | {fmt(ratio(x, e))} | {rss('e2e')} | {rss('sdpa')} | "
                     f"{rss('eager')} |")
        summary[r["n"]] = (ratio(x, s), ratio(g, s), ratio(x, e), (r.get("e2e") or {}).get("peak_rss_mib"))
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(f"machine: {machine()}\n\n{table}\n")
    n = 2048 if 2048 in summary else rows[-1]["n"]
    xe, ge, xv, _ = summary[n]
    pk = summary[max(summary)][3]
    f = lambda v: "nan" if v is None else f"{v:.3f}"                     # noqa: E731
    print(f"n={n} e2e_ratio_vs_sdpa={f(xe)} engine_ratio_vs_sdpa={f(ge)} ratio_vs_eager={f(xv)} "
          f"peak_rss_mib={'nan' if pk is None else f'{pk:.0f}'}")


if __name__ == "__main__":
    main()
