"""End-to-end fixtures: the app as a real server process, Debian's chromium driven by Playwright.

The server runs as its own process (`python app.py`) so its background jobs fork from a process
that never ran torch (see visapp/service.py), exactly as in production. Screenshots go to
artifacts/e2e/ (gitignored)."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"

pytest.importorskip("playwright", reason="e2e tests need playwright (requirements-dev.txt)")
if not os.path.exists(CHROMIUM):
    pytest.skip("e2e tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    # bypass_csp: playwright's wait_for_function(string) evaluates with new Function, which the app's CSP
    # (no 'unsafe-eval') blocks; test_safety_csp_e2e checks the CSP in a context without the bypass
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}, "bypass_csp": True}


SERVER: dict = {}


def dump_server() -> str:
    """The server's thread stacks and the end of its log (for a failed test)."""
    if not SERVER:
        return ""
    try:
        os.kill(SERVER["pid"], signal.SIGUSR1)
        time.sleep(1.5)
    except OSError:
        pass
    lines = [l for l in SERVER["log"].read_text(errors="replace").splitlines() if '"GET /_dash-component' not in l]
    return "\n".join(lines[-150:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_gguf(tmp: Path) -> None:
    """Reuse the converted GGUF weights of the normal cache (converting costs ~30 s)."""
    env = {k: v for k, v in os.environ.items() if k != "ATTNVIS_CACHE_DIR"}
    real = Path(env.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "attnvis" / "gguf"
    real.mkdir(parents=True, exist_ok=True)
    (tmp / "gguf").symlink_to(real, target_is_directory=True)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    cache = tmp_path_factory.mktemp("e2e-cache")
    _shared_gguf(cache)
    port = _free_port()
    env = dict(os.environ, ATTNVIS_CACHE_DIR=str(cache), PORT=str(port), HOST="127.0.0.1",
               ATTNVIS_TORCH_THREADS="1", ATTNVIS_APP_FULL_MAP_MAX="160", PYTHONPATH=str(ROOT))
    env.pop("REDIS_URL", None)
    log = open(cache / "server.log", "w")
    # faulthandler: SIGUSR1 dumps every thread's stack into the log (see dump_server)
    launcher = ("import faulthandler, runpy, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
                "sys.argv = ['app.py']; runpy.run_path('app.py', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    SERVER.update(pid=proc.pid, log=cache / "server.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(url + "/healthz", timeout=2).read() == b"OK":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.close()
            raise RuntimeError("the app did not start:\n" + (cache / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)            # the server and the job processes it forked
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def app_page(page, request):
    """A page that records console errors and page errors; the test fails if any occurred. A failed
    test leaves a screenshot (artifacts/e2e/FAILED-<test>.png)."""
    errors, messages = [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text[:500]}"))
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.set_default_timeout(60_000)
    yield page
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        name = "FAILED-" + request.node.name.split("[")[0]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        try:
            resources = page.evaluate("performance.getEntriesByType('resource').map(e => "
                                      "`${e.name.slice(0, 90)} ${Math.round(e.duration)} ms ${e.transferSize}`)")
        except Exception as exc:  # the page may be gone
            resources = [f"(no resource timings: {exc})"]
        (ARTIFACTS / f"{name}-browser.log").write_text("\n".join(messages + ["--- resources"] + resources))
        (ARTIFACTS / f"{name}-server.log").write_text(dump_server())
    assert errors == [], errors


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
