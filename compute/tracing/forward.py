"""One instrumented forward that collects everything a trace of query position P needs.

Where each quantity comes from (one no-grad forward through compute.engine.capture):
  * attention rows (exact, float32): the capture's output hook sees each layer's AttentionCall (q, k after
    the model's position encoding, the mask, the scale); compute.capture.row_blocks turns the query
    rows into exact softmax rows in bounded blocks. Kept: every head's row P [L, H, n] and, when the text up
    to P is at most DENSE_MAX_TOKENS, the head-mean rows 0..P [L, n, n] that rollout and flow need
    (encoders: all rows, since every token sees every other one). n = P + 1 for causal models, N for encoders.
  * q and k for the neuron view: after the position encoding from the same AttentionCall (q at P, keys
    0..n-1); before it from forward hooks on the attention's q_proj / k_proj (Llama family), reshaped per head.
  * residual stream at P (causal Llama-family decoders): the input of decoder layer 0 (the embeddings) from a
    forward pre-hook, the output of every decoder layer from forward hooks, each head's output before o_proj
    (the o_proj input, split per head) and each MLP's output from forward hooks.
The model's output is unchanged: hooks only read.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..capture import AttentionCall, check_cancel
from ..errors import InputError, UserError
from ..models import LoadedModel
from ..capture import row_blocks
from ..engine import capture

DENSE_MAX_TOKENS = 1024      # rollout, flow's input and the neuron view's keys: L x n x n floats at most
# Module hooks are global to the (shared, cached) model: they act only inside the forward that set them,
# so a concurrent analysis on the same model in another thread never writes into this trace.
_ACTIVE: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("attnvis_trace", default=None)


@dataclass
class ForwardTrace:
    """Numpy arrays of one forward, all at query position `position` (float32)."""

    position: int
    n_tokens: int
    causal: bool
    head_rows: np.ndarray                       # [L, H, n] attention of P over keys (exact)
    mean_maps: Optional[np.ndarray] = None      # [L, n, n] head-mean attention rows (None past the limit)
    q: Optional[np.ndarray] = None              # [L, H, D] at P, as the attention function gets it
    k: Optional[np.ndarray] = None              # [L, Hkv, n, D]
    q_pre: Optional[np.ndarray] = None          # same, before the position encoding (None: not separable)
    k_pre: Optional[np.ndarray] = None
    scale: list = field(default_factory=list)   # [L] softmax scale per layer
    embed: Optional[np.ndarray] = None          # [d] residual stream entering layer 0
    hidden: Optional[np.ndarray] = None         # [L, d] residual after each decoder layer
    head_out: Optional[np.ndarray] = None       # [L, H, D] each head's output (o_proj input)
    mlp_out: Optional[np.ndarray] = None        # [L, d]

    @property
    def n_keys(self) -> int:
        return self.head_rows.shape[-1]


def decoder_parts(lm: LoadedModel):
    """(layers, final_norm, unembedding) of a Llama-family causal LM, or None when the model is not one
    (encoders, or an architecture whose residual stream this module does not know how to split)."""
    if not lm.info.causal:
        return None
    base = lm.model.base_model
    layers = getattr(base, "layers", None)
    norm = getattr(base, "norm", None)
    head = lm.model.get_output_embeddings()
    if layers is None or norm is None or head is None:
        return None
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "o_proj") or not hasattr(layer, "mlp"):
            return None
    return layers, norm, head


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def run_forward(lm: LoadedModel, ids: list[int], position: int, *, dense: bool = True,
                mem_budget_mb: int = 256, cancel: Optional[Callable[[], bool]] = None,
                on_layer: Optional[Callable[[int], None]] = None) -> ForwardTrace:
    """One forward of `ids` collecting the trace of `position` (see the module docstring).
    dense=False skips the head-mean maps and keys (rollout, flow, neuron view); on_layer(l) after each layer."""
    n_all = len(ids)
    if not 0 <= position < n_all:
        raise InputError(f"position {position} is outside the text (0..{n_all - 1})")
    L, H = lm.info.n_layers, lm.info.n_heads
    causal = lm.info.causal
    n = position + 1 if causal else n_all
    if dense and n > DENSE_MAX_TOKENS:
        dense = False
    P = position
    head_rows = np.zeros((L, H, n), np.float32)
    mean_maps = np.zeros((L, n, n), np.float32) if dense else None
    store: dict = {"q": {}, "k": {}, "q_pre": {}, "k_pre": {}, "scale": {}, "hidden": {}, "head_out": {},
                   "mlp_out": {}, "embed": None}
    seen = set()

    def on_attention(call: AttentionCall, out):
        check_cancel(cancel)
        layer = call.layer
        seen.add(layer)
        rows = (0, n) if dense else (P, P + 1)
        for a, e, block in row_blocks(call, rows=rows, mem_budget_mb=mem_budget_mb):
            blk = block[0]                                  # [H, e - a, kend]
            kend = blk.shape[-1]
            if dense:
                mean_maps[layer, a:e, :kend] = blk.mean(0).numpy()
            if a <= P < e:
                head_rows[layer, :, :kend] = blk[:, P - a, :n].numpy()
        store["scale"][layer] = call.scale
        if dense:
            store["q"][layer] = call.q[0, :, P].float().cpu().numpy()
            store["k"][layer] = call.k[0, :, :n].float().cpu().numpy()
        if on_layer is not None:
            on_layer(layer)
        return None

    handles = []
    parts = decoder_parts(lm)
    try:
        if parts is not None:
            layers, _, _ = parts

            def at_p(t):
                return _first(t)[0, P].detach().float().cpu().numpy()

            def keep(name, li, fn):
                """A hook storing fn(hook args) under store[name][li], only in this trace's forward."""
                def hook(module, *args):
                    if _ACTIVE.get() is store:
                        store[name][li] = fn(*args)
                return hook

            def pre_layer0(module, args, kwargs):
                if _ACTIVE.get() is store:
                    store["embed"] = at_p(args[0] if args else kwargs["hidden_states"])

            handles.append(layers[0].register_forward_pre_hook(pre_layer0, with_kwargs=True))
            for li, layer in enumerate(layers):
                attn = layer.self_attn
                handles.append(layer.register_forward_hook(keep("hidden", li, lambda a, o: at_p(o))))
                handles.append(attn.o_proj.register_forward_pre_hook(
                    keep("head_out", li, lambda a: at_p(a).reshape(H, -1))))
                handles.append(layer.mlp.register_forward_hook(keep("mlp_out", li, lambda a, o: at_p(o))))
                if dense and hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
                    d = attn.head_dim
                    handles.append(attn.q_proj.register_forward_hook(keep(
                        "q_pre", li, lambda a, o, d=d: o[0, P].detach().float().cpu().view(-1, d).numpy())))
                    handles.append(attn.k_proj.register_forward_hook(keep(
                        "k_pre", li, lambda a, o, d=d: o[0, :n].detach().float().cpu().view(n, -1, d)
                        .transpose(0, 1).numpy())))
        token = _ACTIVE.set(store)
        try:
            capture(lm, torch.tensor([list(ids)]), layers=set(), output_hook=on_attention)
        finally:
            _ACTIVE.reset(token)
    finally:
        for h in handles:
            h.remove()
    if len(seen) != L:
        raise UserError(f"captured {len(seen)} of {L} layers: the model does not route attention through "
                        "transformers' attention interface")

    def stack(name):
        d = store[name]
        return np.stack([d[i] for i in range(L)]) if len(d) == L else None

    return ForwardTrace(position=P, n_tokens=n_all, causal=causal, head_rows=head_rows, mean_maps=mean_maps,
                        q=stack("q"), k=stack("k"), q_pre=stack("q_pre"), k_pre=stack("k_pre"),
                        scale=[store["scale"][i] for i in range(L)], embed=store["embed"],
                        hidden=stack("hidden"), head_out=stack("head_out"), mlp_out=stack("mlp_out"))

