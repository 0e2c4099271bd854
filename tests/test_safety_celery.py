"""Issue 15 items 2-4 on the real scale-out processes (redis-server, a Celery solo worker, gunicorn):
Cancel stops the running job on the solo worker, a waiting job shows its queue position, a client
over its cap is refused with a message, a job whose worker was killed is reported within 15 s and never
runs again (also when Redis redelivers it), poison jobs stop after ATTNVIS_TASK_RETRIES, and every key
the app writes expires."""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from deploy_procs import REDIS_BIN, DashClient, wait_log
from test_deploy_web import Stack, analysis_values, done_key, error_text
from visapp import ids

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")

LONG = " ".join(f"Sentence number {i} talks about attention heads, sinks and the basins of long inputs."
                for i in range(40))           # ~700 tokens: long enough to cancel or kill mid-run


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("safety-celery"), ATTNVIS_CLIENT_JOBS="2", ATTNVIS_TASK_VISIBILITY_S="10",
              ATTNVIS_TASK_RETRIES="1")
    yield s
    s.close()


class Job:
    """One background callback driven like the renderer, with access to its job handle."""

    def __init__(self, client: DashClient, text: str):
        self.client = client
        self.body = client.payload(client.dep(ids.DONE, "data"), analysis_values(client, text),
                                   [f"{ids.ANALYZE}.n_clicks"])
        self.first = client.post(self.body)
        assert self.first.status_code == 200, self.first.text[:300]
        self.handles = self.first.json()
        self.messages: list[str] = []

    @property
    def started(self) -> bool:
        return "cacheKey" in self.handles

    def poll(self) -> dict:
        r = self.client.post(self.body, cacheKey=self.handles["cacheKey"], job=self.handles["job"])
        assert r.status_code in (200, 204), r.text[:300]
        data = r.json() if r.content else {}
        prog = data.get("progress") or {}
        self.messages += [str(v) for v in prog.values()]
        return data

    def wait(self, timeout: float = 300, until=lambda d: "response" in d or "sideUpdate" in d) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            d = self.poll()
            if until(d):
                return d
            time.sleep(0.4)
        raise TimeoutError(f"job did not get there; messages {self.messages[-5:]}")

    def cancel(self):
        dep = self.client.dep(ids.CANCEL, "id")
        body = self.client.payload(dep, {f"{ids.CANCEL}.n_clicks": 1}, [f"{ids.CANCEL}.n_clicks"])
        r = self.client.post(body, cancelJob=self.handles["job"])
        assert r.status_code in (200, 204), r.text[:300]


def task_ids(r, state: str) -> list[str]:
    out = []
    for k in r.scan_iter("celery-task-meta-*"):
        meta = json.loads(r.get(k))
        if meta.get("status") == state:
            out.append(k.decode().split("celery-task-meta-", 1)[1])
    return out


def test_cancel_queue_position_and_client_cap(stack):
    client = DashClient(stack.base)
    r = stack.redis.client()
    a = Job(client, LONG)
    assert a.started
    a.wait(120, until=lambda d: bool(d.get("progress")))            # A runs on the only (solo) worker
    b = Job(client, "A short text that waits for the worker.")
    b.wait(30, until=lambda d: any("queued, position 2" in m for m in b.messages))
    # a third job of the same client is refused at once, with a message, and nothing is queued
    c = Job(client, "A third job is over the per-client cap.")
    assert not c.started
    assert "already have 2 job(s)" in error_text(c.handles) and "ATTNVIS_CLIENT_JOBS" in error_text(c.handles)
    # Cancel A: the solo worker stops it at its next layer (revoke cannot interrupt a solo task)
    t0 = time.monotonic()
    a.cancel()
    ended = [k for k in r.scan_iter("attnvis:job:*:ended") if r.get(k) == b"cancelled"]
    assert len(ended) == 1
    job_a = ended[0].decode().split(":")[2]
    while job_a not in task_ids(r, "SUCCESS") and time.monotonic() - t0 < 30:
        time.sleep(0.3)
    assert job_a in task_ids(r, "SUCCESS"), "the cancelled job still holds the worker"
    assert time.monotonic() - t0 < 30
    # ...so B runs now and finishes
    done = b.wait(240)
    assert done_key(done)
    assert not r.exists(f"attnvis:app:{Job.__name__}")          # (sanity: the prefix is attnvis:app:)


def test_killed_worker_job_is_reported_fast_and_never_runs_again(stack):
    client = DashClient(stack.base)
    r = stack.redis.client()
    text = LONG + " Killed."
    job = Job(client, text)
    job.wait(120, until=lambda d: bool(d.get("progress")))
    stack.worker.send_signal(signal.SIGKILL)
    stack.worker.wait(10)
    killed = time.monotonic()
    final = job.wait(60)
    assert time.monotonic() - killed < 15, "the page was not told within 15 s"
    assert "stopped before it finished" in error_text(final)
    lost = [k.decode().split(":")[2] for k in r.scan_iter("attnvis:job:*:ended") if r.get(k) == b"lost"]
    assert len(lost) == 1
    # a new worker; wait past the visibility timeout (10 s here) and the broker's restore sweep
    stack.start_worker()
    wait_log(stack.wlog, " ready.", 240, stack.worker)
    time.sleep(15)
    attempts = int(r.get(f"attnvis:job:{lost[0]}:attempts") or 0)
    assert attempts == 1, f"the lost job ran {attempts} times"
    log = stack.wlog.read_text(errors="replace")
    assert lost[0] not in log or "ended before it started" in log, "the lost job was run again"
    # no partial entry of that text
    for k in r.scan_iter("attnvis:app:*:req"):
        assert text not in r.get(k).decode("latin-1"), "a piece of the killed analysis was left"


def test_poison_job_stops_after_the_configured_attempts(stack, monkeypatch):
    """The guard inside a real Celery task (executed in this process): delivered again and again with the
    same id, it runs at most ATTNVIS_TASK_RETRIES + 1 times, then ends with a message."""
    from celery import Celery
    from dash.exceptions import PreventUpdate

    from compute.errors import UserError
    from visapp.jobguard import RedisJobs, celery_guard

    monkeypatch.setenv("ATTNVIS_TASK_RETRIES", "2")
    runs = []
    jobs = RedisJobs(lambda: stack.redis.client())
    app = Celery("poison", broker=stack.redis.url, backend=stack.redis.url)
    def body(x):
        runs.append(x)
        return x
    task = app.task(name="poison")(celery_guard(body, False, jobs))
    outcomes = [task.apply(args=(i,), task_id="poison-job") for i in range(5)]
    assert runs == [0, 1, 2]
    assert isinstance(outcomes[3].result, UserError) and "started 3 times" in str(outcomes[3].result)
    assert isinstance(outcomes[4].result, PreventUpdate)         # ended: never runs again
    jobs.end("cancelled-job", "cancelled")
    assert isinstance(task.apply(args=(9,), task_id="cancelled-job").result, PreventUpdate) and 9 not in runs


def test_every_key_the_app_writes_expires(stack):
    r = stack.redis.client()
    broker = ("_kombu", "unacked", "celery")                     # the broker's own queues and bindings
    keys = [k.decode() for k in r.scan_iter("*")]
    assert any(k.startswith("attnvis:app:") for k in keys)
    forever = [k for k in keys if r.ttl(k) == -1 and not (k.startswith(broker) and not k.startswith("celery-task-meta"))]
    assert forever == [], f"keys without expiry: {forever[:10]}"
