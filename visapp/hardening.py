"""Web-side hardening for serving many users: no 500s and no tracebacks, whatever fails.

  SafeStore        wraps the flask-caching backend: an unreadable entry (corrupted, forged, a pickle, another
                   format version: see visapp.cache_codec) is dropped and reads as missing, so it is
                   recomputed; an unreachable Redis becomes one clear UserError; a write that fails (disk
                   full, Redis maxmemory) raises StoreWriteError instead of returning False.
  CheckedFileSystemCache  cachelib's FileSystemCache whose set() encodes before touching the disk, raises
                   on a failed write and never leaves its temp file behind.
  Lost-job managers  DiskcacheManager / CeleryManager that notice a background job whose process or
                   Celery worker died (SIGKILL, out of memory) and report it as an error the user can
                   retry, instead of a spinner that never ends; and that look for the result once more
                   when a job ends between Dash's "result?" and "running?" checks (else Dash drops it).
                   They also admit, queue, cancel and bound jobs through visapp.jobguard.
  on_callback_error  the app-wide Dash error handler: any exception in any callback becomes a one-line
                   message in the page's error box (the full traceback goes to the server log only).
"""
from __future__ import annotations

import logging

from compute.errors import UserError

log = logging.getLogger(__name__)

LOST_MARK = "[attnvis:lost-job] "
LOST_JOB = ("the background job stopped before it finished (its worker was restarted, killed or ran out of "
            "memory); press the button again to retry")
NO_WORKER = ("no background worker is running to take this job (start one: the Procfile's worker line); "
             "try again in a moment")


class StoreUnavailable(UserError):
    """The result store (Redis) does not answer."""


def _connection_errors() -> tuple:
    errs: list = [ConnectionError, TimeoutError]
    try:
        from redis.exceptions import ConnectionError as RCE, TimeoutError as RTE
        errs += [RCE, RTE]
    except ImportError:
        pass
    try:
        from kombu.exceptions import OperationalError
        errs.append(OperationalError)
    except ImportError:
        pass
    return tuple(errs)


CONNECTION_ERRORS = _connection_errors()
UNAVAILABLE = "the result store (Redis) is not reachable right now; try again in a moment"


class StoreWriteError(UserError):
    """A value could not be written to the result store."""


STORE_FULL = ("could not save the result: the server's result store is full (disk full or Redis out of "
              "memory); nothing was kept. Try again later or ask the operator to free space")
DISK_FULL = "the server's disk is full; nothing was kept. Try again later or ask the operator to free space"


def _write_errors() -> tuple:
    errs: list = [OSError]
    try:
        from redis.exceptions import ResponseError
        errs.append(ResponseError)          # "OOM command not allowed when used memory > 'maxmemory'"
    except ImportError:
        pass
    return tuple(errs)


WRITE_ERRORS = _write_errors()


def _file_cache_base():
    from flask_caching.backends import FileSystemCache
    return FileSystemCache


class CheckedFileSystemCache(_file_cache_base()):
    """FileSystemCache with checked writes (see the module doc). The serializer comes first: the parent's
    constructor already writes its entry-count file."""

    def __init__(self, cache_dir, serializer, **kwargs):
        self.serializer = serializer
        super().__init__(cache_dir, **kwargs)

    def set(self, key, value, timeout=None, mgmt_element=False):
        import os
        import struct
        import tempfile

        data = self.serializer.dumps(value)            # a value that cannot be stored fails here, on no file
        if mgmt_element:
            timeout = 0
        else:
            self._prune()
        expires = self._normalize_timeout(timeout)
        filename = self._get_filename(key)
        overwrite = os.path.isfile(filename)
        fd, tmp = tempfile.mkstemp(suffix=self._fs_transaction_suffix, dir=self._path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(struct.pack("I", expires))
                f.write(data)
            self._run_safely(os.replace, tmp, filename)
            self._run_safely(os.chmod, filename, self._mode)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        if not overwrite and not mgmt_element:
            self._update_count(delta=1)
        return True


class SafeStore:
    """A flask-caching/cachelib backend whose reads never raise on bad data and whose writes never fail
    silently."""

    def __init__(self, backend):
        self._b = backend

    def get(self, key):
        try:
            value = self._b.get(key)
        except CONNECTION_ERRORS:
            raise StoreUnavailable(UNAVAILABLE) from None
        except Exception as exc:  # corrupted or foreign pickle: recompute instead of failing
            log.warning("dropping unreadable cache entry %s (%s: %s)", key, exc.__class__.__name__, exc)
            self._drop(key)
            return None
        if value is None and self._exists(key):     # cachelib swallowed an unpickling error: drop it
            log.warning("dropping unreadable cache entry %s", key)
            self._drop(key)
        return value

    def set(self, key, value, timeout=None) -> bool:
        """Write one value; StoreWriteError (nothing of this key left) when it cannot be stored."""
        try:
            ok = self._b.set(key, value, timeout=timeout)
        except CONNECTION_ERRORS:
            raise StoreUnavailable(UNAVAILABLE) from None
        except WRITE_ERRORS as exc:
            log.warning("cache write of %s failed: %s: %s", key, exc.__class__.__name__, exc)
            self._drop(key)
            raise StoreWriteError(STORE_FULL) from None
        if ok is False:
            self._drop(key)
            raise StoreWriteError(STORE_FULL)
        return True

    def _exists(self, key) -> bool:
        try:
            return bool(self._b.has(key))
        except CONNECTION_ERRORS:
            raise StoreUnavailable(UNAVAILABLE) from None
        except Exception:
            return False

    def _drop(self, key) -> None:
        try:
            self._b.delete(key)
        except Exception:
            pass

    def __getattr__(self, name):
        attr = getattr(self._b, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except CONNECTION_ERRORS:
                raise StoreUnavailable(UNAVAILABLE) from None
        return call


def secret_key() -> str:
    """Flask's secret_key, which Dash uses to sign background-job handles. Without one, Dash keeps a
    random secret in the job store: every web process that first needs it after Redis restarted empty
    makes a new one, and handles signed by the others stop verifying (their jobs end silently)."""
    import os
    import secrets
    import time
    from pathlib import Path

    from compute import settings

    key = settings.get("ATTNVIS_SECRET_KEY")
    if key:
        return key
    path = Path(settings.get("ATTNVIS_CACHE_DIR")) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # the first process creates it
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    for _ in range(100):                      # another process may still be writing it
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.02)
    raise RuntimeError(f"{path} stays empty; delete it or set ATTNVIS_SECRET_KEY")


def _lost(msg: str) -> dict:
    return {"background_callback_error": {"msg": LOST_MARK + msg, "tb": ""}}


_SQLITE_LOCK = None


def _fork_safe(cache):
    """The diskcache handle behind a lock that fork also takes (os.register_at_fork): a job is never
    forked while another web thread is inside sqlite, whose mutex the child would otherwise inherit
    locked forever (a job that hangs before it starts, beyond the reach of any time limit)."""
    import os
    import threading
    global _SQLITE_LOCK
    if _SQLITE_LOCK is None:
        _SQLITE_LOCK = threading.RLock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_SQLITE_LOCK.acquire, after_in_parent=_SQLITE_LOCK.release,
                                after_in_child=_SQLITE_LOCK.release)
    lock = _SQLITE_LOCK

    class ForkSafeCache:
        def __init__(self, c):
            self._c = c

        def __getattr__(self, name):
            attr = getattr(self._c, name)
            if not callable(attr):
                return attr

            def call(*args, **kwargs):
                with lock:
                    return attr(*args, **kwargs)
            return call

    return ForkSafeCache(cache)


def diskcache_manager(cache, expire):
    from pathlib import Path

    from dash import DiskcacheManager

    from .jobguard import FileJobs, client_id, file_guard

    jobs_root = Path(cache.directory).parent / "jobctl"      # next to diskcache's own folder

    class LostJobDiskcacheManager(DiskcacheManager):
        """A job is a forked process: dead without a result means lost. Jobs are admitted per client,
        run in at most ATTNVIS_JOB_SLOTS at once (visapp.jobguard) and never fork inside sqlite."""

        def make_job_fn(self, fn, progress, key=None):
            return super().make_job_fn(file_guard(fn, bool(progress), key, jobs_root), progress, key)

        def call_job_fn(self, key, job_fn, args, context):
            jobs, client = FileJobs(jobs_root), client_id()
            jobs.admit(client)
            pid = super().call_job_fn(key, job_fn, args, context)
            jobs.started(client, pid)
            return pid

        def terminate_job(self, job):
            if job is not None:                             # a cancelled job is not a lost one
                self.handle.set(f"attnvis-ended-{job}", 1, expire=3600)
            return super().terminate_job(job)

        def get_result(self, key, job):
            result = super().get_result(key, job)
            if result is self.UNDEFINED and job is not None and not self.job_running(job):
                result = super().get_result(key, job)        # it may have finished between the two looks
                if result is self.UNDEFINED and self.handle.get(f"attnvis-ended-{job}") is None:
                    return _lost(LOST_JOB)
            return result

    manager = LostJobDiskcacheManager(cache, expire=expire)
    manager.handle = _fork_safe(cache)
    return manager


def celery_manager(celery_app, expire):
    from dash import CeleryManager

    import json

    from compute.tasks import _redis

    from .jobguard import RedisJobs, celery_guard, client_id, mark_ttl, progress_outputs

    jobs = RedisJobs(_redis)

    class LostJobCeleryManager(CeleryManager):
        """A started job whose worker has no liveness beacon (compute.tasks) is lost; a queued job with
        no worker alive at all will not start. Admission, cancel marks, attempts and the queue position
        come from visapp.jobguard."""

        def make_job_fn(self, fn, progress, key=None):
            return super().make_job_fn(celery_guard(fn, bool(progress), jobs), progress, key)

        def call_job_fn(self, key, job_fn, args, context):
            client = client_id()
            try:
                jobs.admit(client)
                job = self._submit(key, job_fn, args, context)
                jobs.started(client, job)
                n = progress_outputs(getattr(job_fn, "name", "").replace("background_callback_", ""))
                _redis().set(f"attnvis:jobkey:{key}", json.dumps([job, n]), ex=mark_ttl())
            except CONNECTION_ERRORS:
                raise StoreUnavailable(UNAVAILABLE) from None
            return job

        def get_progress(self, key):
            progress = super().get_progress(key)
            if progress is not None:
                return progress
            try:                                            # still queued: say where
                raw = _redis().get(f"attnvis:jobkey:{key}")
                if raw is None:
                    return None
                job, n = json.loads(raw)
                task = self.get_task(job)
                pos = jobs.position(job) if n and task is not None and task.status == "PENDING" else None
            except CONNECTION_ERRORS:
                return None
            if not pos:
                return None
            msg = f"queued, position {pos}: waiting for a worker"
            return ["0", msg] + [""] * (n - 2) if n >= 2 else [msg]

        def terminate_job(self, job):
            if job:                                         # a cancelled job is not a lost one
                try:
                    self.handle.backend.set(f"attnvis-ended-{job}", "1")
                    self.handle.backend.expire(f"attnvis-ended-{job}", 3600)
                    if jobs.ended(job) is None:
                        jobs.end(job, "cancelled")          # the job stops at its next progress report
                    jobs.finished(job)
                except Exception:
                    pass
            return super().terminate_job(job)

        def _why_lost(self, job):
            from compute.tasks import any_worker_alive, worker_alive
            try:
                if self.handle.backend.get(f"attnvis-ended-{job}") is not None:
                    return None
                task = self.get_task(job)
                state = task.status if task is not None else None
                if state == "STARTED":
                    info = task.info if isinstance(task.info, dict) else {}
                    host = info.get("hostname")
                    if host and not worker_alive(host):
                        jobs.end(job, "lost")               # the user is told: it must never run again
                        jobs.finished(job)
                        return LOST_JOB
                    return None
                if state == "PENDING":
                    return None if any_worker_alive() else NO_WORKER
            except CONNECTION_ERRORS:
                raise StoreUnavailable(UNAVAILABLE) from None
            return None

        def job_running(self, job):
            return bool(super().job_running(job)) and self._why_lost(job) is None

        def _submit(self, key, job_fn, args, context):
            try:
                return super().call_job_fn(key, job_fn, args, context)
            except CONNECTION_ERRORS:
                raise StoreUnavailable(UNAVAILABLE) from None
            except RuntimeError as exc:     # celery's result consumer: "Retry limit exceeded ... result store"
                if isinstance(exc.__cause__, CONNECTION_ERRORS) or "result store" in str(exc):
                    raise StoreUnavailable(UNAVAILABLE) from None
                raise

        def get_result(self, key, job):
            try:
                result = super().get_result(key, job)
                if result is self.UNDEFINED and job:
                    task = self.get_task(job)
                    if task is not None and task.status in ("SUCCESS", "FAILURE"):
                        # Finished after the first look: the job writes its result before the task ends,
                        # so it is there now. (Dash would otherwise see 'not running, no result' and
                        # end the callback without ever showing the result.)
                        result = super().get_result(key, job)
                        if result is self.UNDEFINED and self.handle.backend.get(f"attnvis-ended-{job}") is None:
                            return _lost(LOST_JOB)
                        return result
                    why = self._why_lost(job)
                    if why is not None:
                        result = super().get_result(key, job)
                        if result is self.UNDEFINED:
                            return _lost(why)
                return result
            except CONNECTION_ERRORS:
                raise StoreUnavailable(UNAVAILABLE) from None

    return LostJobCeleryManager(celery_app, expire=expire)


def user_message(exc: BaseException) -> str:
    """One line for the page; never a traceback."""
    text = str(exc)
    if LOST_MARK in text:
        return text.split(LOST_MARK, 1)[1].split("\n", 1)[0]
    if isinstance(exc, UserError):
        return text.split("\n", 1)[0]
    if isinstance(exc, CONNECTION_ERRORS):
        return UNAVAILABLE
    if isinstance(exc, MemoryError):
        return "out of memory: try a shorter text or fewer max tokens"
    if _disk_full(exc):
        return DISK_FULL
    log.error("callback failed", exc_info=exc)
    return f"internal error ({exc.__class__.__name__}); the server log has the details"


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, or sqlite's 'database or disk is full' (the diskcache job store)."""
    import errno
    import sqlite3
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _flat(outputs) -> list:
    out = []
    for o in outputs if isinstance(outputs, list) else [outputs]:
        out.extend(_flat(o) if isinstance(o, list) else [o])
    return out


def on_callback_error(exc: BaseException):
    """Dash(on_error=...): show the message in an error box, leave every other output as it was.

    A callback that has an error box among its outputs (the analysis and comparison jobs) gets the
    message as that output: background callbacks ignore set_props made in an error handler when the
    job could not even be started. Any other callback shows it in the page's main error box."""
    from dash import ctx, no_update, set_props

    from . import ids
    from .components import error_box
    box = error_box(user_message(exc))
    error_ids = {ids.ERROR, getattr(ids, "VR_ERROR", ids.ERROR)}
    outputs = getattr(ctx, "outputs_list", None) or []
    flat = _flat(outputs)
    if any(isinstance(o, dict) and o.get("id") in error_ids and o.get("property") == "children" for o in flat):
        vals = [box if o.get("id") in error_ids and o.get("property") == "children" else no_update for o in flat]
        return vals if isinstance(outputs, list) else vals[0]
    set_props(ids.ERROR, {"children": box})
    return None
