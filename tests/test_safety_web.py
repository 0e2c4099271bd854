"""Issue 15 items 4 (request-body limit), 6 (security headers) and 7 (ATTNVIS_DEBUG start) against the
real web server: gunicorn on loopback in embedded mode, and `python app.py` for the debug start."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
import requests

from deploy_procs import LOOPBACK, REPO, base_env, free_port, gunicorn, shared_cache_dir, stop, wait_http
from visapp import ids, security

REQUIRED = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety-web")
    env = base_env(ATTNVIS_CACHE_DIR=shared_cache_dir(d), ATTNVIS_SERVER_MODE="1")
    env.pop("REDIS_URL", None)
    port = free_port()
    log = d / "gunicorn.log"
    proc = gunicorn(env, port, log, workers=1, threads=2)
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_http(base + "/healthz", 120, proc, log)
        yield base, proc
    finally:
        stop(proc)


def check_headers(r: requests.Response) -> None:
    missing = [h for h in REQUIRED if h not in r.headers]
    assert not missing, f"{r.request.method} {r.url} ({r.status_code}) lacks {missing}"
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]       # inline scripts only by hash
    assert "script-src 'self' 'unsafe-eval' 'sha256-" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"


def test_every_response_carries_the_security_headers(web):
    base, _ = web
    page = requests.get(base + "/", timeout=30)
    script = next(s for s in page.text.split('"') if s.startswith("/_dash-component-suites/") and s.endswith(".js"))
    gets = ["/", "/overview", "/head?a=x&head=1.2", "/_dash-layout", "/_dash-dependencies", "/healthz",
            "/assets/style.css", script, "/_favicon.ico", "/no/such/page.txt", "/assets/../app.py"]
    for path in gets:
        r = requests.get(base + path, timeout=30)
        assert r.status_code < 500, (path, r.status_code)
        check_headers(r)
    assert requests.get(base + "/assets/nope.css", timeout=30).status_code == 404
    check_headers(requests.get(base + "/assets/nope.css", timeout=30))
    # a callback POST, a malformed POST and a HEAD
    body = {"output": f"{ids.RUN_INFO}.children", "outputs": {"id": ids.RUN_INFO, "property": "children"},
            "inputs": [{"id": ids.STATE, "property": "data", "value": {"a": "f" * 24, "view": "overview"}}],
            "changedPropIds": [f"{ids.STATE}.data"]}
    for r in (requests.post(base + "/_dash-update-component", json=body, timeout=30),
              requests.post(base + "/_dash-update-component", data=b"{not json", timeout=30,
                            headers={"Content-Type": "application/json"}),
              requests.head(base + "/", timeout=30)):
        assert r.status_code < 500, r.text[:300]
        check_headers(r)


def test_a_100_mb_post_gets_413_with_a_clear_message(web):
    base, proc = web
    worker = psutil.Process(proc.pid).children()[0]
    rss0 = worker.memory_info().rss
    big = b'{"output": "x", "inputs": [{"value": "' + b"a" * (100 * 2**20) + b'"}]}'
    t0 = time.monotonic()
    try:
        r = requests.post(base + "/_dash-update-component", data=big, timeout=60,
                          headers={"Content-Type": "application/json"})
    except requests.ConnectionError:                  # the server may close before the client has sent it all
        pytest.fail("the server dropped the connection instead of answering 413")
    assert r.status_code == 413
    assert security.too_large_message() == r.json()["error"]
    assert "ATTNVIS_MAX_REQUEST_MB" in r.json()["error"] and "Redis" not in r.text
    check_headers(r)
    assert time.monotonic() - t0 < 30
    assert worker.memory_info().rss - rss0 < 50 * 2**20, "the body was read into memory"
    assert requests.get(base + "/healthz", timeout=10).status_code == 200       # still serving
    # just under the limit is still a normal (here: malformed-callback) answer, not 413
    ok = requests.post(base + "/_dash-update-component", data=b"{}", timeout=30,
                       headers={"Content-Type": "application/json"})
    assert ok.status_code != 413


def test_debug_mode_starts_and_answers(tmp_path):
    port = free_port()
    env = base_env(ATTNVIS_DEBUG="1", PORT=port, HOST=LOOPBACK, ATTNVIS_CACHE_DIR=shared_cache_dir(tmp_path))
    env.pop("REDIS_URL", None)
    log = tmp_path / "debug.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://{LOOPBACK}:{port}/healthz", 120, proc, log)
        for path in ("/", "/_dash-layout", "/_dash-dependencies"):
            r = requests.get(f"http://{LOOPBACK}:{port}{path}", timeout=30)
            assert r.status_code == 200, (path, r.text[:300])
            check_headers(r)
        assert "Debug mode: on" in log.read_text()
    finally:
        import os
        import signal
        try:
            os.killpg(proc.pid, signal.SIGTERM)        # the debug reloader runs the app in a child process
        except ProcessLookupError:
            pass
        proc.wait(15)
