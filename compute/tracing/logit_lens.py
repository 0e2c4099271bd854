"""Logit lens (nostalgebraist 2020): the residual stream after each decoder layer at position P, through
the model's own final norm and unembedding, softmaxed: the model's current guess after that layer. The
last layer's record is the model's output exactly (the lens of the final residual IS the forward's logits).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..models import LoadedModel
from .forward import ForwardTrace, decoder_parts

TOP_K = 10


def token_text(lm: LoadedModel, token_id: int) -> str:
    tok = lm.tokenizer
    return tok.decode([int(token_id)]) if tok is not None else f"<{int(token_id)}>"


def lens_logits(lm: LoadedModel, hidden: np.ndarray) -> torch.Tensor:
    """[k, d] residual vectors -> [k, vocab] float32 logits through the final norm and the unembedding."""
    _, norm, head = decoder_parts(lm)
    p = next(head.parameters())
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(hidden), dtype=p.dtype, device=p.device)
        return head(norm(x)).float().cpu()


def logit_lens(lm: LoadedModel, ft: ForwardTrace, next_id: Optional[int] = None, top_k: int = TOP_K) -> list[dict]:
    """One record per decoder layer l (after layer l): {layer, top: [{token, id, prob}] best first,
    entropy (nats), and next_token_rank (1 = top) / next_token_prob when next_id is given}."""
    logits = lens_logits(lm, ft.hidden)                      # [L, vocab]
    logp = torch.log_softmax(logits, -1)
    probs = logp.exp()
    k = min(top_k, probs.shape[-1])
    top_p, top_i = probs.topk(k, -1)
    entropy = -(probs * logp).sum(-1)
    records = []
    for l in range(logits.shape[0]):
        rec = {"layer": l, "top": [{"token": token_text(lm, i), "id": int(i), "prob": float(p)}
                                   for p, i in zip(top_p[l].tolist(), top_i[l].tolist())],
               "entropy": float(entropy[l])}
        if next_id is not None:
            rec["next_token_rank"] = int((logits[l] > logits[l, next_id]).sum()) + 1
            rec["next_token_prob"] = float(probs[l, next_id])
        records.append(rec)
    return records
