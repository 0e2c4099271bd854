"""Issue 15 item 4 in embedded mode (no Redis): gunicorn with diskcache jobs runs at most
ATTNVIS_JOB_SLOTS jobs at once (the others show "queued, position N"), refuses a client over
ATTNVIS_CLIENT_JOBS with a message, and a job is never forked while a web thread is inside sqlite."""
from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from deploy_procs import LOOPBACK, DashClient, base_env, free_port, gunicorn, shared_cache_dir, stop, wait_http
from test_deploy_web import done_key, error_text
from test_safety_celery import LONG, Job


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety-embedded")
    env = base_env(ATTNVIS_CACHE_DIR=shared_cache_dir(d), ATTNVIS_SERVER_MODE="1", ATTNVIS_JOB_SLOTS="1",
                   ATTNVIS_CLIENT_JOBS="2", ATTNVIS_TORCH_THREADS="1")
    env.pop("REDIS_URL", None)
    port = free_port()
    log = d / "gunicorn.log"
    proc = gunicorn(env, port, log, workers=1, threads=4)
    try:
        wait_http(f"http://{LOOPBACK}:{port}/healthz", 120, proc, log)
        yield f"http://{LOOPBACK}:{port}", proc
    finally:
        stop(proc)


def busy_jobs(proc) -> int:
    """Job processes (children of the gunicorn worker) using CPU right now."""
    kids = [c for w in psutil.Process(proc.pid).children() for c in w.children()]
    for c in kids:
        try:
            c.cpu_percent(None)
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.5)
    n = 0
    for c in kids:
        try:
            n += c.cpu_percent(None) > 20
        except psutil.NoSuchProcess:
            pass
    return n


def test_slots_queue_position_and_client_cap(web):
    base, proc = web
    client = DashClient(base)
    a = Job(client, LONG)
    a.wait(180, until=lambda d: any("layer" in m or "loading" in m or "%" in m for m in a.messages) or "response" in d)
    b = Job(client, "A short text that waits for the slot.")
    b.wait(60, until=lambda d: any("queued, position 1" in m for m in b.messages))
    c = Job(client, "Over the cap.")
    assert not c.started and "already have 2 job(s)" in error_text(c.handles)
    assert max(busy_jobs(proc) for _ in range(4)) <= 1, "more jobs ran than ATTNVIS_JOB_SLOTS"
    a.cancel()                                  # frees the slot: B starts
    done = b.wait(240)
    assert done_key(done)


def test_no_fork_while_a_thread_is_inside_the_job_store():
    """The handle's lock is taken by fork: a fork waits for a call in progress to return."""
    from visapp.hardening import _fork_safe

    class Slow:
        def op(self):
            time.sleep(1.0)
            return time.monotonic()

    handle = _fork_safe(Slow())
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("returned", handle.op()))
    t.start()
    time.sleep(0.2)                             # the thread is inside the call now
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked = time.monotonic()
    os.waitpid(pid, 0)
    t.join()
    assert forked >= out["returned"], "fork went ahead while another thread was inside the store"
