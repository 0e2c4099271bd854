"""The deployed app with real parts (issue 8 items 2, 4 and 6): gunicorn (2 workers) + redis-server +
a Celery worker, all on loopback, driven over HTTP exactly as the Dash renderer drives it.

  * an analysis submitted through one gunicorn worker runs on the Celery worker (the web processes
    never load the model) and is served from Redis by the other gunicorn worker;
  * a Celery worker SIGKILLed mid-analysis: the user gets a one-line error, Redis holds no entry of that
    analysis (no half-written result), and the same request succeeds once a worker is back;
  * a corrupted cache entry in Redis is dropped and recomputed;
  * Redis stopped: every callback answers (no 500) with a clear message, and the app recovers when
    Redis is back.
Which gunicorn worker served a request is read from gunicorn's access log (pid per line).
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from deploy_procs import (REDIS_BIN, LOOPBACK, DashClient, Redis, base_env, celery_worker, free_port, gunicorn,
                          layout_values, shared_cache_dir, stop, wait_http, wait_log)
from visapp import hardening, ids

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed (apt-get install "
                                                          "redis-server; .ci/run does it)")
SHORT = "The cat sat on the mat. The dog sat on the log."


class Stack:
    """redis + one Celery worker (restartable) + gunicorn with 2 workers, in one tmp folder."""

    def __init__(self, d, **extra_env):
        self.dir = d
        self.redis = Redis(d)
        self.env = base_env(REDIS_URL=self.redis.url, ATTNVIS_CACHE_DIR=shared_cache_dir(d), ATTNVIS_SERVER_MODE="1",
                            ATTNVIS_PRELOAD_MODELS="smollm2-135m", **extra_env)
        self.n_workers = 0
        self.worker = self.web = None
        try:
            self.start_worker()
            self.port = free_port()
            self.base = f"http://{LOOPBACK}:{self.port}"
            self.glog = d / "gunicorn.log"
            self.web = gunicorn(self.env, self.port, self.glog, workers=2, threads=2)
            wait_http(self.base + "/healthz", 120, self.web, self.glog)
            wait_log(self.wlog, " ready.", 240, self.worker)
        except BaseException:
            self.close()                 # nothing left running when the start fails
            raise

    def start_worker(self):
        self.n_workers += 1
        self.wlog = self.dir / f"celery{self.n_workers}.log"
        self.worker = celery_worker(f"w{self.n_workers}", self.env, self.wlog, app="app:celery_app")

    def access(self) -> list[tuple[str, str]]:
        """[(pid, request line)] of gunicorn's access log so far."""
        out = []
        for line in self.glog.read_text(errors="replace").splitlines():
            if ' "POST ' in line or ' "GET ' in line:
                pid, rest = line.split(" ", 1)          # access log format '%(p)s ...': "<pid> ..."
                pid = pid.strip("<>")
                if pid.isdigit():
                    out.append((pid, rest))
        return out

    def close(self):
        stop(self.web)
        stop(self.worker)
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("web"))
    yield s
    s.close()


def analysis_values(client: DashClient, text: str) -> dict:
    import requests
    values = layout_values(requests.get(client.base + "/_dash-layout", timeout=60).json())
    values[f"{ids.TEXT}.value"] = text
    values[f"{ids.MODEL}.value"] = "smollm2-135m"
    values[f"{ids.MODEL_PATH}.value"] = ""
    values[f"{ids.ANALYZE}.n_clicks"] = 1
    return values


def done_key(resp: dict) -> str:
    done = resp.get("response", {}).get(ids.DONE, {}).get("data")
    assert done, f"the analysis did not finish: {error_text(resp) or json.dumps(resp)[:500]}"
    return done["key"]


def submit(client, text, timeout=600, on_poll=None):
    """Press Analyze; follow the background callback. Returns the final response's json."""
    values = analysis_values(client, text)
    final, polls = client.background(ids.DONE, "data", values, [f"{ids.ANALYZE}.n_clicks"], timeout=timeout,
                                     on_poll=on_poll)
    assert final.status_code == 200, final.text[:500]
    for p in polls:
        assert p.status_code in (200, 204), p.text[:500]
    return final.json()


def error_text(resp: dict) -> str:
    """The error box's text in a callback response (set through sideUpdate by the app's on_error, or
    as the callback's own output)."""
    box = (resp.get("sideUpdate", {}).get(ids.ERROR, {}) or resp.get("response", {}).get(ids.ERROR, {}))
    return json.dumps(box.get("children", ""))


def run_info(client, key: str):
    values = {f"{ids.STATE}.data": {"a": key, "view": "overview", "head": "0.0"}}
    return client.call(ids.RUN_INFO, "children", values, [f"{ids.STATE}.data"])


def served_elsewhere(stack, client, key, not_pid: str, tries: int = 40):
    """Ask for the cached result until a gunicorn worker other than not_pid answers; return its reply."""
    for _ in range(tries):
        n = len(stack.access())
        r = run_info(client, key)
        time.sleep(0.05)
        pid = stack.access()[n][0] if len(stack.access()) > n else None
        if pid and pid != not_pid:
            return pid, r
    pytest.fail(f"every request went to gunicorn worker {not_pid}")


def test_analysis_runs_on_celery_and_any_web_worker_serves_it(stack):
    import psutil
    client = DashClient(stack.base)
    n0 = len(stack.access())
    key = done_key(submit(client, SHORT))
    submit_pid = next(pid for pid, line in stack.access()[n0:]
                      if "_dash-update-component" in line and "cacheKey" not in line)
    # it ran on the Celery worker...
    wait_log(stack.wlog, "succeeded", 30)
    assert "background_callback_" in stack.wlog.read_text()
    # ...and the result is in Redis, written whole (the core piece is written last)
    r = stack.redis.client()
    assert r.exists(f"attnvis:app:{key}:core") and r.exists(f"attnvis:app:{key}:req")
    # served by the other gunicorn worker from Redis
    pid, reply = served_elsewhere(stack, client, key, submit_pid)
    assert reply.status_code == 200
    body = reply.json()["response"][ids.RUN_INFO]["children"]
    assert "smollm2-135m" in body and "tokens" in body
    # the web processes never loaded the model (their memory is far below the 0.5 GB of fp32 weights)
    workers = psutil.Process(stack.web.pid).children()
    assert len(workers) == 2
    for w in workers:
        assert w.memory_info().rss < 450 * 2**20, f"gunicorn worker {w.pid} holds {w.memory_info().rss >> 20} MiB"


def test_worker_killed_mid_analysis_user_sees_error_and_retry_works(stack):
    client = DashClient(stack.base)
    text = " ".join(["Killing a worker in the middle of an analysis must not leave half a result."] * 12)
    killed = {}

    def on_poll(r):
        # kill the worker as soon as the job reports progress (it is then running on the worker)
        if "worker" not in killed and r.status_code == 200 and r.content and "progress" in r.json():
            stack.worker.send_signal(signal.SIGKILL)
            stack.worker.wait(10)
            killed["worker"] = time.monotonic()

    resp = submit(client, text, timeout=300, on_poll=on_poll)
    assert killed, "the job never reported progress"
    msg = error_text(resp)
    assert "stopped before it finished" in msg and "retry" in msg, resp
    assert "Traceback" not in json.dumps(resp)
    assert time.monotonic() - killed["worker"] < 60
    # no half-written entry of that analysis
    r = stack.redis.client()
    assert not [k for k in r.scan_iter("attnvis:app:*:core")
                if r.get(k.decode().replace(":core", ":req")) and text in r.get(k.decode().replace(":core", ":req")).decode("latin-1")]
    # a new worker; the user presses Analyze again
    stack.start_worker()
    wait_log(stack.wlog, " ready.", 240, stack.worker)
    resp = submit(client, text, timeout=600)
    assert r.exists(f"attnvis:app:{done_key(resp)}:core")


def test_corrupted_cache_entry_is_recomputed(stack):
    client = DashClient(stack.base)
    text = "A corrupted cache entry must be recomputed, not crash the page."
    key = done_key(submit(client, text))
    r = stack.redis.client()
    core = f"attnvis:app:{key}:core"
    r.set(core, b"!" + b"\x80\x05garbage-not-a-pickle")            # cachelib's pickle marker + junk
    reply = run_info(client, key)
    assert reply.status_code == 200
    assert "analysing" in json.dumps(reply.json())                    # reads as not cached, no error
    assert not r.exists(core)                                         # and the bad entry is gone
    r.set(core, b"raw bytes without the pickle marker")
    assert run_info(client, key).status_code == 200 and not r.exists(core)   # dropped
    # pressing Analyze again recomputes it
    again = done_key(submit(client, text))
    assert again == key and r.exists(core)
    assert "tokens" in json.dumps(run_info(client, key).json())


def test_redis_stopped_gives_a_clear_message_then_recovers(stack):
    client = DashClient(stack.base)
    key = done_key(submit(client, SHORT))
    port = stack.redis.port
    stack.redis.stop()
    try:
        # a result no web worker holds in memory (those it does hold are still shown)
        reply = run_info(client, "f" * 24)
        assert reply.status_code == 200, reply.text[:300]          # not a 500
        data = reply.json()
        assert "not reachable" in error_text(data) and "Traceback" not in reply.text
        # submitting an analysis while Redis is down: a clear message too
        values = analysis_values(client, "Redis is down right now.")
        first = client.post(client.payload(client.dep(ids.DONE, "data"), values, [f"{ids.ANALYZE}.n_clicks"]))
        assert first.status_code == 200, first.text[:300]
        assert "not reachable" in error_text(first.json())
        # the page itself still loads
        import requests
        assert requests.get(stack.base + "/", timeout=30).status_code == 200
    finally:
        # the same port again, as a restarted Redis would be
        stack.redis.proc = subprocess.Popen([REDIS_BIN, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                                             "--appendonly", "no"], stdout=open(stack.redis.log, "a"),
                                            stderr=subprocess.STDOUT)
        stack.redis.wait_up()
    # after Redis is back (empty: no persistence) and the worker's liveness beacon with it (every 5 s),
    # the app recomputes on demand
    r = stack.redis.client()
    t0 = time.monotonic()
    while not list(r.scan_iter("attnvis:worker:*")) and time.monotonic() - t0 < 60:
        time.sleep(0.5)
    resp = submit(client, SHORT, timeout=600)
    assert done_key(resp) == key


def test_hardening_messages_are_one_line():
    from compute.errors import InputError
    assert hardening.user_message(InputError("the text is empty")) == "the text is empty"
    assert "not reachable" in hardening.user_message(ConnectionRefusedError(111, "refused"))
    lost = Exception("An error occurred inside a background callback: " + hardening.LOST_MARK + hardening.LOST_JOB
                     + "\nTraceback (most recent call last): ...")
    assert hardening.user_message(lost) == hardening.LOST_JOB
    m = hardening.user_message(KeyError("x"))
    assert m.startswith("internal error (KeyError)") and "\n" not in m
