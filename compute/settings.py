"""Every deployment setting, read from the environment: one place for defaults, parsing and docs.

`get(name)` parses the current value (the environment is read on each call, so tests and workers may
change it); a malformed value raises SettingError naming the variable. `render_markdown()` writes the
table in docs/settings.md (`python -m compute.settings > docs/settings.md`), so docs and code agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from .errors import UserError


class SettingError(UserError):
    """An environment variable holds a value that cannot be parsed."""


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _int(raw: str) -> int:
    v = int(raw.strip())
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _float(raw: str) -> float:
    v = float(raw.strip())
    if not v >= 0:          # also rejects NaN
        raise ValueError("must be >= 0")
    return v


def _str(raw: str) -> str:
    return raw.strip()


def _dirs(raw: str) -> list[str]:
    """os.pathsep-separated folders; empty entries are dropped (an empty entry would mean the cwd)."""
    out = []
    for part in raw.split(os.pathsep):
        part = part.strip()
        if not part:
            continue
        if not os.path.isabs(os.path.expanduser(part)):
            raise ValueError(f"{part!r} is not an absolute path")
        out.append(os.path.realpath(os.path.expanduser(part)))
    return out


def _device(raw: str) -> str:
    v = raw.strip().lower() or "cpu"
    if v not in ("cpu", "cuda", "auto") and not (v.startswith("cuda:") and v[5:].isdigit()):
        raise ValueError("expected cpu, cuda, cuda:N or auto")
    return v


def _default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attnvis")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str                      # as it would be written in the environment
    parse: Callable[[str], object]
    doc: str
    shown_default: str = ""           # for the docs when the default depends on the machine


SETTINGS: tuple[Setting, ...] = (
    # storage and scale-out
    Setting("ATTNVIS_CACHE_DIR", "", _str,
            "Folder for converted GGUF weights, the file-system result cache and background-job state.",
            "$XDG_CACHE_HOME/attnvis (~/.cache/attnvis)"),
    Setting("REDIS_URL", "", _str,
            "Redis URL (e.g. redis://127.0.0.1:6379/0). Set: results cached in Redis, long analyses and corpus "
            "texts run on Celery workers. Empty: file-system cache and in-process/diskcache jobs, no server."),
    Setting("ATTNVIS_CACHE_TIMEOUT_S", "3600", _int, "Seconds a cached analysis result is kept (0 = no expiry)."),
    Setting("ATTNVIS_CACHE_THRESHOLD", "500", _int, "Most entries the file-system cache keeps before pruning."),
    Setting("ATTNVIS_SECRET_KEY", "", _str,
            "Secret that signs the page's background-job handles; the same on every web process. Empty: "
            "generated once and kept in ATTNVIS_CACHE_DIR/secret_key (set it when web processes run on "
            "several hosts)."),
    Setting("ATTNVIS_JOB_EXPIRE_S", "600", _int, "Seconds a background job's result stays in the job store."),
    # limits
    Setting("ATTNVIS_MAX_TOKENS", "8192", _int, "Longest text, in tokens, an analysis accepts."),
    Setting("ATTNVIS_MAX_TEXT_CHARS", "200000", _int,
            "Longest text, in characters, accepted before tokenising (guards the tokenizer against megabytes)."),
    Setting("ATTNVIS_TIME_LIMIT_S", "600", _float,
            "Time limit of one analysis in seconds: checked after every layer, and enforced by an alarm in "
            "the worker (0 = none)."),
    Setting("ATTNVIS_MEMORY_LIMIT_MB", "0", _int,
            "Memory one analysis may use, in MiB; an analysis whose estimate exceeds it (or the memory "
            "available now) is refused. 0 = what is available now."),
    Setting("ATTNVIS_MEMORY_HEADROOM", "0.8", _float,
            "Fraction of the available memory an analysis may plan to use (the rest is headroom)."),
    Setting("ATTNVIS_MAX_REQUEST_MB", "4", _float,
            "Largest HTTP request body the web server accepts, in MiB (a longer post gets 413 before it is "
            "read). Keep it above ATTNVIS_MAX_TEXT_CHARS x 6 bytes (JSON escapes)."),
    # models and security
    Setting("ATTNVIS_SERVER_MODE", "0", _bool,
            "1 = serving other people: models only from the registry and ATTNVIS_MODEL_DIRS, limits enforced. "
            "The Procfile's web and worker lines turn it on."),
    Setting("ATTNVIS_MODEL_DIRS", "", _dirs,
            "Server mode: absolute folders (separated by os.pathsep, ':' on Linux) whose HF model folders or "
            ".gguf files may be loaded; empty = registry models only."),
    Setting("ATTNVIS_ALLOW_PICKLE", "0", _bool,
            "1 = also load pickle (.bin/.pt) weights. Off: only safetensors or GGUF. Remote code is never run."),
    Setting("ATTNVIS_DEVICE", "cpu", _device,
            "Where models run: cpu, cuda, cuda:N, or auto (device_map='auto' through accelerate, for models "
            "larger than one GPU)."),
    # the web app (visapp)
    Setting("ATTNVIS_APP_FULL_MAP_MAX", "512", _int,
            "The app keeps every head's full map (float16) for texts up to this many tokens; longer texts show "
            "pooled maps whose blocks load at full resolution on click."),
    Setting("ATTNVIS_TORCH_THREADS", "0", _int,
            "Torch threads of each background analysis job (0 = all cores). The web process itself stays at "
            "one thread: torch's OpenMP pool would hang the jobs it forks."),
    Setting("ATTNVIS_CPU_FUSED", "1", _bool,
            "Use the fused C++ row kernel (kernels/cpu_rowstats.cpp, built by `make setup`) for CPU statistics; "
            "0 forces the pure-torch ops, which give the same numbers more slowly. Read by kernels/ directly."),
    # processes
    Setting("WEB_CONCURRENCY", "2", _int, "Gunicorn worker processes (each holds its own model copies)."),
    Setting("GUNICORN_THREADS", "4", _int, "Threads per gunicorn worker (gthread)."),
    Setting("PORT", "8050", _int, "Port the web server binds."),
    Setting("ATTNVIS_PRELOAD_MODELS", "", _str,
            "Comma-separated models a Celery worker loads when it starts, so its first task is not slow."),
    Setting("ATTNVIS_TASK_RETRIES", "3", _int,
            "Corpus texts: how often a Celery task whose worker died or failed transiently is retried. App "
            "jobs: a job delivered more than this many extra times (its worker died each time) is stopped "
            "with a message; a job whose user was told it was lost, or that was cancelled, never runs again."),
    Setting("ATTNVIS_TASK_VISIBILITY_S", "1200", _int,
            "Redis broker visibility timeout: a task whose worker died unacknowledged is redelivered after "
            "this many seconds. Keep it above ATTNVIS_TIME_LIMIT_S."),
    Setting("ATTNVIS_JOB_SLOTS", "2", _int,
            "Embedded mode (no REDIS_URL): background jobs that run at once on this host; more wait in a queue "
            "and show their position. (With Celery the workers' count and concurrency bound it.)"),
    Setting("ATTNVIS_CLIENT_JOBS", "4", _int,
            "Jobs (analyses, comparisons, zooms) one client address may have queued or running at once; more "
            "are refused with a message (0 = no cap). Behind a proxy every client has the proxy's address."),
    Setting("ATTNVIS_MAX_QUEUED", "20", _int,
            "Jobs queued or running on the whole deployment at once; more are refused with a message "
            "(0 = no cap)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def get(name: str):
    """Parsed current value of one setting."""
    s = _BY_NAME[name]
    raw = os.environ.get(name)
    if raw is None or (raw.strip() == "" and s.default != ""):
        raw = s.default
    try:
        value = s.parse(raw)
    except ValueError as exc:
        raise SettingError(f"environment variable {name}={raw!r} is invalid: {exc}") from None
    if name == "ATTNVIS_CACHE_DIR" and not value:
        value = _default_cache_dir()
    return value


def current() -> dict:
    """All settings, parsed."""
    return {s.name: get(s.name) for s in SETTINGS}


def render_markdown() -> str:
    lines = ["# Settings", "",
             "Every setting is an environment variable; unset means the default. Generated from "
             "`compute/settings.py` by `python -m compute.settings > docs/settings.md`.", "",
             "| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = s.shown_default or (s.default if s.default != "" else "(empty)")
        lines.append(f"| `{s.name}` | `{default}` | {s.doc} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
