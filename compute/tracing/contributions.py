"""Direct logit attribution (Elhage et al. 2021): each head's direct contribution to the logit of one
token at position P.

The final residual x at P is a sum of component outputs: the embeddings entering layer 0, and per layer
each attention head's output through its block of o_proj columns (W_O[:, hD:(h+1)D] z_h), o_proj's bias,
and the MLP's output. The final norm is nonlinear, so its per-position factor is frozen at its value for
the real x: RMSNorm y = g * x / rms(x) with rms(x) = sqrt(mean(x^2) + eps) from the actual residual
(LayerNorm also centres each component and adds its bias). Then y is linear in the components and
    logit_t = sum_c (g / rms(x) * c) . W_U[t] + b_t
exactly; every head gets its term, and contribution_rest collects embeddings, MLPs, biases (and the norm's
and unembedding's biases). The components are read independently from hooks (forward.py), so
sum(heads) + rest == logit is a real check of the decomposition, reported as `decomposition_error`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..models import LoadedModel
from .forward import ForwardTrace, decoder_parts
from .logit_lens import lens_logits


def norm_factors(norm, x: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray]:
    """(scale [d], centre, shift [d]) with norm(x) = scale * (x - mean(x) if centre else x) + shift, the
    scale frozen at the real residual x. RMSNorm (Llama family) and LayerNorm only."""
    name = type(norm).__name__
    x = np.asarray(x, np.float64)
    weight = norm.weight.detach().double().cpu().numpy() if getattr(norm, "weight", None) is not None \
        else np.ones_like(x)
    if isinstance(norm, torch.nn.LayerNorm):
        shift = norm.bias.detach().double().cpu().numpy() if norm.bias is not None else np.zeros_like(x)
        return weight / np.sqrt(x.var() + norm.eps), True, shift
    if name.endswith("RMSNorm") and "Gemma" not in name:       # Gemma scales by (1 + weight)
        eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
        return weight / np.sqrt(np.mean(x * x) + eps), False, np.zeros_like(x)
    raise UserError(f"head contributions need an RMSNorm or LayerNorm as the final norm; this model has {name}")


def head_contributions(lm: LoadedModel, ft: ForwardTrace, token_id: int) -> dict:
    """{'contributions' [L][H], 'contribution_rest', 'parts': {embedding, attention_bias [L], mlp [L],
    unembedding_bias}, 'logit' (the model's own, float32 forward), 'decomposition_error'}."""
    layers, norm, head = decoder_parts(lm)
    L, H = ft.head_out.shape[:2]
    x = ft.hidden[-1].astype(np.float64)
    scale, centre, shift = norm_factors(norm, x)
    u = head.weight[token_id].detach().double().cpu().numpy()
    direction = scale * u                       # logit term of a component c: (c - mean c if centre) . direction

    def term(c) -> np.ndarray:        # [..., d] components -> [...] logit terms
        c = np.asarray(c, np.float64)
        return ((c - c.mean(-1, keepdims=True)) if centre else c) @ direction

    heads = np.zeros((L, H))
    attn_bias = np.zeros(L)
    for l, layer in enumerate(layers):
        o = layer.self_attn.o_proj
        w = o.weight.detach().double().cpu().numpy()                  # [d, H * D]
        z = ft.head_out[l].astype(np.float64)                          # [H, D]
        D = z.shape[1]
        per_head = np.einsum("dhk,hk->hd", w.reshape(w.shape[0], H, D), z)   # [H, d] each head's residual write
        heads[l] = term(per_head)
        if o.bias is not None:
            attn_bias[l] = term(o.bias.detach().double().cpu().numpy())
    mlp = term(ft.mlp_out)
    embedding = float(term(ft.embed))
    b = float(head.bias[token_id]) if getattr(head, "bias", None) is not None else 0.0
    unembedding_bias = float(shift @ u) + b
    rest = embedding + attn_bias.sum() + mlp.sum() + unembedding_bias
    logit = float(lens_logits(lm, ft.hidden[-1:])[0, token_id])
    return {"contributions": heads.tolist(), "contribution_rest": float(rest), "logit": logit,
            "parts": {"embedding": embedding, "attention_bias": attn_bias.tolist(), "mlp": mlp.tolist(),
                      "unembedding_bias": unembedding_bias},
            "decomposition_error": abs(float(heads.sum() + rest) - logit)}
