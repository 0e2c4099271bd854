"""Admission, slots, cancel and attempts for the app's background jobs (both Dash managers use it).

  admit()        in the web process, before a job is started: at most ATTNVIS_CLIENT_JOBS queued or
                 running jobs per client address and ATTNVIS_MAX_QUEUED in all; beyond that the user gets
                 one line saying so (UserError), and nothing is started.
  guard()        wraps the callback a job runs (manager.make_job_fn), in the job's process:
                   * embedded mode: waits for one of ATTNVIS_JOB_SLOTS slots (flock on a slot file, freed
                     by the kernel when the process dies: no lock can outlive its holder) and shows
                     "queued, position N" meanwhile;
                   * Celery: a job marked ended (cancelled, or declared lost to the user) never runs,
                     also when Redis redelivers it later; a job that was started more than
                     ATTNVIS_TASK_RETRIES + 1 times (its worker died each time: a poison job) stops with
                     a message instead of taking the worker again;
                   * every progress report checks the cancel mark, so Cancel stops a running job at the
                     next layer even on a solo worker (where Celery cannot terminate the task).
Bookkeeping: Redis keys attnvis:job:<id>:ended / :attempts and the sorted set attnvis:jobs (each with
an expiry), or files under ATTNVIS_CACHE_DIR/jobs/{active,queue,slots} in embedded mode.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

from compute import settings
from compute.errors import Cancelled, UserError

log = logging.getLogger(__name__)

JOBS_KEY = "attnvis:jobs"                # sorted set "<client>|<job>" -> start time (Celery mode)
CANCELLED = "cancelled"


class Busy(UserError):
    """Admission refused: too many jobs of this client or in all."""


def mark_ttl() -> int:
    """How long job marks live: past any redelivery (visibility timeout) and any run (time limit)."""
    return int(settings.get("ATTNVIS_TASK_VISIBILITY_S") + 2 * (settings.get("ATTNVIS_TIME_LIMIT_S") or 600) + 3600)


def client_id() -> str:
    """The requesting client's address (Flask request), or 'local' outside a request."""
    try:
        from flask import has_request_context, request
        if has_request_context():
            return (request.remote_addr or "unknown").replace("|", "_")
    except ImportError:
        pass
    return "local"


def _check_caps(client: str, mine: int, total: int) -> None:
    per, cap = settings.get("ATTNVIS_CLIENT_JOBS"), settings.get("ATTNVIS_MAX_QUEUED")
    if per and mine >= per:
        raise Busy(f"you already have {mine} job(s) queued or running (at most {per} per user, "
                   "ATTNVIS_CLIENT_JOBS): wait for one to finish or cancel it")
    if cap and total >= cap:
        raise Busy(f"the server is busy: {total} jobs are queued or running (at most {cap}, ATTNVIS_MAX_QUEUED); "
                   "try again in a minute")


def progress_outputs(key: Optional[str]) -> int:
    """How many progress outputs the background callback registered under `key` has (Dash passes its
    managers only a flag). 0 when it cannot be told: then no queue position is shown."""
    try:
        import dash
        from dash._callback import GLOBAL_CALLBACK_MAP
        from dash.background_callback.managers import BaseBackgroundCallbackManager as Base
        fn = next(f for k, f, _ in Base.functions if k == key)
        try:
            maps = {**GLOBAL_CALLBACK_MAP, **dash.get_app().callback_map}   # moved there at the app's setup
        except Exception:
            maps = dict(GLOBAL_CALLBACK_MAP)
        for cid, entry in maps.items():
            bg = entry.get("background")
            if bg and Base.hash_function(fn, cid) == key:
                return len(bg.get("progress") or [])
    except Exception:             # Dash internals moved: degrade to no position message
        pass
    return 0


def _shaped(n_progress: int, set_progress: Callable, message: str) -> None:
    """A message on the job's progress outputs: (percent, text) for bars, text for a single output."""
    if n_progress >= 2:
        set_progress(("0", message) + ("",) * (n_progress - 2))
    elif n_progress == 1:
        set_progress(message)


# ---------------------------------------------------------------- Celery (Redis)

class RedisJobs:
    def __init__(self, client_fn: Callable):
        self._client = client_fn

    @property
    def r(self):
        return self._client()

    def admit(self, client: str) -> None:
        r, now = self.r, time.time()
        r.zremrangebyscore(JOBS_KEY, 0, now - mark_ttl())          # jobs whose end was never seen
        members = [m.decode() if isinstance(m, bytes) else m for m in r.zrange(JOBS_KEY, 0, -1)]
        _check_caps(client, sum(m.split("|", 1)[0] == client for m in members), len(members))

    def started(self, client: str, job: str) -> None:
        self.r.pipeline().zadd(JOBS_KEY, {f"{client}|{job}": time.time()}).expire(JOBS_KEY, mark_ttl()).execute()

    def finished(self, job: str) -> None:
        r = self.r
        for m in r.zrange(JOBS_KEY, 0, -1):
            if (m.decode() if isinstance(m, bytes) else m).endswith(f"|{job}"):
                r.zrem(JOBS_KEY, m)

    def position(self, job: str) -> Optional[int]:
        """1-based place among the jobs submitted and not finished, or None."""
        members = [m.decode() if isinstance(m, bytes) else m for m in self.r.zrange(JOBS_KEY, 0, -1)]
        for i, m in enumerate(members):
            if m.endswith(f"|{job}"):
                return i + 1
        return None

    def end(self, job: str, why: str) -> None:
        self.r.set(f"attnvis:job:{job}:ended", why, ex=mark_ttl())

    def ended(self, job: str) -> Optional[str]:
        v = self.r.get(f"attnvis:job:{job}:ended")
        return v.decode() if isinstance(v, bytes) else v

    def attempt(self, job: str) -> int:
        key = f"attnvis:job:{job}:attempts"
        n, _ = self.r.pipeline().incr(key).expire(key, mark_ttl()).execute()
        return int(n)


def current_celery_job() -> Optional[str]:
    from celery import current_task
    req = getattr(current_task, "request", None)
    return getattr(req, "id", None)


def celery_guard(fn: Callable, has_progress: bool, jobs: RedisJobs) -> Callable:
    retries = settings.get("ATTNVIS_TASK_RETRIES")

    @functools.wraps(fn)
    def run(*args):
        from dash.exceptions import PreventUpdate
        job = current_celery_job()
        if job is None:
            return fn(*args)
        try:
            if jobs.ended(job):                 # cancelled, or the user was told it was lost: never rerun
                log.info("job %s was ended before it started (%s): not running it", job, jobs.ended(job))
                raise PreventUpdate
            n = jobs.attempt(job)
            if n > retries + 1:
                jobs.end(job, "poison")
                raise UserError(f"this job was started {n - 1} times and its worker stopped each time "
                                f"(ATTNVIS_TASK_RETRIES={retries}); it was not run again")
            if n > 1:
                log.warning("job %s: attempt %d (its worker died before)", job, n)
            args = list(args)
            if has_progress:
                set_progress = args[0]

                def checked(value):
                    if jobs.ended(job):
                        raise Cancelled("cancelled")
                    set_progress(value)
                args[0] = checked
            return fn(*args)
        finally:
            try:
                jobs.finished(job)
            except Exception:
                pass
    return run


# ---------------------------------------------------------------- embedded (files)

def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class FileJobs:
    """Embedded-mode bookkeeping in ATTNVIS_CACHE_DIR/jobs: active/<client>|<pid>, queue/<ns>-<pid>, slots/<i>."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("active", "queue", "slots"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def _live(self, sub: str) -> list[Path]:
        out = []
        for p in (self.root / sub).iterdir():
            try:
                pid = int(p.name.rsplit("|", 1)[-1].rsplit("-", 1)[-1])
            except ValueError:
                continue
            if _alive(pid):
                out.append(p)
            else:
                p.unlink(missing_ok=True)         # its process is gone
        return out

    def admit(self, client: str) -> None:
        live = self._live("active")
        _check_caps(client, sum(p.name.rsplit("|", 1)[0] == client for p in live), len(live))

    def started(self, client: str, pid: int) -> None:
        (self.root / "active" / f"{client}|{pid}").touch()

    def slot(self, n_progress: int, set_progress: Optional[Callable]) -> int:
        """Block until this process holds one of ATTNVIS_JOB_SLOTS slots; returns the slot's fd (kept
        open for the job's life; the kernel frees it when the process ends)."""
        slots = max(1, settings.get("ATTNVIS_JOB_SLOTS"))
        ticket = self.root / "queue" / f"{time.time_ns()}-{os.getpid()}"
        ticket.touch()
        shown = None
        try:
            while True:
                waiting = sorted(self._live("queue"), key=lambda p: p.name)
                pos = next((i for i, p in enumerate(waiting) if p.name == ticket.name), 0)
                if pos < slots:
                    for i in range(slots):
                        fd = os.open(self.root / "slots" / str(i), os.O_CREAT | os.O_RDWR, 0o600)
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            return fd
                        except BlockingIOError:
                            os.close(fd)
                if set_progress is not None and pos + 1 != shown:
                    shown = pos + 1
                    _shaped(n_progress, set_progress, f"queued, position {shown} (the server runs {slots} "
                                                      "job(s) at once)")
                time.sleep(0.25)
        finally:
            ticket.unlink(missing_ok=True)


def file_guard(fn: Callable, has_progress: bool, key: Optional[str], jobs_root: Path) -> Callable:
    @functools.wraps(fn)
    def run(*args):
        jobs = FileJobs(jobs_root)
        fd = jobs.slot(progress_outputs(key), args[0] if has_progress else None)
        try:
            return fn(*args)
        finally:
            os.close(fd)
    return run
