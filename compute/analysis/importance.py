"""Head importance ("Are Sixteen Heads Really Better than One?", Michel et al. 2019): the size of a
Dodrio glyph.

Every head's attention output (before the output projection) is multiplied by a gate g[l,h] = 1
through a CaptureSession output hook; with gradients enabled the instrumented attention runs the
differentiable sdpa path. Loss = mean next-token cross-entropy of the text (causal LMs).
  gradient[l,h]       = dL/dg[l,h] at g = 1 (signed)
  importance[l,h]     = |dL/dg[l,h]|  (one text: the expectation over texts is over this text)
  importance_norm     = importance / ||importance[l, :]||_2 per layer (Michel et al. normalise per layer)
  ablation_delta[l,h] = L(g[l,h] = 0, all other gates 1) - L(all gates 1): loss change when the head
                        is removed. The H heads of a layer are ablated together in one batch of H copies
                        of the text (copy b has head b's gate at 0), so the cost is L batched forwards.
Encoders: the registered MiniLM ships without its masked-LM head, so there is no token loss to
differentiate; importance is reported as unavailable with that reason (nothing is substituted).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..capture import CaptureSession, check_cancel
from ..errors import InputError


def _lm_loss(lm, ids: torch.Tensor) -> torch.Tensor:
    """[B] mean next-token cross-entropy per sequence."""
    logits = lm.model(input_ids=ids.to(lm.device)).logits.float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
    return ce.mean(-1)


def unavailable_reason(lm, n_tokens: int) -> Optional[str]:
    if not lm.info.causal or lm.model.get_output_embeddings() is None:
        return (f"{lm.info.name} has no language-model head (the registered encoder ships without its "
                "masked-LM head), so there is no token loss to differentiate")
    if n_tokens < 2:
        return "the text has a single token: there is no next-token loss"
    return None


def gradient_importance(lm, ids: list[int]) -> tuple[np.ndarray, float]:
    """(dL/dg [L, H], loss) through per-head gates at 1."""
    L, H = lm.info.n_layers, lm.info.n_heads
    gates = torch.ones(L, H, dtype=torch.float32, device=lm.device, requires_grad=True)

    def hook(call, out):
        return out * gates[call.layer].view(1, H, 1, 1).to(out.dtype)

    x = torch.tensor([list(ids)])
    with torch.enable_grad(), CaptureSession(stats=False, output_hook=hook):
        loss = _lm_loss(lm, x)[0]
        (grad,) = torch.autograd.grad(loss, gates)
    return grad.detach().cpu().numpy().astype(np.float64), float(loss.detach())


def ablation_deltas(lm, ids: list[int], layers: list[int], progress: Optional[Callable[[float, str], None]] = None,
                    cancel: Optional[Callable[[], bool]] = None) -> tuple[np.ndarray, float]:
    """([L, H] loss change when each head alone is zeroed (NaN for layers not run), base loss)."""
    L, H = lm.info.n_layers, lm.info.n_heads
    x = torch.tensor([list(ids)])
    with torch.no_grad(), CaptureSession(stats=False):
        base = float(_lm_loss(lm, x)[0])
    out = np.full((L, H), np.nan)
    xb = x.expand(H, -1)
    for n, layer in enumerate(layers):
        check_cancel(cancel)
        gate = torch.ones(H, H, device=lm.device) - torch.eye(H, device=lm.device)   # copy b: head b off

        def hook(call, o, layer=layer, gate=gate):
            if call.layer != layer:
                return None
            return o * gate.view(H, H, 1, 1).to(o.dtype)

        with torch.no_grad(), CaptureSession(stats=False, output_hook=hook):
            out[layer] = _lm_loss(lm, xb).cpu().numpy() - base
        if progress is not None:
            progress((n + 1) / len(layers), f"ablation layer {layer + 1}/{L}")
    return out, base


def head_importance(lm, ids: list[int], ablation: bool = True, ablation_layers: Optional[list[int]] = None,
                    ablation_max_tokens: int = 256, importance_max_tokens: int = 1024,
                    progress: Optional[Callable[[float, str], None]] = None,
                    cancel: Optional[Callable[[], bool]] = None) -> dict:
    """report.json 'importance': {available, reason?, loss, gradient [L][H], importance [L][H],
    importance_norm [L][H], ablation_delta [L][H] (None where not run) | None, ablation_layers [..],
    ablation_skipped (reason) | None, time_s}"""
    t0 = time.perf_counter()
    n = len(ids)
    reason = unavailable_reason(lm, n)
    if reason is None and n > importance_max_tokens:
        reason = (f"the text is {n} tokens; gradient importance is limited to {importance_max_tokens} "
                  "(raise importance_max_tokens)")
    if reason is not None:
        return {"available": False, "reason": reason}
    L = lm.info.n_layers
    if ablation_layers is not None:
        bad = [l for l in ablation_layers if not 0 <= l < L]
        if bad:
            raise InputError(f"ablation layer(s) {bad} out of range: the model has layers 0..{L - 1}")
    grad, loss = gradient_importance(lm, ids)
    imp = np.abs(grad)
    norm = np.linalg.norm(imp, axis=1, keepdims=True)
    res = {"available": True, "loss": loss, "gradient": grad, "importance": imp,
           "importance_norm": np.where(norm > 0, imp / np.maximum(norm, 1e-30), 0.0),
           "ablation_delta": None, "ablation_layers": [], "ablation_skipped": None}
    if ablation:
        layers = list(range(L)) if ablation_layers is None else sorted(set(ablation_layers))
        if ablation_layers is None and n > ablation_max_tokens:
            res["ablation_skipped"] = (f"the text is {n} tokens; ablating every head needs {L} batched "
                                       f"forwards of {lm.info.n_heads} copies, run only up to "
                                       f"{ablation_max_tokens} tokens unless layers are chosen")
        else:
            res["ablation_delta"], _ = ablation_deltas(lm, ids, layers, progress, cancel)
            res["ablation_layers"] = layers
    res["time_s"] = time.perf_counter() - t0
    return res
