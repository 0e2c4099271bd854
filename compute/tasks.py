"""Celery app for scale-out: corpus texts (and any analysis the app sends) run on worker processes.

Broker and result backend are both REDIS_URL. Run a worker with
    celery -A app:celery_app worker --pool=solo --concurrency=1
(the Procfile's line: importing app also registers the web app's background callbacks as tasks;
`-A compute.tasks:celery_app` serves corpus runs only). One model copy per worker process; solo keeps
the task in the main thread, where the hard time limit's alarm works.

Delivery: acks_late + reject_on_worker_lost, so a task whose worker dies is not lost: Redis redelivers
it after ATTNVIS_TASK_VISIBILITY_S. Idempotence: a task first looks for its text's result under a key
derived from (run, text id) and returns it without recomputing; the result is written once (SET NX).
The submitter aggregates per text id, so a text delivered twice is still counted once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Callable, Optional

from celery import Celery, signals
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import settings

TRANSIENT = (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError, OperationalError)

KEY_PREFIX = "attnvis:corpus:"
_FALLBACK_URL = "redis://127.0.0.1:6379/0"       # only so that importing never fails without REDIS_URL


def make_celery(url: Optional[str] = None) -> Celery:
    url = url or settings.get("REDIS_URL") or _FALLBACK_URL
    app = Celery("attnvis", broker=url, backend=url, include=["compute.tasks"])
    visibility = settings.get("ATTNVIS_TASK_VISIBILITY_S")
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # Corpus texts ack late (a dead worker's text is redelivered, see corpus_text); the app's background
        # callbacks keep the early ack: a user whose job died is told so and retries (visapp.hardening),
        # rather than a copy of the job running again many minutes later.
        task_acks_late=False,
        worker_prefetch_multiplier=1,          # a worker reserves one task at a time
        task_track_started=True,
        result_expires=max(settings.get("ATTNVIS_CACHE_TIMEOUT_S"), 3600),
        # sweep for a dead worker's unacked tasks every few seconds (kombu's default is ~100 s)
        broker_transport_options={"visibility_timeout": visibility,
                                  "unacked_restore_interval": max(1, min(10, visibility // 5)),
                                  "unacked_restore_throttle": 1},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


celery_app = make_celery()


BEACON_PREFIX = "attnvis:worker:"
BEACON_SET = "attnvis:workers"         # sorted set hostname -> last beat, so "any worker?" is one ZCOUNT
BEACON_TTL_S = 9                      # a dead worker's job is reported within this (+ one poll)


def _beacon(hostname: str) -> None:
    """Liveness: every few seconds, set attnvis:worker:<hostname> with a short expiry. A job whose
    worker has no beacon is dead (SIGKILL, OOM, lost host); the web side tells its user (visapp.hardening)."""
    import threading

    def loop():
        r = None
        while True:
            try:
                r = r or _redis()
                now = time.time()
                r.pipeline().set(BEACON_PREFIX + hostname, str(os.getpid()), ex=BEACON_TTL_S) \
                    .zadd(BEACON_SET, {hostname: now}).zremrangebyscore(BEACON_SET, 0, now - BEACON_TTL_S) \
                    .expire(BEACON_SET, 3 * BEACON_TTL_S).execute()        # no key without expiry
            except Exception:             # Redis restarting: try again at the next beat
                r = None
            time.sleep(BEACON_TTL_S / 3)

    threading.Thread(target=loop, name="attnvis-beacon", daemon=True).start()


def worker_alive(hostname: str, client=None) -> bool:
    return bool((client or _redis()).exists(BEACON_PREFIX + hostname))


def any_worker_alive(client=None) -> bool:
    return (client or _redis()).zcount(BEACON_SET, time.time() - BEACON_TTL_S, "+inf") > 0


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_):
    """Start the liveness beacon, then load ATTNVIS_PRELOAD_MODELS in the worker process (never at
    import: no model before a fork)."""
    from .limits import load_model_limited
    _beacon(getattr(sender, "hostname", None) or f"pid{os.getpid()}")
    for name in filter(None, (m.strip() for m in settings.get("ATTNVIS_PRELOAD_MODELS").split(","))):
        load_model_limited(name)


def text_key(run: str, text_id: str) -> str:
    return KEY_PREFIX + run + ":" + hashlib.sha1(text_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _redis(url: Optional[str] = None):
    return _client(url or celery_app.conf.broker_url)


@functools.lru_cache(maxsize=8)
def _client(url: str):
    """One thread-safe client (connection pool) per URL and process."""
    import redis
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=30)


@celery_app.task(name="attnvis.corpus_text", bind=True, acks_late=True, reject_on_worker_lost=True,
                 autoretry_for=TRANSIENT, retry_backoff=2, retry_jitter=False,
                 max_retries=settings.get("ATTNVIS_TASK_RETRIES"))
def corpus_text(self, run: str, text_id: str, text: str, model: str, opts: dict, n_buckets: int,
                time_limit_s: Optional[float] = None) -> dict:
    """Analyse one corpus text -> {"id", "ok", "summary"|"error", "worker"}; idempotent per (run, id)."""
    from .corpus import analyze_one
    from .options import AnalysisOptions
    from .errors import UserError
    from .limits import load_model_limited

    r = _redis()
    key = text_key(run, text_id)
    done = r.get(key)
    if done is not None:                       # a redelivered or retried text: reuse, do not recompute
        return json.loads(done)
    r.set(key + ":started", f"{os.getpid()}", ex=3600)    # for operators (and the worker-kill test)
    try:
        lm = load_model_limited(model)
        out = {"ok": True, "summary": analyze_one(lm, text, AnalysisOptions(**opts), time_limit_s, n_buckets)}
    except UserError as exc:                   # bad text or a refused limit: a result, not a retry
        out = {"ok": False, "error": str(exc)}
    out = json.loads(json.dumps(out))
    out.update(id=text_id, worker=f"{self.request.hostname}:{os.getpid()}")
    r.set(key, json.dumps(out), nx=True, ex=max(settings.get("ATTNVIS_CACHE_TIMEOUT_S"), 3600))
    return json.loads(r.get(key))


def unavailable_reason(url: str) -> Optional[str]:
    """None when Redis answers and at least one worker listens; else why the fan-out cannot run."""
    try:
        _redis(url).ping()
    except Exception as exc:
        return f"Redis at {_safe_url(url)} does not answer ({exc.__class__.__name__})"
    app = celery_app if celery_app.conf.broker_url == url else make_celery(url)
    try:
        replies = app.control.ping(timeout=2.0)
    except Exception as exc:
        return f"cannot reach the Celery workers through {_safe_url(url)} ({exc.__class__.__name__})"
    if not replies:
        return "no Celery worker answers (start one: celery -A compute.tasks:celery_app worker --pool=solo)"
    return None


def _safe_url(url: str) -> str:
    """The URL without a password."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{':' + str(u.port) if u.port else ''}{u.path}"


def run_distributed(items: list[tuple[str, str]], model: str, opts: dict, url: str, *, n_buckets: int,
                    time_limit_s: Optional[float] = None, on_done: Optional[Callable[[str, dict], None]] = None,
                    poll_s: float = 0.25, stall_timeout_s: Optional[float] = None) -> dict[str, dict]:
    """Send every text to the workers and collect the results keyed by text id.

    Deterministic task ids (run + index) make a resubmission of the same run reuse finished texts.
    Gives up (UserError) when no text finishes for stall_timeout_s (default: visibility timeout plus
    twice the time limit), e.g. when every worker is gone.
    """
    from celery.result import AsyncResult

    from .corpus import run_key
    from .errors import UserError

    app = celery_app if celery_app.conf.broker_url == url else make_celery(url)
    task = app.tasks["attnvis.corpus_text"]
    run = run_key(items, model, opts, n_buckets)
    limit = settings.get("ATTNVIS_TIME_LIMIT_S") if time_limit_s is None else time_limit_s
    pending: dict[str, str] = {}
    stall = stall_timeout_s or (settings.get("ATTNVIS_TASK_VISIBILITY_S") + 2 * (limit or 300) + 60)
    results: dict[str, dict] = {}
    try:
        for i, (tid, text) in enumerate(items):
            task_id = f"attnvis-corpus-{run}-{i}"
            task.apply_async(args=(run, tid, text, model, opts, n_buckets, time_limit_s), task_id=task_id,
                             retry=True, retry_policy={"max_retries": 3, "interval_start": 0.5,
                                                       "interval_step": 0.5, "interval_max": 2})
            pending[task_id] = tid
        last_progress = time.monotonic()
        while pending:
            for task_id, tid in list(pending.items()):
                res = AsyncResult(task_id, app=app)
                state = res.state
                if state == "SUCCESS":
                    out = res.result
                elif state == "FAILURE":               # retries exhausted on a transient error
                    out = {"ok": False, "error": f"task failed after retries: {res.result!r}"[:500]}
                else:
                    continue
                results.setdefault(tid, {k: v for k, v in out.items() if k in ("ok", "summary", "error", "worker")})
                del pending[task_id]
                last_progress = time.monotonic()
                if on_done:
                    on_done(tid, results[tid])
            if pending:
                if time.monotonic() - last_progress > stall:
                    raise UserError(f"{len(pending)} corpus texts made no progress for {stall:.0f} s: are the "
                                    "Celery workers running?")
                time.sleep(poll_s)
    except TRANSIENT as exc:
        raise UserError(f"lost the connection to Redis at {_safe_url(url)} during the corpus run "
                        f"({exc.__class__.__name__}); rerun: finished texts are kept") from None
    return results
