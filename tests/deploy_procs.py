"""Real processes for the deployment tests: redis-server, Celery workers and gunicorn on loopback.

Every process is started here with Popen and stopped by its own pid (never by name). Nothing binds
anything but 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REDIS_BIN = shutil.which("redis-server")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def shared_cache_dir(tmp: Path) -> Path:
    """A fresh cache folder whose gguf/ links to the user's converted weights (saves a 30 s conversion)."""
    from compute.models import cache_dir
    d = tmp / "cache"
    d.mkdir(parents=True, exist_ok=True)
    real = cache_dir() / "gguf"
    real.mkdir(parents=True, exist_ok=True)
    if not (d / "gguf").exists():
        (d / "gguf").symlink_to(real, target_is_directory=True)
    return d


def stop(proc: Optional[subprocess.Popen], sig=signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Redis:
    """redis-server on a free loopback port, no persistence."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.log = workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen([REDIS_BIN, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                                      "--appendonly", "no", "--protected-mode", "yes", "--dir", str(workdir)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        try:
            self.wait_up()
        except BaseException:
            stop(self.proc)
            raise

    def client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def wait_up(self, timeout: float = 15) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start: {self.log.read_text()[-500:]}")

    def stop(self) -> None:
        stop(self.proc)


def celery_worker(name: str, env: dict, log: Path, app: str = "compute.tasks:celery_app") -> subprocess.Popen:
    cmd = [str(VENV_BIN / "celery"), "-A", app, "worker", "--pool=solo", "--concurrency=1",
           "--loglevel=INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_log(log: Path, needle: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {needle!r}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {needle!r} in {log}: {log.read_text(errors='replace')[-2000:]}")


def gunicorn(env: dict, port: int, log: Path, workers: int = 2, threads: int = 2, app: str = "app:server",
             timeout: int = 300) -> subprocess.Popen:
    cmd = [str(VENV_BIN / "gunicorn"), app, "--worker-class", "gthread", "--workers", str(workers),
           "--threads", str(threads), "--timeout", str(timeout), "--bind", f"{LOOPBACK}:{port}",
           "--no-control-socket",                      # one per machine by default: tests run several
           "--graceful-timeout", "5",
           "--access-logfile", "-", "--access-logformat", '%(p)s "%(r)s" %(s)s']
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_http(url: str, timeout: float, proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None) -> None:
    import requests
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:] if log else ''}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def layout_values(layout) -> dict:
    """{"id.prop": value} of every component with an id in the layout tree."""
    out = {}

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            props = node.get("props") if "props" in node and "type" in node else None
            if props is not None:
                cid = props.get("id")
                if isinstance(cid, str):
                    for k, v in props.items():
                        if k not in ("children", "id"):
                            out[f"{cid}.{k}"] = v
                walk(props.get("children"))
            else:
                for v in node.values():
                    walk(v)
    walk(layout)
    return out


class DashClient:
    """Speaks the Dash renderer's HTTP protocol (what the browser does): reads the page config and the
    callback graph, posts callbacks, and follows background callbacks until they finish. Each request
    uses a new connection, so gunicorn may hand it to any worker."""

    def __init__(self, base: str):
        import json as _json
        import re

        import requests
        self.base = base.rstrip("/")
        page = requests.get(self.base + "/", timeout=30)
        page.raise_for_status()
        m = re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', page.text, re.S)
        self.config = _json.loads(m.group(1))
        self.end_id = self.config.get("end_id")
        self.deps = requests.get(self.base + "/_dash-dependencies", timeout=30).json()

    @staticmethod
    def outputs(dep: dict) -> list[str]:
        """["id.prop", ...] of a callback ('..a.x...b.y..' for several outputs, 'a.x' for one)."""
        out = dep["output"]
        return out[2:-2].split("...") if out.startswith("..") else [out]

    def dep(self, output_id: str, prop: str) -> dict:
        for d in self.deps:
            if f"{output_id}.{prop}" in self.outputs(d):
                return d
        raise KeyError(f"no callback outputs {output_id}.{prop}")

    def payload(self, dep: dict, values: dict, changed: list) -> dict:
        """values: {"id.prop": value} for inputs and states (missing ones are None)."""
        outs = self.outputs(dep)

        def spec(x):
            return {"id": x["id"], "property": x["property"], "value": values.get(f"{x['id']}.{x['property']}")}
        outputs = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]} for o in outs]
        return {"output": dep["output"], "outputs": outputs if len(outputs) > 1 else outputs[0],
                "inputs": [spec(x) for x in dep["inputs"]], "state": [spec(x) for x in dep.get("state", [])],
                "changedPropIds": changed}

    def post(self, body: dict, **params):
        import requests
        params = {k: v for k, v in params.items() if v is not None}
        if self.end_id:
            params["endId"] = self.end_id
        return requests.post(self.base + "/_dash-update-component", json=body, params=params, timeout=120,
                             headers={"Connection": "close"})

    def call(self, output_id: str, prop: str, values: dict, changed: list):
        return self.post(self.payload(self.dep(output_id, prop), values, changed))

    def background(self, output_id: str, prop: str, values: dict, changed: list, timeout: float = 300,
                   on_poll=None):
        """Start a background callback and poll it like the renderer; returns (final response, polls)."""
        body = self.payload(self.dep(output_id, prop), values, changed)
        first = self.post(body)
        first.raise_for_status()
        handles = first.json()
        if "cacheKey" not in handles:
            return first, []
        polls = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            r = self.post(body, cacheKey=handles["cacheKey"], job=handles["job"])
            polls.append(r)
            if on_poll:
                on_poll(r)
            if r.status_code != 200:
                return r, polls
            data = r.json() if r.content else {}
            if "response" in data or "sideUpdate" in data:
                return r, polls
            time.sleep(0.5)
        raise TimeoutError("background callback did not finish")
