"""Capture through transformers' AttentionInterface: an instrumented attention function that returns
the model's exact attention output and hands per-layer statistics to the active CaptureSession.

No model class is patched. The mask function registered under the same name is transformers' own
flash-attention mask: None without padding, else a 2D [B, Nk] key-validity mask, which is exactly
what the kernels take (causality comes from module.is_causal).
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from kernels import StatsConfig, VariantMask, attention_stats, supports_observer
from kernels.stats_types import AttentionStats

from .errors import Cancelled, UserError

ATTN_IMPL = "instrumented"
_ACTIVE: contextvars.ContextVar[Optional["CaptureSession"]] = contextvars.ContextVar("attnvis_capture",
                                                                                    default=None)
_REGISTERED = False


@dataclass
class AttentionCall:
    """What one attention call saw, handed to output hooks and kept when keep_qkv is on."""

    layer: int
    q: torch.Tensor            # [B, H, Nq, D]
    k: torch.Tensor            # [B, Hkv, Nk, D]
    v: torch.Tensor
    key_valid: Optional[torch.Tensor]   # [B, Nk] bool or None
    causal: bool
    scale: float
    window: Optional[int] = None


# hook(call, out [B,H,Nq,Dv]) -> new out (or None to keep it)
OutputHook = Callable[[AttentionCall, torch.Tensor], Optional[torch.Tensor]]
# observer(layer, a, e, p [B, H, e - a, kend]): exact probabilities of query rows a..e-1 (kernels' RowObserver)
RowObserver = Callable[[int, int, int, torch.Tensor], None]


def stats_rows(call: AttentionCall, a: int, e: int, config: StatsConfig):
    """attention_stats of query rows [a, e) against the keys they can see (torch path). With a causal
    mask, rows [a, e) see keys [0, e): they are passed as the last e - a positions, which they are."""
    kend = e if call.causal else call.k.shape[2]
    kv = None if call.key_valid is None else call.key_valid[:, :kend]
    variant = VariantMask(window=call.window) if call.window else None      # sliding-window layers
    return attention_stats(call.q[:, :, a:e], call.k[:, :, :kend], None, scale=call.scale, causal=call.causal,
                           key_valid=kv, config=config, variant=variant, backend="torch")


def row_blocks(call: AttentionCall, rows: Optional[tuple[int, int]] = None,
               mem_budget_mb: int = 256):
    """Yield (a, e, P) with P [B, H, e - a, kend] the exact attention rows a..e-1 (float32, CPU),
    recomputed from the call's q/k in blocks bounded by the budget (never n x n for all heads)."""
    b, h, nq, _ = call.q.shape
    nk = call.k.shape[2]
    r0, r1 = rows if rows is not None else (0, nq)
    # The dense block plus attention_stats' own transient buffers: about 4 fp32 copies.
    per_row = max(1, b * h * nk * 4 * 4)
    step = max(1, min(r1 - r0, (mem_budget_mb << 20) // per_row))
    cfg = StatsConfig(full_maps=True, mem_budget_mb=mem_budget_mb)
    for a in range(r0, r1, step):
        e = min(r1, a + step)
        yield a, e, stats_rows(call, a, e, cfg).maps.float().cpu()


@dataclass
class CaptureSession:
    """Collects statistics while active (use as a context manager around a forward pass).

    stats=False runs a differentiable sdpa path (for gradients through head gates).
    keep_qkv: True, or a set of layer indices, keeps CPU copies of q/k/v for on-demand maps/variants.
    row_observer: sees the exact probability rows of every captured layer in the same pass: handed to
    the kernel where the backend supports it, else recomputed from q/k for observer_rows (a (start,
    end) query range, None = all rows) right after the layer's statistics.
    """

    config: StatsConfig = field(default_factory=StatsConfig)
    backend: str = "torch"
    stats: bool = True
    layers: Optional[set] = None
    keep_qkv: bool | set = False
    output_hook: Optional[OutputHook] = None
    progress: Optional[Callable[[int], None]] = None      # called with the layer index when done
    row_observer: Optional[RowObserver] = None
    observer_rows: Optional[tuple] = None
    results: dict = field(default_factory=dict)            # layer -> AttentionStats (CPU)
    calls: dict = field(default_factory=dict)              # layer -> AttentionCall (CPU copies)
    _token: object = None

    def __enter__(self):
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        return False

    def wants_stats(self, layer: int) -> bool:
        return self.stats and (self.layers is None or layer in self.layers)

    def wants_qkv(self, layer: int) -> bool:
        return self.keep_qkv is True or (isinstance(self.keep_qkv, (set, frozenset)) and layer in self.keep_qkv)


def _key_valid_from_mask(mask, b: int, nk: int) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if mask.dim() == 2 and mask.shape == (b, nk):
        return mask.to(torch.bool)
    raise UserError("instrumented attention got a %dD attention mask (packed sequences or a custom mask); "
                    "only padding masks are supported" % mask.dim())


def sdpa_reference(call: AttentionCall) -> torch.Tensor:
    """Differentiable attention output [B,H,Nq,D] with the same masking (no statistics)."""
    q, k, v = call.q, call.k, call.v
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    g = h // k.shape[1]
    if g > 1:
        k = k.repeat_interleave(g, 1)
        v = v.repeat_interleave(g, 1)
    if call.key_valid is None and call.window is None and (not call.causal or nq == nk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=call.causal, scale=call.scale)
    allowed = torch.ones(b, 1, nq, nk, dtype=torch.bool, device=q.device)
    if call.key_valid is not None:
        allowed &= call.key_valid[:, None, None, :].to(q.device)
    if call.causal:
        allowed &= _causal_mask(nq, nk, q.device)
    if call.window is not None:
        i = torch.arange(nq, device=q.device)[:, None] + (nk - nq)
        allowed &= (i - torch.arange(nk, device=q.device)[None, :]) < call.window
    has = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has, scale=call.scale)
    return out * has.to(out.dtype)


def _causal_mask(nq: int, nk: int, device) -> torch.Tensor:
    i = torch.arange(nq, device=device)[:, None] + (nk - nq)
    return torch.arange(nk, device=device)[None, :] <= i


def instrumented_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                   scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                                   **kwargs):
    """transformers attention function: returns (attn_output [B, Nq, H, D], None)."""
    for unsupported in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise UserError(f"this model's attention uses {unsupported!r}, which the instrumented "
                            "capture does not support yet")
    b, h, nq, d = query.shape
    nk = key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    call = AttentionCall(layer=int(getattr(module, "layer_idx", -1) or 0), q=query, k=key, v=value,
                         key_valid=_key_valid_from_mask(attention_mask, b, nk), causal=causal,
                         scale=float(scaling if scaling is not None else d ** -0.5),
                         window=kwargs.get("sliding_window"))
    sess = _ACTIVE.get()
    if sess is None or not sess.wants_stats(call.layer) or torch.is_grad_enabled():
        out = sdpa_reference(call)
    else:
        variant = VariantMask(window=call.window) if call.window else None
        obs = sess.row_observer
        native = obs is not None and supports_observer(sess.backend)
        st: AttentionStats = attention_stats(
            query, key, value, scale=call.scale, causal=causal, key_valid=call.key_valid, config=sess.config,
            variant=variant, backend=sess.backend,
            observer=(lambda a, e, p, _l=call.layer: obs(_l, a, e, p)) if native else None)
        out = st.out
        st.out = None
        sess.results[call.layer] = st.to("cpu")
        if obs is not None and not native:
            for a, e, p in row_blocks(call, sess.observer_rows, sess.config.mem_budget_mb):
                obs(call.layer, a, e, p)
    if sess is not None:
        if sess.wants_qkv(call.layer):
            sess.calls[call.layer] = AttentionCall(call.layer, query.detach().cpu(), key.detach().cpu(),
                                                   value.detach().cpu(),
                                                   None if call.key_valid is None else call.key_valid.cpu(),
                                                   causal, call.scale, call.window)
        if sess.output_hook is not None:
            new = sess.output_hook(call, out)
            if new is not None:
                out = new
        if sess.progress is not None:
            sess.progress(call.layer)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the attention function and its mask function with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTN_IMPL, instrumented_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPL, flash_attention_mask)
    _REGISTERED = True


def check_cancel(flag: Optional[Callable[[], bool]]) -> None:
    if flag is not None and flag():
        raise Cancelled("analysis cancelled")
