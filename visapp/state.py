"""Where results and background jobs live; the one module to switch for scale-out.

Without REDIS_URL (the embedded default, no server needed):
  results  flask-caching FileSystemCache in $ATTNVIS_CACHE_DIR/results (shared by every process on
           this host, survives a reload and a restart)
  jobs     dash DiskcacheManager in $ATTNVIS_CACHE_DIR/jobs (each job is a forked process)
With REDIS_URL set: flask-caching RedisCache and dash CeleryManager on compute.tasks' Celery app, so
any web worker serves any result and jobs run on Celery workers (issue 8 wires and tests this).
"""
from __future__ import annotations

from pathlib import Path

from compute import settings

_MANAGER = None
_STORE = None


def cache_dir() -> Path:
    p = Path(settings.get("ATTNVIS_CACHE_DIR"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def redis_url() -> str:
    return settings.get("REDIS_URL")


def cache_config() -> dict:
    timeout = settings.get("ATTNVIS_CACHE_TIMEOUT_S")
    if redis_url():
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_url(), "CACHE_KEY_PREFIX": "attnvis:app:",
                "CACHE_DEFAULT_TIMEOUT": timeout}
    return {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(cache_dir() / "results"),
            "CACHE_THRESHOLD": settings.get("ATTNVIS_CACHE_THRESHOLD"), "CACHE_DEFAULT_TIMEOUT": timeout}


def codec_key(secret: str = "") -> bytes:
    """The key that signs cache values (visapp.cache_codec): derived from the app's secret, so every
    web process and worker that shares ATTNVIS_SECRET_KEY (or ATTNVIS_CACHE_DIR) reads the others'."""
    import hashlib

    from .hardening import secret_key
    return hashlib.blake2b((secret or secret_key()).encode(), digest_size=32, person=b"attnvis-cache").digest()


def store():
    """The flask-caching backend (FileSystemCache or RedisCache) of this process, usable without a Flask
    app context (background jobs have none). Values go through visapp.cache_codec (JSON + numpy
    buffers, signed), never pickle; every key gets ATTNVIS_CACHE_TIMEOUT_S."""
    global _STORE
    if _STORE is None:
        from .cache_codec import Serializer
        from .hardening import CheckedFileSystemCache, SafeStore

        cfg = cache_config()
        serializer = Serializer(codec_key())
        if cfg["CACHE_TYPE"] == "RedisCache":
            from flask_caching.backends import RedisCache
            backend = RedisCache.factory(None, dict(cfg), [], {"default_timeout": cfg["CACHE_DEFAULT_TIMEOUT"]})
        else:
            backend = CheckedFileSystemCache(cfg["CACHE_DIR"], serializer, threshold=cfg["CACHE_THRESHOLD"],
                                             default_timeout=cfg["CACHE_DEFAULT_TIMEOUT"])
        backend.serializer = serializer      # an instance attribute: the class default pickles
        _STORE = SafeStore(backend)          # unreadable entries read as missing; failed writes raise
    return _STORE


def reset() -> None:
    """Forget the process's store and manager (tests that change ATTNVIS_CACHE_DIR or REDIS_URL)."""
    global _STORE, _MANAGER
    _STORE = None
    _MANAGER = None


def background_manager():
    """DiskcacheManager (default) or CeleryManager (REDIS_URL); created once per process."""
    global _MANAGER
    if _MANAGER is None:
        expire = settings.get("ATTNVIS_JOB_EXPIRE_S")
        if redis_url():
            from compute.tasks import celery_app

            from .hardening import celery_manager  # CeleryManager that reports jobs of dead workers
            _MANAGER = celery_manager(celery_app, expire)
        else:
            import diskcache

            from .hardening import diskcache_manager  # DiskcacheManager that reports killed jobs
            _MANAGER = diskcache_manager(diskcache.Cache(str(cache_dir() / "jobs")), expire)
    return _MANAGER
