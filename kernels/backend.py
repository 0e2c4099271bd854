"""Backend selection: 'triton' (GPU), 'interpret' (the same Triton kernels on CPU under
TRITON_INTERPRET=1, tests only), or 'torch' (the exact chunked twin)."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .stats_types import AttentionStats, StatsConfig, VariantMask
from .torch_stats import RowObserver, attention_stats_torch

from .names import BACKENDS  # noqa: F401 (re-export)


class BackendUnavailable(RuntimeError):
    pass


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def resolve_backend(name: str = "auto", device: Optional[torch.device | str] = None) -> str:
    """Turn a user choice into a concrete backend, or raise BackendUnavailable with a reason."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device) if device is not None else None
    cuda_ok = torch.cuda.is_available() and (dev is None or dev.type == "cuda")
    if name == "torch":
        return "torch"
    if name == "auto":
        return "triton" if (cuda_ok and triton_importable()) else "torch"
    if not triton_importable():
        raise BackendUnavailable("backend 'triton' needs the triton package, which is not importable here")
    if cuda_ok or interpreter_enabled():
        return "triton"
    raise BackendUnavailable("backend 'triton' needs a CUDA GPU, or TRITON_INTERPRET=1 set before start "
                             "(CPU interpreter, slow: tests only); use --backend torch")


def supports_observer(backend: str) -> bool:
    """Whether the backend can hand each chunk's probabilities to a RowObserver (torch only: the Triton
    kernels never hold a row block in memory; callers recompute the rows they need from q/k instead)."""
    return backend == "torch"


def attention_stats(q, k, v, *, scale: float, causal: bool, key_valid=None,
                    config: StatsConfig = StatsConfig(), variant: Optional[VariantMask] = None,
                    backend: str = "torch", observer: Optional[RowObserver] = None) -> AttentionStats:
    """Dispatch to a concrete backend (see resolve_backend). Same semantics and outputs for all.
    observer: see torch_stats.RowObserver; only where supports_observer(backend)."""
    if backend == "torch":
        return attention_stats_torch(q, k, v, scale=scale, causal=causal, key_valid=key_valid,
                                     config=config, variant=variant, observer=observer)
    if observer is not None:
        raise BackendUnavailable(f"backend {backend!r} cannot observe row blocks")
    if backend == "triton":
        from .triton_stats import attention_stats_triton  # imported lazily: triton is optional
        return attention_stats_triton(q, k, v, scale=scale, causal=causal, key_valid=key_valid,
                                      config=config, variant=variant)
    raise BackendUnavailable(f"unknown backend {backend!r}")
