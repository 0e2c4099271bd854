"""Corpus mode (issue 8 item 8): input errors, the aggregation by hand, and the real fan-out: the same
corpus.json numbers in-process and on two Celery workers over a real redis-server, also when one worker
is SIGKILLed mid-run (its text is redelivered to the other and counted once), and a fallback with a
warning when Redis does not answer."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from dataclasses import asdict

import numpy as np
import pytest

from compute import corpus, corpus_run, tasks
from compute.limits import limited_options
from compute.cli import main as cli_main
from compute.options import AnalysisOptions
from compute.errors import InputError

from deploy_procs import REDIS_BIN, Redis, base_env, celery_worker, shared_cache_dir, stop, wait_log

TEXTS = ["The cat sat on the mat, and then it slept.",
         "Attention sinks appear in many language models.",
         "def add(a, b):\n    return a + b\n",
         "Paris is the capital of France. Rome is the capital of Italy.",
         "One two three four five six seven eight nine ten.",
         " ".join(["In the long middle of a document, the model attends less to what it reads."] * 8),
         "Hi"]
OPTS = AnalysisOptions(compute_loss=True)


def write_corpus(path, prefix=""):
    path.write_text("\n".join(json.dumps({"id": f"{prefix}{i}", "text": t}) for i, t in enumerate(TEXTS)) + "\n")
    return path


# ---------------------------------------------------------------- input errors

@pytest.mark.parametrize("content,match", [
    ('{"id": 1, "text": "ok"}\n{"id": 2, "text": "fine"\n', r"line 2: not valid JSON"),
    ('{"id": 1, "text": "ok"}\n\n["a list"]\n', r"line 3: expected an object"),
    ('{"id": 1, "text": "ok"}\n{"text": "no id"}\n', r'line 2: "id" must be'),
    ('{"id": true, "text": "bool id"}\n', r'line 1: "id" must be'),
    ('{"id": 1, "text": "   "}\n', r'line 1: "text" must be a non-empty string'),
    ('{"id": 1, "text": 5}\n', r'line 1: "text" must be'),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"line 2: id 'a' already used on line 1"),
    ("\n\n", r"holds no texts"),
])
def test_bad_corpus_lines_name_the_line(tmp_path, content, match):
    f = tmp_path / "c.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=match):
        corpus.read_corpus(f)


def test_cli_corpus_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'{"id": 1, "text": "ok"}\n{"id": 2, "text": "\xff\xfe"}\n')
    assert cli_main(["analyze", "--corpus", str(f), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "line 2: not UTF-8" in err and "\n" not in err
    assert cli_main(["analyze", "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:           # the text sources are mutually exclusive
        cli_main(["analyze", "--corpus", str(f), "--text", "x", "--out", str(tmp_path / "o")])
    assert ei.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- aggregation by hand

def test_positional_calibration_by_hand():
    # one layer, one head, 5 keys, 2 buckets: keys 0,1,2 -> bucket 0 (j*2//5), keys 3,4 -> bucket 1
    colsum = np.array([[[3.0, 1.0, 0.5, 0.25, 0.25]]])
    n_queries = np.array([[[5.0, 4.0, 3.0, 2.0, 1.0]]])
    mass, recv = corpus.positional_calibration(colsum, n_queries, n_buckets=2)
    np.testing.assert_allclose(mass[0, 0], [1.5 / 2.0, 0.5 / 2.0])        # token 0 (the sink) excluded
    np.testing.assert_allclose(recv[0, 0], [(1 / 4 + 0.5 / 3) / 2, (0.25 / 2 + 0.25 / 1) / 2])
    m3, r3 = corpus.positional_calibration(colsum[..., :2], n_queries[..., :2], n_buckets=2)
    assert np.isnan(m3).all() and np.isnan(r3).all()                  # bucket 0 holds only the sink
    m1, r1 = corpus.positional_calibration(colsum[..., :1], n_queries[..., :1], n_buckets=2)
    assert np.isnan(m1).all() and np.isnan(r1).all()                  # a one-token text has no context


def test_aggregate_by_hand_and_once_per_id():
    def summ(v, pos):
        return {"n_tokens": 3, "n_layers": 1, "n_heads": 2, "model": "m", "loss": 1.0,
                "metrics": {"sink_mass_mean": corpus._tolist(np.array([[v, np.nan]]))},
                "position_mass": corpus._tolist(np.array([[pos, pos]])),
                "position_received": corpus._tolist(np.array([[pos, pos]]))}
    items = [("a", "x"), ("b", "y"), ("c", "z"), ("d", "w")]
    results = {"a": {"ok": True, "summary": summ(1.0, [1.0, 0.0])},
               "b": {"ok": True, "summary": summ(3.0, [0.0, 1.0])},
               "c": {"ok": False, "error": "the text is empty"}}
    agg = corpus.aggregate(items, results, {"model": "m"})
    assert agg["n_texts"] == 2 and agg["ids"] == ["a", "b"] and agg["failed"] == {"c": "the text is empty"}
    assert agg["missing"] == ["d"]
    h = agg["heads"]["sink_mass_mean"]
    assert h["mean"] == [[2.0, None]] and h["std"] == [[1.0, None]] and h["n"] == [[2, 0]]
    assert agg["positional_calibration"]["position_mass"]["mean"] == [[[0.5, 0.5], [0.5, 0.5]]]
    assert agg["positional_calibration"]["position_mass_all_heads"] == [0.5, 0.5]
    json.dumps(agg, allow_nan=False)                                  # strict JSON


# ---------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus_inproc")
    f = write_corpus(d / "c.jsonl")
    agg = corpus_run.run_corpus(str(f), str(d / "out"), "smollm2-135m", OPTS, redis_url="", quiet=True, per_text=True)
    return agg


def assert_same_numbers(a: dict, b: dict):
    assert a["n_texts"] == b["n_texts"] == len(TEXTS)
    assert set(a["heads"]) == set(b["heads"])
    for metric in a["heads"]:
        for stat in ("mean", "std"):
            x = np.array(a["heads"][metric][stat], dtype=float)
            y = np.array(b["heads"][metric][stat], dtype=float)
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=f"{metric} {stat}")
    for key in ("position_mass", "position_received"):
        x = np.array(a["positional_calibration"][key]["mean"], dtype=float)
        y = np.array(b["positional_calibration"][key]["mean"], dtype=float)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert a["n_tokens_total"] == b["n_tokens_total"]


def test_inprocess_corpus_json(inprocess, tmp_path_factory):
    agg = inprocess
    assert agg["mode"] == "in-process" and agg["n_texts"] == len(TEXTS) and not agg["failed"]
    L, H = agg["n_layers"], agg["n_heads"]
    for metric in ("sink_mass_mean", "entropy_mean", "entropy_norm_mean", "prev_token_mean", "local_mean",
                   "sink_metric"):
        m = np.array(agg["heads"][metric]["mean"], dtype=float)
        s = np.array(agg["heads"][metric]["std"], dtype=float)
        assert m.shape == (L, H) and s.shape == (L, H) and np.isfinite(m).all() and (s >= 0).all(), metric
    if any(k.startswith("role_") for k in agg["heads"]):
        assert "role_previous-token" in agg["heads"]
    cal = np.array(agg["positional_calibration"]["position_mass"]["mean"], dtype=float)
    assert cal.shape == (L, H, corpus.N_BUCKETS)
    np.testing.assert_allclose(np.nansum(cal, -1), 1.0, atol=1e-6)    # each head's shares sum to 1
    # role stability against the per-text labels (texts/NNNNN.json): the most frequent role and its share
    out = Path(agg["corpus"]).parent / "out" / "texts"
    labels = [json.loads(p.read_text())["summary"]["labels"] for p in sorted(out.glob("*.json"))]
    assert len(labels) == len(TEXTS) == agg["role_stability_texts"]
    from collections import Counter
    for l, h in [(0, 0), (L - 1, H - 1), (L // 2, 3)]:
        c = Counter(t[l][h] for t in labels)
        top = max(c.values())
        assert agg["role_stability"][l][h] == pytest.approx(top / len(TEXTS))
        assert c[agg["role_mode"][l][h]] == top
        rec = agg["per_head"][l * H + h]
        assert rec["id"] == f"{l}.{h}" and rec["role_mode"] == agg["role_mode"][l][h]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    d = tmp_path_factory.mktemp("cluster")
    redis = Redis(d)
    env = base_env(REDIS_URL=redis.url, ATTNVIS_CACHE_DIR=shared_cache_dir(d), ATTNVIS_PRELOAD_MODELS="smollm2-135m",
                   ATTNVIS_TASK_VISIBILITY_S="10", ATTNVIS_SERVER_MODE="1")
    workers = {}
    try:
        for name in ("w1", "w2"):
            log = d / f"{name}.log"
            workers[name] = (celery_worker(name, env, log), log)
        for name, (proc, log) in workers.items():
            wait_log(log, " ready.", 180, proc)
        yield {"redis": redis, "workers": workers, "dir": d}
    finally:
        for proc, _ in workers.values():
            stop(proc)
        redis.stop()


def test_celery_fanout_gives_the_same_numbers(cluster, inprocess, monkeypatch):
    monkeypatch.setenv("ATTNVIS_TASK_VISIBILITY_S", "10")
    d = cluster["dir"]
    f = write_corpus(d / "same.jsonl")
    agg = corpus_run.run_corpus(str(f), str(d / "same"), "smollm2-135m", OPTS, redis_url=cluster["redis"].url,
                            quiet=True, per_text=True)
    assert agg["mode"] == "celery"
    assert_same_numbers(inprocess, agg)
    workers = {json.loads(p.read_text())["worker"].split("@")[0] for p in (d / "same" / "texts").glob("*.json")}
    assert workers <= {"w1", "w2"}


def test_a_killed_worker_s_text_is_retried_and_counted_once(cluster, inprocess, monkeypatch):
    monkeypatch.setenv("ATTNVIS_TASK_VISIBILITY_S", "10")
    d = cluster["dir"]
    f = write_corpus(d / "kill.jsonl", prefix="k")          # new ids: a new run, nothing reused
    w1, w1_log = cluster["workers"]["w1"]
    r = cluster["redis"].client()
    out: dict = {}

    def submit():
        try:
            out["agg"] = corpus_run.run_corpus(str(f), str(d / "kill"), "smollm2-135m", OPTS,
                                           redis_url=cluster["redis"].url, quiet=True, per_text=True)
        except Exception as exc:  # reported below
            out["error"] = exc

    t = threading.Thread(target=submit)
    t.start()
    run = corpus.run_key(corpus.read_corpus(f), "smollm2-135m", asdict(limited_options(OPTS)), corpus.N_BUCKETS)
    keys = {tasks.text_key(run, f"k{i}"): i for i in range(len(TEXTS))}
    killed_key = None
    t0 = time.monotonic()
    while killed_key is None and time.monotonic() - t0 < 120 and t.is_alive():
        for key in keys:                     # a text w1 has started and not finished: kill w1 now
            if r.get(key + ":started") == str(w1.pid).encode() and not r.exists(key):
                w1.send_signal(signal.SIGKILL)
                killed_key = key
                break
        time.sleep(0.02)
    assert killed_key, "worker w1 was never caught in the middle of a text"
    w1.wait(10)
    t.join(300)
    assert not t.is_alive(), "the corpus run did not finish after a worker died"
    assert "error" not in out, out.get("error")
    agg = out["agg"]
    assert agg["mode"] == "celery" and not agg["failed"] and not agg["missing"]
    assert_same_numbers(inprocess, agg)                     # every text counted exactly once
    # the text w1 died on was redelivered and finished on w2
    done = json.loads(r.get(killed_key))
    assert done["ok"] and done["worker"].startswith("w2@")
    per_text = [json.loads(p.read_text()) for p in (d / "kill" / "texts").glob("*.json")]
    assert sorted(p["id"] for p in per_text) == sorted(f"k{i}" for i in range(len(TEXTS)))


def test_redis_down_falls_back_with_a_warning(tmp_path, inprocess):
    from deploy_procs import free_port
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": "x", "text": TEXTS[0]}) + "\n")
    logs = []
    agg = corpus_run.run_corpus(str(f), str(tmp_path / "o"), "smollm2-135m", OPTS,
                            redis_url=f"redis://127.0.0.1:{free_port()}/0", quiet=True, log=logs.append)
    assert agg["mode"] == "in-process" and agg["n_texts"] == 1
    assert len(logs) == 1 and logs[0].startswith("warning: Redis at redis://127.0.0.1:") and "in this process" in logs[0]
