"""Load test: N simulated users against gunicorn (several workers) on 127.0.0.1, for a fixed time.

It starts its own gunicorn (and, with --mode redis, its own redis-server and a Celery worker) on free
loopback ports, runs the default analysis once (so users browse a cached result, the normal case for a
tutorial room), then lets every user loop like a browser would: load the page (index + layout), click a
head (the URL/state callback, then every callback that depends on the state, as the renderer fires
them), switch views. It stops by itself at --duration seconds or --max-requests requests, whichever
comes first, stops what it started, and reports requests served, errors (must be 0), p50/p95 latency.

Only loopback: the script never connects anywhere else.

    python bench/load_test.py --users 20 --duration 60 --workers 2 --threads 4 --out bench/results/load_test.md

--analyses N adds N clients that each keep submitting a new analysis (a new text each time) while the
users browse: browsing latency is reported without them, the analyses' end-to-end times and refusals
separately, and the peak memory of the whole process tree (gunicorn, its job processes, the Celery
worker) is sampled every 0.5 s, to show it stays bounded by the job cap (ATTNVIS_JOB_SLOTS).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from deploy_procs import (LOOPBACK, DashClient, Redis, base_env, celery_worker, free_port,  # noqa: E402
                          gunicorn, layout_values, shared_cache_dir, stop, wait_http, wait_log)

VIEWS = ("overview", "head", "sinks", "entropy", "graphs", "basin")
ERROR_MARKERS = ("Traceback", "internal error")


class Recorder:
    def __init__(self, max_requests: int, deadline: float):
        self.lock = threading.Lock()
        self.samples: list[tuple[str, float, bool]] = []
        self.status: dict[int, int] = defaultdict(int)
        self.errors: list[str] = []
        self.max_requests = max_requests
        self.deadline = deadline

    def done(self) -> bool:
        return time.monotonic() >= self.deadline or len(self.samples) >= self.max_requests

    def timed(self, label: str, fn):
        t0 = time.perf_counter()
        ok, note = True, ""
        resp = None
        try:
            resp = fn()
            if resp.status_code >= 400:
                ok, note = False, f"HTTP {resp.status_code}"
            elif any(m in resp.text for m in ERROR_MARKERS):
                ok, note = False, "error text in the response"
        except Exception as exc:  # timeouts, refused connections
            ok, note = False, f"{exc.__class__.__name__}: {exc}"
        dt = time.perf_counter() - t0
        with self.lock:
            self.samples.append((label, dt, ok))
            if resp is not None:
                self.status[resp.status_code] += 1
            if not ok:
                self.errors.append(f"{label}: {note}")
        return resp if ok else None


def user_loop(uid: int, base: str, rec: Recorder, ids: dict, defaults: dict, deps: list, seed: int):
    import requests

    rng = random.Random(seed + uid)
    client = DashClient.__new__(DashClient)          # share the page config fetched once
    client.base, client.end_id, client.deps, client.config = base, ids["end_id"], deps, {}
    state = ids["state"]
    L, H = ids["layers"], ids["heads"]
    state_deps = [d for d in deps if any(x["id"] == ids["STATE"] and x["property"] == "data" for x in d["inputs"])
                  and not d.get("background") and d["output"] != f"{ids['URL']}.search"]
    sync = client.dep(ids["URL"], "search")
    while not rec.done():
        action = rng.random()
        if action < 0.15:                                        # a page load
            rec.timed("GET /", lambda: requests.get(base + "/", timeout=60))
            rec.timed("GET /_dash-layout", lambda: requests.get(base + "/_dash-layout", timeout=60))
            continue
        values = dict(defaults)
        values[f"{ids['URL']}.pathname"] = "/" + state.get("view", "overview")
        values[f"{ids['URL']}.search"] = ids["search"]
        if action < 0.35:                                        # switch view
            view = rng.choice(VIEWS)
            values[f"{ids['URL']}.pathname"] = "/" + view
            changed = [f"{ids['URL']}.pathname"]
        else:                                                    # click a head in the overview grid
            l, h = rng.randrange(L), rng.randrange(H)
            values[f"{ids['OV_GRAPH']}.clickData"] = {"points": [{"customdata": [l, h]}]}
            changed = [f"{ids['OV_GRAPH']}.clickData"]
        r = rec.timed("callback sync_state", lambda: client.post(client.payload(sync, values, changed)))
        if r is None or r.status_code == 204:
            continue
        resp = r.json().get("response", {})
        new_state = resp.get(ids["STATE"], {}).get("data")
        if new_state:
            state = new_state
        for d in state_deps:                                     # what the renderer fires next
            if rec.done():
                break
            v = dict(values)
            v[f"{ids['STATE']}.data"] = state
            name = d["output"].strip(".").split(".")[0][:24]
            rec.timed(f"callback <- state ({name})",
                      lambda d=d, v=v: client.post(client.payload(d, v, [f"{ids['STATE']}.data"])))


def analysis_loop(uid: int, base: str, rec: Recorder, ids: dict, defaults: dict, deps: list, stats: dict):
    """One client submitting new analyses back to back (as the renderer does: start, then poll)."""
    client = DashClient.__new__(DashClient)
    client.base, client.end_id, client.deps, client.config = base, ids["end_id"], deps, {}
    dep = client.dep(ids["DONE"], "data")
    n = 0
    while not rec.done():
        n += 1
        values = dict(defaults)
        values.update({f"{ids['TEXT']}.value": f"Client {uid} asks question {n}: why do attention heads sink "
                                                f"onto the first token of a sentence like this one?",
                       f"{ids['MODEL']}.value": "smollm2-135m", f"{ids['MODEL_PATH']}.value": "",
                       f"{ids['ANALYZE']}.n_clicks": n})
        body = client.payload(dep, values, [f"{ids['ANALYZE']}.n_clicks"])
        t0 = time.perf_counter()
        try:
            first = client.post(body)
            handles = first.json() if first.status_code == 200 else {}
            if "cacheKey" not in handles:
                with rec.lock:
                    stats["refused" if first.status_code == 200 else "errors"] += 1
                time.sleep(1.0)
                continue
            while True:
                r = client.post(body, cacheKey=handles["cacheKey"], job=handles["job"])
                data = r.json() if r.status_code == 200 and r.content else {}
                if r.status_code >= 400:
                    raise RuntimeError(f"HTTP {r.status_code}")
                if "response" in data or "sideUpdate" in data:
                    ok = bool(data.get("response", {}).get(ids["DONE"], {}).get("data"))
                    with rec.lock:
                        stats["done" if ok else "failed"] += 1
                        if ok:
                            stats["seconds"].append(time.perf_counter() - t0)
                    break
                time.sleep(0.5)
        except Exception as exc:
            with rec.lock:
                stats["errors"] += 1
                rec.errors.append(f"analysis: {exc.__class__.__name__}: {exc}")


def tree_rss(pids: list[int]) -> int:
    """Memory of the process trees: PSS (shared pages split among their sharers, so the model pages a
    forked job shares with its web process count once), RSS where PSS cannot be read."""
    import psutil
    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p] + p.children(recursive=True):
                try:
                    try:
                        total += q.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):
                        total += q.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
    return total


def prepare(base: str, ids: dict, timeout: float) -> dict:
    """Run the default analysis once through the app (boot -> analysis job) and return the state."""
    import requests
    client = DashClient(base)
    layout = requests.get(base + "/_dash-layout", timeout=60).json()
    defaults = layout_values(layout)
    values = dict(defaults)
    values[f"{ids['URL']}.pathname"] = "/overview"
    values[f"{ids['URL']}.search"] = ""
    r = client.call(ids["AUTORUN"], "data", values, [f"{ids['URL']}.pathname"])
    if r.status_code == 200:
        autorun = r.json()["response"][ids["AUTORUN"]]["data"]
        values[f"{ids['AUTORUN']}.data"] = autorun
        final, _ = client.background(ids["DONE"], "data", values, [f"{ids['AUTORUN']}.data"], timeout=timeout)
        resp = final.json()["response"]
        done = resp.get(ids["DONE"], {}).get("data")
        if not done:
            raise RuntimeError(f"the default analysis failed: {json.dumps(resp)[:500]}")
    # the state after the analysis: the sync callback as the page would run it
    values[f"{ids['DONE']}.data"] = None
    sync = client.dep(ids["URL"], "search")
    r = client.post(client.payload(sync, values, [f"{ids['URL']}.pathname"]))
    resp = r.json()["response"]
    state = resp[ids["STATE"]]["data"]
    search = resp.get(ids["URL"], {}).get("search", "")
    layers = len(resp.get(ids["HD_LAYER"], {}).get("options") or [1])
    heads = len(resp.get(ids["HD_HEAD"], {}).get("options") or [1])
    return {"client": client, "defaults": defaults, "state": state, "search": search, "layers": layers,
            "heads": heads}


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> str:
    import psutil
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return (f"{cpu}, {psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {gpu}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20, help="concurrent simulated users (default 20)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    ap.add_argument("--max-requests", type=int, default=50_000, help="stop after this many requests")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    ap.add_argument("--mode", choices=["embedded", "redis"], default="embedded",
                    help="embedded: file-system cache + diskcache jobs; redis: Redis cache + a Celery worker")
    ap.add_argument("--analysis-timeout", type=float, default=900, help="seconds allowed for the warm-up analysis")
    ap.add_argument("--analyses", type=int, default=0, help="clients submitting new analyses meanwhile (default 0)")
    ap.add_argument("--job-slots", type=int, default=2, help="ATTNVIS_JOB_SLOTS of the server (embedded mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="append-free: write the markdown report here")
    args = ap.parse_args(argv)
    if not (1 <= args.users <= 500 and 0 < args.duration <= 3600 and 1 <= args.workers <= 32
            and 0 <= args.analyses <= 100 and 1 <= args.job_slots <= 64):
        ap.error("users 1..500, duration 0..3600 s, workers 1..32, analyses 0..100, job slots 1..64")

    from visapp import ids as vids
    ids = {"URL": vids.URL, "STATE": vids.STATE, "DONE": vids.DONE, "AUTORUN": vids.AUTORUN,
           "OV_GRAPH": vids.OV_GRAPH, "HD_LAYER": vids.HD_LAYER, "HD_HEAD": vids.HD_HEAD, "TEXT": vids.TEXT,
           "MODEL": vids.MODEL, "MODEL_PATH": vids.MODEL_PATH, "ANALYZE": vids.ANALYZE}
    work = Path(tempfile.mkdtemp(prefix="attnvis-load-"))
    procs, redis = [], None
    # every simulated client comes from 127.0.0.1: the per-client cap would be a global one, so it is
    # raised to the number of analysis clients; the global cap and the job slots stay as configured
    env = base_env(ATTNVIS_CACHE_DIR=shared_cache_dir(work), ATTNVIS_SERVER_MODE="1", OMP_NUM_THREADS="1",
                   ATTNVIS_JOB_SLOTS=args.job_slots, ATTNVIS_CLIENT_JOBS=max(2, args.analyses + 1),
                   ATTNVIS_TORCH_THREADS="1")
    try:
        if args.mode == "redis":
            redis = Redis(work)
            env["REDIS_URL"] = redis.url
            wlog = work / "celery.log"
            procs.append(celery_worker("load", env | {"ATTNVIS_PRELOAD_MODELS": "smollm2-135m"}, wlog,
                                       app="app:celery_app"))
            wait_log(wlog, " ready.", 300, procs[-1])
        port = free_port()
        base = f"http://{LOOPBACK}:{port}"
        glog = work / "gunicorn.log"
        procs.append(gunicorn(env, port, glog, workers=args.workers, threads=args.threads))
        wait_http(base + "/healthz", 120, procs[-1], glog)
        t0 = time.monotonic()
        prep = prepare(base, ids, args.analysis_timeout)
        print(f"warm-up analysis cached in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        ids.update(end_id=prep["client"].end_id, state=prep["state"], search=prep["search"],
                   layers=prep["layers"], heads=prep["heads"])
        load_before = os.getloadavg()[0]
        rec = Recorder(args.max_requests, time.monotonic() + args.duration)
        threads = [threading.Thread(target=user_loop, args=(u, base, rec, ids, prep["defaults"], prep["client"].deps,
                                                             args.seed), daemon=True) for u in range(args.users)]
        astats = {"done": 0, "failed": 0, "refused": 0, "errors": 0, "seconds": []}
        arec = Recorder(10**9, rec.deadline)
        arec.errors = rec.errors
        threads += [threading.Thread(target=analysis_loop, args=(u, base, arec, ids, prep["defaults"],
                                                                 prep["client"].deps, astats), daemon=True)
                    for u in range(args.analyses)]
        rss0 = tree_rss([p.pid for p in procs])
        peak = [rss0]
        stop_sampling = threading.Event()

        def sample():
            while not stop_sampling.is_set():
                peak[0] = max(peak[0], tree_rss([p.pid for p in procs]))
                stop_sampling.wait(0.5)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.duration + 120)
        elapsed = time.monotonic() - t_start
        stop_sampling.set()
        sampler.join()
        pids = set()
        for line in glog.read_text(errors="replace").splitlines():
            if '"POST /_dash-update-component' in line or '"GET /' in line:
                pids.add(line.split(" ", 1)[0].strip("<>"))
    finally:
        for p in reversed(procs):
            stop(p)
        if redis:
            redis.stop()

    lat = [dt for _, dt, ok in rec.samples if ok]
    by = defaultdict(list)
    for label, dt, ok in rec.samples:
        by[label].append(dt)
    lines = [f"# Load test ({args.mode} mode)", "",
             f"- machine: {machine()}; load average {load_before:.1f} (1 min) when the test started "
             "(the machine was shared with other work)",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- server: gunicorn app:server, {args.workers} workers x {args.threads} threads (gthread), "
             f"127.0.0.1; {'Redis cache + Celery worker' if args.mode == 'redis' else 'file-system cache + diskcache jobs'}",
             f"- load: {args.users} concurrent users for {args.duration:g} s (cap {args.max_requests:,} requests); "
             "each loops: page load (15%), view switch (20%), head click (65%), each click/switch followed by "
             "every callback that depends on the state, as the renderer fires them",
             f"- command: `python bench/load_test.py --users {args.users} --duration {args.duration:g} "
             f"--workers {args.workers} --threads {args.threads} --mode {args.mode}"
             + (f" --analyses {args.analyses} --job-slots {args.job_slots}" if args.analyses else "") + "`", "",
             "| requests served | errors | req/s | p50 latency | p95 latency | max latency | web workers that served |",
             "|---|---|---|---|---|---|---|",
             f"| {len(lat):,} | {len(rec.errors)} | {len(rec.samples) / elapsed:.1f} | "
             f"{1000 * percentile(lat, 0.5):.0f} ms | {1000 * percentile(lat, 0.95):.0f} ms | "
             f"{1000 * max(lat, default=float('nan')):.0f} ms | {len(pids)} |", "",
             "HTTP statuses: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(rec.status.items()))
             + " (204 = the callback of a view that is not shown declined to update, as in the browser)", "",
             "| request | count | p50 | p95 |", "|---|---|---|---|"]
    for label in sorted(by, key=lambda k: -len(by[k])):
        xs = by[label]
        lines.append(f"| {label} | {len(xs):,} | {1000 * percentile(xs, 0.5):.0f} ms | {1000 * percentile(xs, 0.95):.0f} ms |")
    if args.analyses:
        secs = astats["seconds"]
        lines += ["", f"Meanwhile {args.analyses} clients submitted new analyses back to back (embedded job slots: "
                      f"{args.job_slots}): {astats['done']} finished, {astats['failed']} failed, "
                      f"{astats['refused']} refused by admission control, {astats['errors']} errors; end-to-end "
                      f"p50 {percentile(secs, 0.5):.1f} s, p95 {percentile(secs, 0.95):.1f} s (queueing included). "
                      f"Process tree memory (PSS, gunicorn + jobs{' + Celery worker' if args.mode == 'redis' else ''}): "
                      f"{rss0 / 2**30:.2f} GiB before, peak {peak[0] / 2**30:.2f} GiB."]
    if rec.errors:
        lines += ["", "Errors (first 10):", ""] + [f"- {e}" for e in rec.errors[:10]]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    print(f"requests={len(lat)} errors={len(rec.errors)} p50_ms={1000 * percentile(lat, 0.5):.0f} "
          f"p95_ms={1000 * percentile(lat, 0.95):.0f}")
    return 0 if not rec.errors else 1


if __name__ == "__main__":
    sys.exit(main())
