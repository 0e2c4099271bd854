"""Limits for serving other people: text size, a memory estimate checked before each analysis, a time
limit per analysis, and model loading confined (in server mode) to the registry and allowed folders.

All limits come from compute.settings (environment variables). Every refusal is a UserError subclass
with a one-line message that says what to change.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import settings
from .errors import Cancelled, InputError, ModelNotFound, UserError

MiB = 1 << 20
GiB = 1 << 30


class ResourceLimit(UserError):
    """The work would not fit the memory (or another resource) this server allows."""


class TimeLimitExceeded(Cancelled):
    """The analysis ran past ATTNVIS_TIME_LIMIT_S."""


def _fmt(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / MiB:.0f} MiB"


# ---------------------------------------------------------------- text

def check_text_size(text: str, max_chars: Optional[int] = None) -> None:
    """Refuse megabyte texts before the tokenizer sees them."""
    limit = settings.get("ATTNVIS_MAX_TEXT_CHARS") if max_chars is None else max_chars
    if isinstance(text, str) and limit and len(text) > limit:
        raise InputError(f"the text is {len(text):,} characters; the limit is {limit:,} (ATTNVIS_MAX_TEXT_CHARS)")


# ---------------------------------------------------------------- memory

def available_memory() -> int:
    """Bytes this process can still allocate: the smaller of the system's available memory and the
    room left under a cgroup (container) limit."""
    import psutil

    avail = psutil.virtual_memory().available
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as f:
                raw = f.read().strip()
            if raw == "max":
                continue
            with open(usage_f) as f:
                used = int(f.read().strip())
            lim = int(raw)
            if lim < (1 << 60):                     # cgroup v1 reports 'unlimited' as a huge number
                avail = min(avail, max(0, lim - used))
        except (OSError, ValueError):
            continue
    return int(avail)


@dataclass(frozen=True)
class ModelDims:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    weight_bytes: int
    causal: bool = True

    @classmethod
    def of(cls, lm) -> "ModelDims":
        cfg = lm.model.config
        hidden = int(getattr(cfg, "hidden_size", 0) or lm.info.n_heads * lm.info.head_dim)
        wb = sum(p.numel() * p.element_size() for p in lm.model.parameters())
        wb += sum(b.numel() * b.element_size() for b in lm.model.buffers())
        return cls(n_layers=lm.info.n_layers, n_heads=lm.info.n_heads, n_kv_heads=lm.info.n_kv_heads,
                   head_dim=lm.info.head_dim, hidden=hidden,
                   intermediate=int(getattr(cfg, "intermediate_size", 0) or 4 * hidden),
                   vocab=int(getattr(cfg, "vocab_size", 0) or 0), weight_bytes=int(wb), causal=lm.info.causal)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part. `work` is what an analysis allocates on top of the resident weights."""

    weights: int
    activations: int
    stats_transient: int
    statistics: int
    maps: int
    loss: int

    @property
    def work(self) -> int:
        return self.activations + self.stats_transient + self.statistics + self.maps + self.loss

    @property
    def total(self) -> int:
        return self.weights + self.work

    def describe(self) -> str:
        parts = [(k, getattr(self, k)) for k in ("maps", "statistics", "activations", "stats_transient", "loss")]
        parts = [f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in sorted(parts, key=lambda kv: -kv[1]) if v >= MiB]
        return ", ".join(parts)


def estimate_memory(dims: ModelDims, n_tokens: int, *, full_map_max: int = 1024, pool_cells: int = 128,
                    mem_budget_mb: int = 256, compute_loss: bool = True, keep_qkv_layers: int = 0
                    ) -> MemoryEstimate:
    """Peak memory of one pipeline analysis of one text of n_tokens (fp32 model, batch 1), by part.

    Deliberately an upper estimate: factors cover the temporaries torch keeps alive at once.
    """
    n, L, H, Hkv, D = n_tokens, dims.n_layers, dims.n_heads, dims.n_kv_heads, dims.head_dim
    f4 = 4
    # One layer's forward at a time (no_grad): residual/norm/attention-output copies of [N, hidden],
    # q, k, v (plus rotary copies), and the gated MLP's three [N, intermediate] tensors.
    activations = f4 * n * (6 * dims.hidden + 2 * (H + 2 * Hkv) * D + 3 * dims.intermediate)
    # Statistics kernel: score buffers bounded by the chunk budget (two buffers), about 2x in temporaries;
    # short texts need less than the budget.
    per_layer_scores = 2 * H * n * n * f4
    stats_transient = 2 * min(mem_budget_mb * MiB, per_layer_scores)
    # Kept per layer (torch on CPU), then stacked into numpy: row stats (9 fp32 + int64 top-1),
    # column stats, pooled mean/max, distance histogram; x2 for the two copies that coexist.
    pool = 1
    while math.ceil(n / pool) > pool_cells:
        pool *= 2
    m = math.ceil(n / pool)
    per_layer = H * (n * (9 * f4 + 8) + 2 * n * f4 + 2 * m * m * f4 + 17 * f4)
    statistics = 2 * L * per_layer
    # Dense maps for short texts: fp32 per layer while capturing, fp16 stacked copy, one more fp16
    # copy when the result is saved or cached, plus one layer's maps being built.
    maps = 0
    if n <= full_map_max:
        maps = L * H * n * n * (f4 + 2 + 2) + H * n * n * f4
    loss = 0
    if compute_loss and dims.causal and dims.vocab:
        loss = 2 * min(n, 512) * dims.vocab * f4 + n * dims.hidden * f4
    if keep_qkv_layers:
        activations += keep_qkv_layers * n * (H + 2 * Hkv) * D * f4
    return MemoryEstimate(weights=dims.weight_bytes, activations=int(activations),
                          stats_transient=int(stats_transient), statistics=int(statistics), maps=int(maps),
                          loss=int(loss))


def memory_budget(weights_loaded: bool = True) -> tuple[int, str]:
    """(bytes an analysis may allocate, where the figure came from)."""
    headroom = settings.get("ATTNVIS_MEMORY_HEADROOM") or 0.8
    avail = int(available_memory() * min(headroom, 1.0))
    limit_mb = settings.get("ATTNVIS_MEMORY_LIMIT_MB")
    if limit_mb and limit_mb * MiB < avail:
        return limit_mb * MiB, f"the limit of {limit_mb:,} MiB (ATTNVIS_MEMORY_LIMIT_MB)"
    return avail, f"the {_fmt(avail)} of memory available now"


def check_memory(lm, n_tokens: int, opts, keep_qkv_layers: int = 0) -> MemoryEstimate:
    """Refuse (ResourceLimit) an analysis whose estimate does not fit; returns the estimate."""
    est = estimate_memory(ModelDims.of(lm), n_tokens, full_map_max=opts.full_map_max,
                          pool_cells=opts.pool_cells, mem_budget_mb=opts.mem_budget_mb,
                          compute_loss=opts.compute_loss, keep_qkv_layers=keep_qkv_layers)
    budget, source = memory_budget()
    if est.work > budget:
        hint = ("lower the full-map maximum below the token count" if est.maps > est.work / 2
                else "use a shorter text or a smaller memory budget per chunk")
        raise ResourceLimit(f"this analysis of {n_tokens:,} tokens needs about {_fmt(est.work)} "
                            f"({est.describe()}), more than {source}; {hint}")
    return est


# ---------------------------------------------------------------- time

class Deadline:
    """A cancel callback for the pipeline's forward: raises TimeLimitExceeded once the time is up, and
    passes through an outer cancel flag. The engine calls it after every layer (cooperative)."""

    def __init__(self, seconds: Optional[float] = None, cancel: Optional[Callable[[], bool]] = None):
        self.seconds = settings.get("ATTNVIS_TIME_LIMIT_S") if seconds is None else seconds
        self.start = time.monotonic()
        self.cancel = cancel

    def expired(self) -> bool:
        return bool(self.seconds) and time.monotonic() - self.start > self.seconds

    def __call__(self) -> bool:
        if self.expired():
            raise TimeLimitExceeded(f"the analysis took longer than the time limit of {self.seconds:g} s "
                                    "(ATTNVIS_TIME_LIMIT_S); try a shorter text")
        return bool(self.cancel and self.cancel())


@contextlib.contextmanager
def hard_time_limit(seconds: Optional[float]):
    """Raise TimeLimitExceeded in the main thread after `seconds` even if no layer boundary comes
    (a stuck tokenizer or model call). SIGALRM works only in the main thread of the main interpreter:
    elsewhere (web threads) this is a no-op and the cooperative Deadline remains."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeLimitExceeded(f"the analysis was stopped after the hard time limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- models

MAX_MODEL_REF = 1024


def check_model_ref(name) -> str:
    """Reject what no registry name or path looks like, before it reaches the file system."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFound("no model given")
    name = name.strip()
    if len(name) > MAX_MODEL_REF:
        raise ModelNotFound(f"the model name is {len(name):,} characters long; at most {MAX_MODEL_REF} are accepted")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ModelNotFound("the model name contains control characters")
    return name


def allowed_model_dirs() -> Optional[list[str]]:
    """None (anything local) outside server mode; in server mode the allowed folders (maybe none)."""
    if not settings.get("ATTNVIS_SERVER_MODE"):
        return None
    return settings.get("ATTNVIS_MODEL_DIRS")


def resolve_model(name):
    """compute.models.resolve under the current settings; file-system oddities become ModelNotFound."""
    from .models import resolve

    name = check_model_ref(name)
    try:
        return resolve(name, allowed_model_dirs())
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotFound(f"cannot use model {name[:200]!r}: {exc.__class__.__name__}") from None


def device_setting(device: Optional[str] = None) -> str:
    return device or settings.get("ATTNVIS_DEVICE")


def load_model_limited(name, device: Optional[str] = None):
    """load_model with the server's rules: allowed folders, safetensors/GGUF only unless
    ATTNVIS_ALLOW_PICKLE, the configured device. Remote code is never enabled (models.py)."""
    from .models import load_model

    resolve_model(name)                                   # validates and checks the folders first
    try:
        return load_model(name.strip(), device=device_setting(device), allowed_dirs=allowed_model_dirs(),
                          allow_pickle=settings.get("ATTNVIS_ALLOW_PICKLE"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot load model {name.strip()[:200]!r}: {exc.__class__.__name__}: {exc}") from None


# ---------------------------------------------------------------- options

def limited_options(opts=None):
    """AnalysisOptions with max_tokens capped by ATTNVIS_MAX_TOKENS."""
    from dataclasses import replace

    from .options import AnalysisOptions

    opts = opts or AnalysisOptions()
    cap = settings.get("ATTNVIS_MAX_TOKENS")
    return replace(opts, max_tokens=min(opts.max_tokens, cap)) if cap else opts
